"""Mailbox plumbing (#16): secrets at rest, per-mailbox transports (password and XOAUTH2 AUTH)
and their pool, "check connection", the `flask mailbox` commands, backups carrying the key
file, the demo's mailboxes. Against real aiosmtpd servers on 127.0.0.1 that log clients in."""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import threading
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import func, select, update

from app import create_app
from conftest import app_config
from core import mailboxes
from delivery import messages, probe
from delivery.transport import MailboxTransports, Unusable, mailbox_transport
from helpers import make_campaign
from models import Campaign, CampaignLead, Mailbox, SendLog, db
from storage import schema
from storage.database import immediate
from storage.secrets import Vault
from tests.smtp_sink import AuthSmtpSink, free_port, self_signed, server_tls

PASSWORD = "pw-Kx8-not-in-any-file-7Q"
IMAP_PASSWORD = "imap-Zr4-also-secret-9L"
TOKEN = "ya29.fake-oauth-token-for-tests-Qm3"
MAILBOX = Mailbox.__table__


@pytest.fixture
def sink():
    """A server that knows user `anna` by password and piotr@firma.pl by XOAUTH2 token."""
    with AuthSmtpSink({"anna": PASSWORD}, {"piotr@firma.pl": TOKEN}) as server:
        yield server


@pytest.fixture
def vault(config) -> Vault:
    return Vault(config["MAILBOX_KEY_FILE"])


def add(engine, vault, address: str, port: int, **values) -> int:
    values = {"backend": "smtp", "smtp_host": "127.0.0.1", "smtp_port": port, "smtp_security": "none",
              **values}
    return mailboxes.create(engine, vault, address=address, **values)


def anna(engine, vault, port, password=PASSWORD, address="anna@firma.pl") -> int:
    return add(engine, vault, address, port, name="Anna", smtp_username="anna",
               smtp_password=password)


def piotr(engine, vault, port, token=TOKEN, address="piotr@firma.pl") -> int:
    return add(engine, vault, address, port, name="Piotr", auth_kind="xoauth2",
               smtp_password=token)


def row_of(engine, mailbox_id: int):
    with engine.connect() as conn:
        return mailboxes.get(conn, mailbox_id)


def a_message(sender: str, to: str):
    return messages.build_message(
        from_address=sender, from_name="", to_address=to, to_name="", subject="Hi", body="Hello",
        msg_id=messages.test_message_id(sender), unsubscribe_url="https://x.test/u")


def send(transport, sender: str, to: str):
    return transport.send(a_message(sender, to), sender, to)


def database_bytes(config) -> bytes:
    path = Path(config["SQLALCHEMY_DATABASE_URI"].removeprefix("sqlite:///"))
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


def run(app, *args, code: int = 0, **kwargs) -> str:
    result = app.test_cli_runner().invoke(args=list(args), **kwargs)
    assert result.exit_code == code, result.output
    return result.output


# --- secrets at rest ---------------------------------------------------------------------


def test_secrets_are_sealed_at_rest_the_key_file_is_private_and_rotation_keeps_them_readable(
        app, engine, config, vault):
    mid = add(engine, vault, "anna@firma.pl", 25, smtp_username="anna", smtp_password=PASSWORD,
              imap_host="imap.firma.pl", imap_password=IMAP_PASSWORD)
    stored = database_bytes(config)  # the file, its WAL and shared memory: every byte on disk
    assert PASSWORD.encode() not in stored and IMAP_PASSWORD.encode() not in stored
    key_file = Path(config["MAILBOX_KEY_FILE"])
    assert key_file.stat().st_mode & 0o777 == 0o600
    before = row_of(engine, mid)

    out = run(app, "mailbox", "rotate-key")
    assert "re-sealed the secrets of 1 mailboxes" in out and "Back up" in out

    after = row_of(engine, mid)
    assert after.smtp_secret != before.smtp_secret and after.imap_secret != before.imap_secret
    assert key_file.stat().st_mode & 0o777 == 0o600 and len(key_file.read_text().split()) == 2
    # The new first key alone reads them: they were re-sealed with it.
    key_file.parent.joinpath("newest.keys").write_text(key_file.read_text().split()[0] + "\n")
    newest_only = Vault(key_file.parent / "newest.keys")
    assert newest_only.open(after.smtp_secret) == PASSWORD
    assert Vault(key_file).open(after.imap_secret) == IMAP_PASSWORD
    assert mailboxes.unreadable_secrets(engine, Vault(key_file)) == []
    assert PASSWORD.encode() not in database_bytes(config)


