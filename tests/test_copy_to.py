"""`flask copy-to`: a SQLite deployment moved into an empty PostgreSQL database, verified,
and the app carrying on there (ids from the sequences, every lead still mailed once)."""

from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy import create_engine, func, select, text

from app import create_app
from conftest import ON_POSTGRES, app_config, pg_cluster
from delivery import lease
from helpers import make_campaign
from models import CampaignLead, SendLog, db, timeline_hour
from storage import schema
from storage.timeutil import utcnow

pytestmark = [pytest.mark.postgres,
              pytest.mark.skipif(not ON_POSTGRES, reason="needs the PostgreSQL run's cluster")]


@pytest.fixture
def sqlite_app(tmp_path, smtp):
    """The deployment to move: a SQLite file with campaigns, sends and a legacy log."""
    config = app_config(tmp_path / "unused.db", smtp.port,
                        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'sendonce.db'}")
    app = create_app(config)
    with app.app_context():
        schema.install(db.engine, db.metadata)
    yield app
    with app.app_context():
        db.engine.dispose()


def run(app, *args, code: int = 0) -> str:
    result = app.test_cli_runner().invoke(args=list(args))
    assert result.exit_code == code, result.output
    return result.output


def counts(engine) -> dict[str, int]:
    """Rows per table; the derived tables' rows of a zero count (kept on SQLite) left out."""
    nonzero = {schema.COUNTS: text("n <> 0"), schema.SUMMARY: text("sends <> 0")}
    with engine.connect() as conn:
        return {t.name: conn.execute(select(func.count()).select_from(t)
                                     .where(nonzero.get(t.name, text("1 = 1")))).scalar_one()
                for t in db.metadata.sorted_tables}


def test_copy_to_moves_everything_verified_and_sending_continues_there(sqlite_app, smtp, tmp_path):
    with sqlite_app.app_context():
        source = db.engine
        first = make_campaign(source, 6, batch_size=2)
        second = make_campaign(source, 3, start=False)
        with source.begin() as conn:  # a JSON SQL NULL and a JSON null must both survive
            conn.execute(text("UPDATE lead SET fields = '{\"miasto\": \"Łódź\", \"x\": null}' WHERE id = 1"))
    run(sqlite_app, "send-due")
    with sqlite_app.app_context():
        before = counts(db.engine)
    url = pg_cluster().new_database()
    out = run(sqlite_app, "copy-to", url)
    assert "verified: every table's row count equals the source's, derived counts equal recounts" in out
    assert "SQLALCHEMY_DATABASE_URI" in out and "MAILBOX_KEY_FILE" in out and "SECRET_KEY" in out
    target = create_engine(url)
    assert counts(target) == before
    with target.connect() as conn:
        assert conn.execute(text("SELECT fields::text FROM lead WHERE id = 1")).scalar() == \
            '{"miasto": "Łódź", "x": null}'
        assert conn.execute(select(func.sum(timeline_hour.c.sends))).scalar() == 2
        states = conn.execute(select(CampaignLead.state, func.count())
                              .where(CampaignLead.campaign_id == first).group_by(CampaignLead.state)).all()
        assert dict(states) == {"sent": 2, "pending": 4}
    target.dispose()
    # The app on PostgreSQL takes over: new ids from the sequences, every lead once.
    moved = create_app({**sqlite_app.config, "SQLALCHEMY_DATABASE_URI": url})
    run(moved, "campaign", "start", str(second))
    for _ in range(4):
        run(moved, "send-due")
    with moved.app_context(), db.engine.connect() as conn:
        ids = conn.execute(select(SendLog.id)).scalars().all()
    assert sorted(ids) == list(range(1, 10))  # 2 copied, then the sequence went on from 3
    # lead0000-0002 are in both campaigns: one mail from each.
    assert smtp.recorder.received == Counter({f"lead{i:04d}@example.com": 2 if i < 3 else 1
                                              for i in range(6)})
    assert moved.test_client().get("/healthz").get_json()["database"] == "ok"
    with moved.app_context():
        db.engine.dispose()


def test_copy_to_refuses_a_held_lease_a_non_empty_target_and_other_databases(sqlite_app, smtp):
    url = pg_cluster().new_database()
    with sqlite_app.app_context():
        held = lease.acquire(db.engine, "elsewhere:1:abcd", utcnow(), 60)
    assert held is not None
    out = run(sqlite_app, "copy-to", url, code=1)
    assert "the scheduler lease is held by elsewhere:1:abcd" in out
    with sqlite_app.app_context():
        lease.release(db.engine, held, utcnow())
    assert "sqlite" in run(sqlite_app, "copy-to", "sqlite:////tmp/x.db", code=1)
    run(sqlite_app, "copy-to", url)
    out = run(sqlite_app, "copy-to", url, code=1)
    assert "the target database is not empty" in out


def test_a_failed_copy_leaves_the_target_empty(sqlite_app, smtp):
    with sqlite_app.app_context():
        make_campaign(db.engine, 2)
        with db.engine.begin() as conn:  # SQLite keeps what PostgreSQL's VARCHAR(200) refuses
            conn.execute(text("UPDATE lead SET first_name = :long WHERE id = 2"), {"long": "x" * 300})
    url = pg_cluster().new_database()
    out = run(sqlite_app, "copy-to", url, code=1)
    assert "the copy failed (value too long" in out and "nothing was kept" in out
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")).scalar() == 0
    engine.dispose()
