"""Build tests/data/db_3a618c4.sql: a realistic database made by commit 3a618c4's own code.

Real installations run the schema of commit 3a618c4 (the last release before migrations),
so the upgrade test loads a database that this commit's code created and used, not one we
imagine. How it was made (once, by hand; the test never needs git):

    mkdir /tmp/old12 && git archive 3a618c4 | tar -x -C /tmp/old12
    cd /tmp/old12 && PYTHONPATH=/tmp/old12 /work/w12/.venv/bin/python \
        /work/w12/tests/data/make_db_3a618c4.py /work/w12/tests/data/db_3a618c4.sql

It drives that checkout's CLI (first-run, create-user, import-leads, campaign create /
variant / enroll / start, send-due with the outbox backend), imports suppressions, and
then leaves the states only crashes and SMTP trouble make: a `sending` row whose worker
died (turned `unknown` by 3a618c4's own `recover`), a `retry` row waiting for its next
attempt, and a paused campaign. The dump is sqlite3's iterdump (the `.dump` format).
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
from pathlib import Path

from app import create_app  # 3a618c4's app.py: run with that checkout first on sys.path

LEADS = "email,first_name,last_name,company,tags\n" + "".join(
    f"lead{i}@example.com,Imię{i},Nazwisko{i},Firma {i % 7},{'vip' if i % 3 == 0 else 'std'}\n"
    for i in range(1, 41))


def main(out: Path) -> None:
    """Make the database in a temporary folder and write its dump to `out`."""
    tmp = Path(tempfile.mkdtemp())
    db_path = tmp / "sendonce.db"
    app = create_app({"TESTING": True, "SECRET_KEY": "fixture", "SQLALCHEMY_DATABASE_URI": f"sqlite:///{db_path}",
                      "MAIL_BACKEND": "outbox", "OUTBOX_DIR": str(tmp / "outbox"), "SCHEDULER_ENABLED": False,
                      "MAIL_FROM": "sales@example.com", "BASE_URL": "http://sendonce.test"})
    cli = app.test_cli_runner()

    def run(*args: str) -> str:
        result = cli.invoke(args=list(args))
        assert result.exit_code == 0, (args, result.output)
        return result.output

    run("first-run")  # demo campaign 1 (active, 4 leads) and admin@example.com
    run("create-user", "ops@example.com", "--password", "fixture-password")
    (tmp / "leads.csv").write_text(LEADS, encoding="utf-8")
    run("import-leads", str(tmp / "leads.csv"))
    cid = run("campaign", "create", "--name", "Oferta Q4", "--interval", "0", "--batch-size", "25").strip()
    run("campaign", "variant", cid, "A", "--subject", "Cześć {{ first_name }}",
        "--body", "Treść A {{ company }}")
    run("campaign", "variant", cid, "B", "--subject", "Witaj {{ first_name }}", "--body", "Treść B")
    run("campaign", "enroll", cid, "--all")
    run("campaign", "start", cid)
    run("send-due", "--campaign", cid)  # 25 sent through the outbox
    other = run("campaign", "create", "--name", "VIP", "--interval", "0", "--batch-size", "5").strip()
    run("campaign", "variant", other, "A", "--subject", "VIP {{ first_name }}", "--body", "VIP")
    run("campaign", "enroll", other, "--tag", "vip")
    run("campaign", "start", other)
    run("send-due", "--campaign", other)
    run("campaign", "pause", other)
    _crash_and_retry(db_path, int(cid))
    (tmp / "supp.csv").write_text("email\nlead40@example.com\nnobody@example.org\n", encoding="utf-8")
    with app.app_context():
        import suppressions
        from timeutil import utcnow

        from models import db

        suppressions.import_csv(db.engine, (tmp / "supp.csv").read_bytes(), utcnow())
    run("recover")  # the dead worker's `sending` row becomes `unknown`
    _dump(db_path, out)


def _crash_and_retry(db_path: Path, campaign_id: int) -> None:
    """Two sends the outbox never fails on its own: a claim whose worker died mid-send (claimed
    an hour ago by a pid that is gone) and a transient failure waiting for its retry."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    ids = [r[0] for r in conn.execute(
        "SELECT id FROM send_log WHERE campaign_id = ? ORDER BY id DESC LIMIT 2", (campaign_id,))]
    conn.execute("UPDATE send_log SET status = 'sending', sent_at = NULL, worker = 'gone-host:99999', "
                 "claimed_at = datetime('now', '-1 hour') WHERE id = ?", (ids[0],))
    conn.execute("UPDATE send_log SET status = 'retry', sent_at = NULL, attempts = 2, "
                 "smtp_reply = '451 4.7.1 try again later', next_attempt_at = datetime('now', '+1 hour') "
                 "WHERE id = ?", (ids[1],))
    conn.execute("UPDATE campaign_lead SET state = 'sending' WHERE (campaign_id, lead_id) IN "
                 "(SELECT campaign_id, lead_id FROM send_log WHERE id IN (?, ?))", ids)
    conn.close()


def _dump(db_path: Path, out: Path) -> None:
    conn = sqlite3.connect(db_path)
    out.write_text("\n".join(conn.iterdump()) + "\n", encoding="utf-8")
    conn.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