# --- transports ------------------------------------------------------------------------


def test_a_mailbox_transport_logs_in_with_a_password_or_with_an_xoauth2_token(app, engine, config, vault,
                                                                               sink):
    ids = {"anna@firma.pl": anna(engine, vault, sink.port),
           "piotr@firma.pl": piotr(engine, vault, sink.port)}
    pool = MailboxTransports(engine, app.config)
    try:
        for sender, mid in ids.items():
            for n in range(2):  # the second message reuses the logged-in connection
                result = send(pool.for_mailbox(mid), sender, f"lead{n}.{sender.split('@')[0]}@example.com")
                assert result.status == "sent", result.reply
    finally:
        pool.close()
    logins = [(mech, user, secret, ok) for mech, user, secret, ok in sink.recorder.logins]
    assert len(logins) == 2  # one login per mailbox connection
    (mech, user, secret, ok), xoauth = logins
    assert mech in ("PLAIN", "LOGIN") and (user, secret, ok) == ("anna", PASSWORD, True)
    assert xoauth == ("XOAUTH2", "piotr@firma.pl", TOKEN, True)  # the user defaults to the address
    assert sink.recorder.identities == [
        ("anna", "lead0.anna@example.com"), ("anna", "lead1.anna@example.com"),
        ("piotr@firma.pl", "lead0.piotr@example.com"), ("piotr@firma.pl", "lead1.piotr@example.com")]


@pytest.mark.parametrize("kind", ["password", "xoauth2"])
def test_a_wrong_password_or_token_is_a_configuration_error_and_nothing_is_sent(app, engine, config, vault,
                                                                                 sink, kind):
    mid = (anna(engine, vault, sink.port, "wrong") if kind == "password"
           else piotr(engine, vault, sink.port, "ya29.expired"))
    transport = mailbox_transport(row_of(engine, mid), "wrong" if kind == "password" else "ya29.expired",
                                  timeout=5, outbox_dir=config["OUTBOX_DIR"])
    try:
        result = send(transport, "me@firma.pl", "lead@example.com")
    finally:
        transport.close()
    assert (result.status, result.config_error) == ("retry", True)  # certainly not delivered
    assert result.reply.startswith("535")
    # (smtplib tries PLAIN, then LOGIN: every attempt refused)
    assert sink.recorder.received == {} and {ok for *_, ok in sink.recorder.logins} == {False}


def test_an_outbox_mailbox_writes_eml_files_to_the_outbox(app, engine, config, vault):
    mid = mailboxes.create(engine, vault, address="demo@firma.pl", backend="outbox")
    transport = MailboxTransports(engine, app.config).for_mailbox(mid)
    assert send(transport, "demo@firma.pl", "lead@example.com").status == "sent"
    (eml,) = Path(config["OUTBOX_DIR"]).glob("*.eml")
    assert b"lead@example.com" in eml.read_bytes()


def test_the_pool_keeps_a_transport_until_its_mailbox_changes_then_closes_the_old_one(app, engine, config,
                                                                                        vault, sink):
    mid = anna(engine, vault, sink.port, "wrong")
    pool = MailboxTransports(engine, app.config)
    first = pool.for_mailbox(mid)
    assert pool.for_mailbox(mid) is first
    assert send(first, "anna@firma.pl", "a@example.com").config_error  # the old password
    mailboxes.update_mailbox(engine, vault, mid, smtp_password=PASSWORD)  # a person fixes it
    second = pool.for_mailbox(mid)
    assert second is not first and first._conn is None
    assert send(second, "anna@firma.pl", "a@example.com").status == "sent"
    pool.close()
    assert second._conn is None  # QUIT said
    assert sink.recorder.received["a@example.com"] == 1


def test_a_secret_that_cannot_be_opened_answers_every_send_with_a_configuration_error(app, engine, config,
                                                                                      vault, sink, smtp):
    mid = anna(engine, vault, sink.port)
    Path(config["MAILBOX_KEY_FILE"]).write_bytes(Fernet.generate_key() + b"\n")  # another machine's key
    pool = MailboxTransports(engine, app.config)
    transport = pool.for_mailbox(mid)
    assert isinstance(transport, Unusable)
    result = send(transport, "anna@firma.pl", "a@example.com")
    assert (result.status, result.config_error) == ("retry", True) and "cannot be read" in result.reply
    assert pool.for_mailbox(9999).send(a_message("x@y.test", "a@example.com"), "x@y.test",
                                       "a@example.com").config_error  # a mailbox gone
    # A campaign without mailboxes: the app's configured transport (here the plain test sink).
    assert send(pool.for_mailbox(None), "team@sendonce.test", "b@example.com").status == "sent"
    pool.close()
    assert sink.recorder.received == {} and smtp.recorder.received["b@example.com"] == 1


def test_one_thread_per_mailbox_shares_the_pool_each_sending_as_its_own_user(app, engine, config, vault):
    users = {f"user{n}": f"pw-{n}-secret" for n in range(4)}
    with AuthSmtpSink(users) as server:
        ids = {user: add(engine, vault, f"{user}@firma.pl", server.port, smtp_username=user,
                         smtp_password=secret) for user, secret in users.items()}
        pool = MailboxTransports(engine, app.config)
        errors = []

        def lane(user: str) -> None:
            try:
                for n in range(5):
                    transport = pool.for_mailbox(ids[user])
                    result = send(transport, f"{user}@firma.pl", f"{user}.{n}@example.com")
                    assert result.status == "sent", result.reply
            except Exception as exc:  # noqa: BLE001 - reported below, with its thread
                errors.append((user, exc))

        threads = [threading.Thread(target=lane, args=(user,)) for user in users]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        pool.close()
        assert errors == []
        assert sorted(server.recorder.identities) == sorted(
            (user, f"{user}.{n}@example.com") for user in users for n in range(5))
        assert sorted(user for _, user, _, ok in server.recorder.logins if ok) == sorted(users)  # one each


# --- check connection ----------------------------------------------------------------------


def test_the_connection_check_shows_the_servers_answer_and_never_the_secret(app, engine, vault, sink):
    good = probe.check(row_of(engine, anna(engine, vault, sink.port)), PASSWORD, 5)
    assert [(c.service, c.ok) for c in good] == [("SMTP", True)]
    assert f"SMTP 127.0.0.1:{sink.port}: 220 " in good[0].answer  # the server's own greeting
    assert "AUTH password as anna: 235 2.7.0 Authentication successful" in good[0].answer
    bad_id = anna(engine, vault, sink.port, "wrong-pw", "a2@firma.pl")
    bad = probe.check(row_of(engine, bad_id), "wrong-pw", 5)
    assert not bad[0].ok and "login refused: 535 5.7.8 Authentication credentials invalid" in bad[0].answer
    oauth = probe.check(row_of(engine, piotr(engine, vault, sink.port)), TOKEN, 5)
    assert oauth[0].ok and "AUTH xoauth2 as piotr@firma.pl: 235" in oauth[0].answer
    expired_id = piotr(engine, vault, sink.port, "ya29.old", "p2@firma.pl")
    expired = probe.check(row_of(engine, expired_id), "ya29.old", 5)
    assert not expired[0].ok and "535 5.7.8 Username and Password not accepted (XOAUTH2)" in expired[0].answer
    no_tls = probe.check(row_of(engine, add(engine, vault, "t@firma.pl", sink.port, smtp_security="starttls",
                                            smtp_username="anna", smtp_password=PASSWORD)), PASSWORD, 5)
    assert not no_tls[0].ok and "STARTTLS extension not supported by server" in no_tls[0].answer
    for found in (*good, *bad, *oauth, *expired, *no_tls):
        assert PASSWORD not in found.answer and TOKEN not in found.answer and "ya29.old" not in found.answer
        assert "wrong-pw" not in found.answer


@pytest.mark.parametrize("security", ["starttls", "ssl"])
def test_tls_needs_a_trusted_certificate_and_says_so_when_it_is_not(app, engine, config, vault, tmp_path,
                                                                    monkeypatch, security):
    cert, key = self_signed(tmp_path)
    with AuthSmtpSink({"anna": PASSWORD}, tls=server_tls(cert, key), implicit=security == "ssl") as server:
        mid = add(engine, vault, "anna@firma.pl", server.port, smtp_security=security, smtp_username="anna",
                  smtp_password=PASSWORD)
        (untrusted,) = probe.check(row_of(engine, mid), PASSWORD, 5)
        assert not untrusted.ok and "TLS failed (CERTIFICATE_VERIFY_FAILED)" in untrusted.answer
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # OpenSSL's default trust: this certificate
        (trusted,) = probe.check(row_of(engine, mid), PASSWORD, 5)
        assert trusted.ok and "235 2.7.0 Authentication successful" in trusted.answer, trusted.answer
        assert ("STARTTLS 220" in trusted.answer) == (security == "starttls")
        pool = MailboxTransports(engine, app.config)
        assert send(pool.for_mailbox(mid), "anna@firma.pl", "lead@example.com").status == "sent"
        pool.close()
        assert server.recorder.identities == [("anna", "lead@example.com")]


def silent_server() -> tuple[socket.socket, int]:
    """A port that accepts connections and never says a word (a firewall's black hole)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    return server, server.getsockname()[1]


def test_refused_and_silent_servers_fail_the_check_with_a_readable_answer(app, engine, vault):
    closed = free_port()
    mid = add(engine, vault, "a@firma.pl", closed, smtp_username="a", smtp_password=PASSWORD,
              imap_host="127.0.0.1", imap_port=free_port(), imap_security="none")
    smtp, imap = probe.check(row_of(engine, mid), PASSWORD, 2)
    assert (smtp.service, smtp.ok, imap.service, imap.ok) == ("SMTP", False, "IMAP", False)
    assert smtp.answer == f"SMTP 127.0.0.1:{closed}: connection refused (nothing listens on that port)"
    assert imap.answer.startswith("IMAP 127.0.0.1:") and "connection refused" in imap.answer
    server, port = silent_server()
    try:
        silent = add(engine, vault, "b@firma.pl", port, imap_host="127.0.0.1", imap_port=port,
                     imap_security="ssl")
        smtp, imap = probe.check(row_of(engine, silent), "", 0.5)
    finally:
        server.close()
    assert smtp.answer == f"SMTP 127.0.0.1:{port}: no answer within 0.5 s (timeout)" and not smtp.ok
    assert imap.answer == f"IMAP 127.0.0.1:{port}: no answer within 0.5 s (timeout)" and not imap.ok


# --- the CLI -------------------------------------------------------------------------------


def test_cli_add_takes_the_secret_from_a_file_the_environment_or_a_hidden_prompt_never_an_option(
        app, engine, config, sink, tmp_path):
    secret_file = tmp_path / "anna.password"
    secret_file.write_text(PASSWORD + "\n")
    out = run(app, "mailbox", "add", "Anna@Firma.pl", "--name", "Anna Kowalska", "--smtp-host", "127.0.0.1",
              "--smtp-port", str(sink.port), "--smtp-security", "none", "--smtp-username", "anna",
              "--smtp-password-file", str(secret_file), "--daily-cap", "40", "--min-gap", "60",
              "--ramp-start", "10", "--ramp-step", "5", "--signature", "Anna\nFirma")
    assert "mailbox 1 added: anna@firma.pl" in out
    out = run(app, "mailbox", "add", "piotr@firma.pl", "--smtp-host", "127.0.0.1", "--smtp-port",
              str(sink.port), "--smtp-security", "none", "--auth", "xoauth2",
              env={"SENDONCE_SMTP_PASSWORD": TOKEN})
    assert "mailbox 2 added" in out
    out = run(app, "mailbox", "add", "ola@firma.pl", "--smtp-host", "127.0.0.1", "--smtp-port",
              str(sink.port), "--smtp-security", "none", "--smtp-username", "ola", "--imap-host", "127.0.0.1",
              input=f"{PASSWORD}-ola\n{IMAP_PASSWORD}\n")
    assert "SMTP password:" in out and "IMAP password or token" in out
    assert PASSWORD not in out and IMAP_PASSWORD not in out  # hidden input is not echoed
    vault = Vault(config["MAILBOX_KEY_FILE"])
    secrets = [(vault.open(row.smtp_secret), vault.open(row.imap_secret)) for row in
               (row_of(engine, n) for n in (1, 2, 3))]
    assert secrets == [(PASSWORD, ""), (TOKEN, ""), (f"{PASSWORD}-ola", IMAP_PASSWORD)]
    first = row_of(engine, 1)
    assert (first.name, first.daily_cap, first.min_gap_seconds, first.ramp_start, first.ramp_step,
            first.signature) == ("Anna Kowalska", 40, 60, 10, 5, "Anna\nFirma")
    out = run(app, "mailbox", "add", "far@firma.pl", "--smtp-host", "smtp.firma.pl", "--smtp-security",
              "none", "--smtp-username", "far", env={"SENDONCE_SMTP_PASSWORD": PASSWORD})
    assert "WARNING: --smtp-security none: the password or token crosses the network in clear" in out
    assert "WARNING" not in run(app, "mailbox", "add", "near@firma.pl", "--smtp-host", "smtp.firma.pl",
                                "--smtp-username", "near", env={"SENDONCE_SMTP_PASSWORD": PASSWORD})
    assert "No such option '--smtp-password'" in run(
        app, "mailbox", "add", "x@firma.pl", "--smtp-password", PASSWORD, code=2)
    assert PASSWORD.encode() not in database_bytes(config)


def test_cli_errors_name_the_option_and_add_nothing(app, engine, tmp_path):
    out = run(app, "mailbox", "add", "not-an-address", "--backend", "outbox", code=1)
    assert "Error: ADDRESS:" in out
    out = run(app, "mailbox", "add", "a@firma.pl", "--backend", "outbox", "--smtp-port", "70000", code=1)
    assert "Error: --smtp-port: must be from 0 to 65535" in out
    out = run(app, "mailbox", "add", "a@firma.pl", "--backend", "outbox", "--timezone", "Mars/Base", code=1)
    assert "Error: --timezone: unknown time zone" in out
    out = run(app, "mailbox", "add", "a@firma.pl", "--smtp-username", "a", input="\n", code=1)
    assert "Error: --smtp-password-file: a login needs a password or token" in out
    for command in (["pause", "7"], ["resume", "7"], ["check", "7"], ["test", "7", "--to", "a@example.com"]):
        assert "Error: ID: no mailbox 7" in run(app, "mailbox", *command, code=1)
    with engine.connect() as conn:
        assert mailboxes.overview(conn) == []
    assert "no mailboxes" in run(app, "mailbox", "list")


def test_cli_list_pause_resume_test_check_and_rotate_key(app, engine, config, sink):
    vault = Vault(config["MAILBOX_KEY_FILE"])
    anna_id = add(engine, vault, "anna@firma.pl", sink.port, name="Anna", smtp_username="anna",
                  smtp_password=PASSWORD, daily_cap=40, ramp_start=10, ramp_step=5)
    wrong_id = add(engine, vault, "zly@firma.pl", sink.port, smtp_username="anna", smtp_password="nope-wrong",
                   daily_cap=30)
    with immediate(engine) as conn:
        conn.execute(update(MAILBOX).where(MAILBOX.c.id == wrong_id).values(last_error="535 bad credentials"))
    out = run(app, "mailbox", "list")
    assert "anna@firma.pl" in out and "0/10" in out and "0/30" in out and "535 bad credentials" in out
    assert PASSWORD not in out and "nope-wrong" not in out
    assert "gAAAA" not in out  # not even a sealed one (Fernet tokens start so)

    run(app, "mailbox", "pause", str(anna_id), "--reason", "urlop")
    assert "paused (urlop)" in run(app, "mailbox", "list")
    run(app, "mailbox", "resume", str(anna_id))
    assert row_of(engine, anna_id).status == "active" and "paused" not in run(app, "mailbox", "list")

    out = run(app, "mailbox", "test", str(anna_id), "--to", "szef@example.com")
    assert "test sent to szef@example.com: 250" in out
    (msg,) = sink.recorder.messages
    assert msg["From"] == "Anna <anna@firma.pl>" and msg["Subject"].startswith("[TEST]")
    assert sink.recorder.identities == [("anna", "szef@example.com")]
    with engine.connect() as conn:  # not campaign mail: nothing logged, nothing counted
        assert conn.execute(select(func.count()).select_from(SendLog)).scalar() == 0
    out = run(app, "mailbox", "test", str(wrong_id), "--to", "szef@example.com", code=1)
    assert "was not sent: 535" in out

    out = run(app, "mailbox", "check", str(anna_id))
    assert "SMTP ok: SMTP 127.0.0.1" in out and "235 2.7.0 Authentication successful" in out
    out = run(app, "mailbox", "check", str(wrong_id), code=1)
    assert "SMTP FAILED:" in out and "535" in out and "nope-wrong" not in out

    before = row_of(engine, anna_id).smtp_secret
    assert "re-sealed the secrets of 2 mailboxes" in run(app, "mailbox", "rotate-key")
    assert row_of(engine, anna_id).smtp_secret != before
    assert "SMTP ok" in run(app, "mailbox", "check", str(anna_id))  # still readable after rotation


def test_cli_set_secret_replaces_a_token(app, engine, config, sink):
    vault = Vault(config["MAILBOX_KEY_FILE"])
    mid = piotr(engine, vault, sink.port, "ya29.expired")
    run(app, "mailbox", "check", str(mid), code=1)
    run(app, "mailbox", "set-secret", str(mid), env={"SENDONCE_SMTP_PASSWORD": TOKEN})
    assert "SMTP ok" in run(app, "mailbox", "check", str(mid))


def test_cli_campaign_create_links_mailboxes_and_move_leads_moves_the_waiting_ones(app, engine, config):
    vault = Vault(config["MAILBOX_KEY_FILE"])
    one = mailboxes.create(engine, vault, address="anna@firma.pl", backend="outbox")
    two = mailboxes.create(engine, vault, address="piotr@firma.pl", backend="outbox")
    out = run(app, "campaign", "create", "--name", "Q1", "--mailbox", "anna@firma.pl", "--mailbox", str(two))
    cid = int(out.strip())
    with engine.connect() as conn:
        assert mailboxes.of_campaign(conn, cid) == [one, two]
        sender = conn.execute(select(Campaign.from_address).where(Campaign.id == cid)).scalar()
        assert sender == "anna@firma.pl"  # --from defaults to the first mailbox
    out = run(app, "campaign", "create", "--name", "Q2", "--mailbox", "nobody@firma.pl", code=1)
    assert "Error: --mailbox: no mailbox with the address or id 'nobody@firma.pl'" in out
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Campaign)).scalar() == 1  # nothing made

    moved = make_campaign(engine, 4)
    with immediate(engine) as conn:  # pinned to mailbox one at their first send (as the claim does)
        conn.execute(update(CampaignLead.__table__).where(CampaignLead.campaign_id == moved)
                     .values(mailbox_id=one))
    out = run(app, "mailbox", "move-leads", str(moved), str(one), "piotr@firma.pl")
    assert f"campaign {moved}: moved 4 leads from mailbox {one} to mailbox {two}" in out
    with engine.connect() as conn:
        pinned = conn.execute(select(CampaignLead.mailbox_id)
                              .where(CampaignLead.campaign_id == moved)).scalars()
        assert set(pinned) == {two}
        assert two in mailboxes.of_campaign(conn, moved)
    assert "no campaign 99" in run(app, "mailbox", "move-leads", "99", str(one), str(two), code=1)
    assert "same mailbox" in run(app, "mailbox", "move-leads", str(moved), str(one), str(one), code=2)


# --- backups and the demo -------------------------------------------------------------------


@pytest.fixture
def backup_config(config, tmp_path):
    return {**config, "BACKUP_DIR": str(tmp_path / "backups"), "SECRET_KEY": None,
            "SECRET_KEY_FILE": str(tmp_path / "secret_key")}


def test_backup_copies_the_mailbox_key_file_and_restore_puts_it_back(backup_config, tmp_path, smtp):
    app = create_app(backup_config)
    with app.app_context():
        schema.install(db.engine, db.metadata)
        engine = db.engine
    key_file = Path(backup_config["MAILBOX_KEY_FILE"])
    mid = mailboxes.create(engine, Vault(key_file), address="anna@firma.pl", smtp_username="anna",
                           smtp_password=PASSWORD)
    for _ in range(3):
        run(app, "backup", "--keep", "2")
    folder = Path(backup_config["BACKUP_DIR"])
    assert len(list(folder.iterdir())) == 2 * 4  # the oldest went with its .mailbox_keys too
    newest = sorted(folder.glob("sendonce-*.db"))[-1]
    copy = newest.with_name(newest.name + ".mailbox_keys")
    assert copy.read_bytes() == key_file.read_bytes() and copy.stat().st_mode & 0o777 == 0o600
    manifest = json.loads(newest.with_name(newest.name + ".json").read_text())
    assert copy.name in manifest["key_files"]

    key_file.unlink()  # a new machine: the database comes back, the key file with it
    out = run(app, "restore", str(newest), "--yes")
    assert "mailbox keys: 1 added" in out and "WARNING" not in out
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert Vault(key_file).open(row_of(engine, mid).smtp_secret) == PASSWORD

    run(app, "mailbox", "rotate-key")  # rotated since the backup: both keys stay, both read
    out = run(app, "restore", str(newest), "--yes")
    assert "holds every key" in out
    assert Vault(key_file).open(row_of(engine, mid).smtp_secret) == PASSWORD
    with app.app_context():
        db.engine.dispose()


def test_a_backup_without_the_mailbox_key_file_warns_and_a_restore_says_what_is_unreadable(
        backup_config, tmp_path, smtp):
    app = create_app(backup_config)
    with app.app_context():
        schema.install(db.engine, db.metadata)
        engine = db.engine
    key_file = Path(backup_config["MAILBOX_KEY_FILE"])
    mid = mailboxes.create(engine, Vault(key_file), address="anna@firma.pl", smtp_password=PASSWORD)
    key_file.unlink()
    out = run(app, "backup", str(tmp_path / "b.db"))
    assert "WARNING: MAILBOX_KEY_FILE" in out and "1 mailboxes" in out
    assert not (tmp_path / "b.db.mailbox_keys").exists()
    out = run(app, "restore", str(tmp_path / "b.db"), "--yes")
    assert f"WARNING: the secrets of mailboxes {mid} cannot be decrypted" in out
    with app.app_context():
        db.engine.dispose()


def test_a_backup_before_upgrading_a_database_older_than_mailboxes_still_works(tmp_path, smtp):
    path = tmp_path / "sendonce.db"  # the schema of 3a618c4, upgraded to 0006 below
    conn = sqlite3.connect(path)
    conn.executescript((Path(__file__).with_name("data") / "db_3a618c4.sql").read_text(encoding="utf-8"))
    conn.close()
    old = create_app(app_config(path, smtp.port, SECRET_KEY=None, SECRET_KEY_FILE=str(tmp_path / "sk")))
    run(old, "db", "stamp", "0001")
    run(old, "db", "upgrade", "0006")  # the last revision before mailboxes
    assert "verified" in run(old, "backup", str(tmp_path / "before-upgrade.db"))
    assert not Path(old.config["MAILBOX_KEY_FILE"]).exists()
    with old.app_context():
        db.engine.dispose()


def test_the_demo_sends_through_two_outbox_mailboxes(app, engine):
    out = run(app, "demo")
    assert "sending through mailboxes 1, 2 (outbox)" in out
    run(app, "demo")  # again: the mailboxes are reused, not refused
    with engine.connect() as conn:
        found = {m.address: m for m in mailboxes.overview(conn)}
        rows = conn.execute(select(MAILBOX)).all()
        linked = [mailboxes.of_campaign(conn, cid) for cid in conn.execute(select(Campaign.id)).scalars()]
    assert sorted(found) == ["anna@firma-demo.pl", "piotr@firma-demo.pl"]
    assert {(r.name, r.backend, r.daily_cap, r.min_gap_seconds, r.ramp_start, r.ramp_step) for r in rows} == {
        ("Anna Kowalska", "outbox", 40, 60, 10, 5), ("Piotr Nowak", "outbox", 40, 60, 10, 5)}
    assert linked == [[1, 2], [1, 2]] and found["anna@firma-demo.pl"].cap_today == 10


def test_the_readme_cli_table_names_every_command(app):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    table = readme.split("## The CLI", 1)[1].split("\n## ", 1)[0]
    first_cells = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `")]
    missing = []
    for name, command in app.cli.commands.items():
        if name in ("run", "shell", "routes", "db"):  # Flask's and Flask-Migrate's own
            continue
        for sub in getattr(command, "commands", None) or [None]:
            words = [name] if sub is None else [name, sub]
            if not any(re.search(rf"`{name}\b" + (rf"[^`]*\b{re.escape(sub)}\b" if sub else r"[ `]"), cell)
                       for cell in first_cells):
                missing.append(" ".join(words))
    assert missing == []
