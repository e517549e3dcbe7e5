"""Messages: no header injection, stable Message-ID, one-click unsubscribe, strict templates."""

from __future__ import annotations

import pytest
from sqlalchemy import delete, select, update

from app import create_app
from conftest import app_config
from core import campaigns, importer, leads
from delivery.tokens import make_token, read_token, unsubscribe_url
from delivery.transport import Result, make_transport
from helpers import make_campaign
from models import AppMeta, CampaignLead, Lead, SendLog, SendStatus, Suppression, Trigger, db
from sender import Outcome, Settings, claim_next, send_batch, store
from storage import schema
from storage.database import immediate
from storage.timeutil import utcnow


def send_all(app, engine, settings, cid, limit=10):
    transport = make_transport(app.config)
    try:
        return send_batch(engine, settings, transport, cid, Trigger.BUTTON, limit=limit)
    finally:
        transport.close()


def test_crlf_in_merge_fields_never_makes_a_header(app, engine, settings, smtp):
    cid = make_campaign(engine, 1, start=False, variants="A", subject="Hi {{ first_name }}",
                        body="Body {{ company }}")
    with immediate(engine) as conn:
        conn.execute(update(Lead.__table__).values(
            first_name="Eve\r\nBcc: victim@example.org", last_name="X\nX-Evil: 1",
            company="ACME\r\n\r\n<b>body</b>"))
    campaigns.start(engine, cid)
    send_all(app, engine, settings, cid)
    (msg,) = smtp.recorder.messages
    assert msg["Bcc"] is None and msg["X-Evil"] is None
    assert msg["Subject"] == "Hi Eve Bcc: victim@example.org"
    assert "ACME" in msg.get_payload(decode=True).decode()


def test_polish_characters_are_encoded_headers(app, engine, settings, smtp):
    cid = make_campaign(engine, 1, start=False, variants="A", from_name="Zażółć Gęślą",
                        subject="Cześć {{ first_name }}, pytanie o Łódź", body="Treść: źdźbło")
    with immediate(engine) as conn:
        conn.execute(update(Lead.__table__).values(first_name="Łucja"))
    campaigns.start(engine, cid)
    send_all(app, engine, settings, cid)
    (msg,) = smtp.recorder.messages
    raw_subject = msg.get("Subject")
    from email.header import decode_header, make_header

    assert str(make_header(decode_header(raw_subject))) == "Cześć Łucja, pytanie o Łódź"
    assert "Zażółć Gęślą" in str(make_header(decode_header(msg["From"])))
    assert msg.get_payload(decode=True).decode("utf-8").startswith("Treść: źdźbło")


def test_message_id_is_per_row_and_unsubscribe_headers_follow_rfc8058(app, engine, settings, smtp):
    cid = make_campaign(engine, 2)
    send_all(app, engine, settings, cid)
    with engine.connect() as conn:
        ids = dict(conn.execute(select(SendLog.lead_id, SendLog.message_id)).all())
    first, second = smtp.recorder.messages
    assert first["Message-ID"] == ids[1] and first["Message-ID"].startswith(f"<sendonce.{cid}.1.")
    assert second["Message-ID"] == ids[2] != ids[1]
    assert first["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = unsubscribe_url("http://sendonce.test", app.config["SECRET_KEY"], "lead0000@example.com", cid)
    assert first["List-Unsubscribe"] == f"<{url}>"
    assert url in first.get_payload(decode=True).decode()


def test_unknown_merge_field_is_caught_at_start_before_any_email(app, engine, settings, smtp):
    cid = make_campaign(engine, 3, start=False, variants="A", body="Your {{ frist_name }}")
    with pytest.raises(campaigns.CampaignError, match="frist_name"):
        campaigns.start(engine, cid)
    assert smtp.recorder.messages == []


def test_custom_field_missing_on_one_lead_is_reported_with_its_address(engine):
    cid = make_campaign(engine, 0, start=False, variants="A", body="From {{ city }}")
    with_city = importer.import_leads(engine, b"email,city\na@x.pl,Krak\xc3\xb3w\nb@x.pl,\n")
    without = importer.import_leads(engine, b"email\nc@x.pl\n")  # another file, no such column
    leads.enroll(engine, cid, with_city.lead_ids + without.lead_ids)
    problems = campaigns.validate(engine, cid)
    assert [p.email for p in problems] == ["c@x.pl"]


def test_template_syntax_error_is_refused_when_the_variant_is_added(engine):
    cid = make_campaign(engine, 0, start=False, variants="")
    with pytest.raises(campaigns.CampaignError, match="body"):
        campaigns.add_variant(engine, cid, "A", "Hi", "Hello {{ first_name ")


def test_sandbox_blocks_python_internals(engine):
    cid = make_campaign(engine, 0, start=False, variants="")
    with pytest.raises(campaigns.CampaignError, match="unsafe"):
        campaigns.add_variant(engine, cid, "A", "Hi",
                              "{{ first_name.__class__.__mro__[1].__subclasses__() }}")


def test_unsubscribe_get_confirms_and_post_suppresses(client, app, engine):
    token = make_token(app.config["SECRET_KEY"], "lead@example.com", 7)
    page = client.get(f"/u/{token}")
    assert page.status_code == 200 and b"lead@example.com" in page.data
    with engine.connect() as conn:
        assert conn.execute(select(Suppression)).all() == []  # GET changes nothing
    assert client.post(f"/u/{token}").status_code == 200  # one-click: no session, no CSRF token
    with engine.connect() as conn:
        assert conn.execute(select(Suppression.email, Suppression.reason)).all() == [
            ("lead@example.com", "unsubscribed")]


def test_tampered_or_foreign_token_changes_nothing(client, app, engine):
    token = make_token(app.config["SECRET_KEY"], "lead@example.com", 7)
    forged = make_token("another-secret", "boss@example.com", 7)
    email, _, signature = token.partition(".")
    for bad in (forged, token[:-2] + "xx", email + "." + signature[::-1], "garbage"):
        assert client.post(f"/u/{bad}").status_code == 404
    with engine.connect() as conn:
        assert conn.execute(select(Suppression)).all() == []
    assert read_token(app.config["SECRET_KEY"], token) == ("lead@example.com", 7)


def test_unsubscribed_lead_is_never_sent(app, engine, settings, client, smtp):
    cid = make_campaign(engine, 2)
    url = unsubscribe_url("", app.config["SECRET_KEY"], "lead0000@example.com", cid)
    client.post(url)
    send_all(app, engine, settings, cid)
    assert list(smtp.recorder.received) == ["lead0001@example.com"]


def test_suppression_csv_with_or_without_header_reports_bad_lines(engine):
    from core.suppressions import import_csv
    from storage.timeutil import utcnow

    with_header = b'name;email\n"Anna\nNowak";anna@example.com\nX;not-an-address\nY;JAN@example.com\n'
    assert import_csv(engine, with_header, utcnow()) == (2, [(4, import_csv_reason("not-an-address"))])
    assert import_csv(engine, b"ewa@example.com\nanna@example.com\n", utcnow()) == (1, [])
    with engine.connect() as conn:
        assert sorted(conn.execute(select(Suppression.email)).scalars()) == [
            "anna@example.com", "ewa@example.com", "jan@example.com"]


def import_csv_reason(raw: str) -> str:
    from core import importer

    try:
        importer.check_address(raw)
    except ValueError as exc:
        return str(exc)
    raise AssertionError("expected an invalid address")


def test_long_polish_subject_and_names_fold_and_read_back_intact():
    from email import message_from_bytes, policy

    from delivery import messages

    subject = "Zażółć gęślą jaźń, " * 12
    name = "Gęślą Jaźń Źdźbło-Żółtowska " * 4
    msg = messages.build_message(
        from_address="zespol@example.pl", from_name=name, to_address="anna@example.pl", to_name=name,
        subject=subject, body="Treść", msg_id="<1@example.pl>", unsubscribe_url="https://x.example/u/t")
    raw = msg.as_bytes(policy=messages.MAIL_POLICY)
    subject_lines = raw.split(b"\r\nDate:")[0].split(b"Subject: ")[1].split(b"\r\n")
    assert len(subject_lines) > 1 and all(len(line) <= 78 for line in subject_lines)
    back = message_from_bytes(raw, policy=policy.default)
    assert back["Subject"] == subject.strip()
    assert back["To"].addresses[0].display_name == name.strip()
    assert back["From"].addresses[0].display_name == name.strip()


# --- Message-IDs are globally unique (RFC 5322 3.6.4) ----------------------------------


def _installation(engine) -> str:
    with engine.connect() as conn:
        return conn.execute(select(AppMeta.value).where(AppMeta.key == "installation_id")).scalar_one()


def test_message_ids_differ_across_installations_with_the_same_ids(tmp_path, smtp):
    # Two installations (or one database reset) number campaigns and rows alike from 1:
    # the ids alone would repeat, and a provider drops a second message with an id it holds.
    seen = []
    for name in ("one.db", "two.db"):
        app = create_app(app_config(tmp_path / name, smtp.port))
        with app.app_context():
            schema.install(db.engine, db.metadata)
            cid = make_campaign(db.engine, 1)
            claim = claim_next(db.engine, Settings.from_config(app.config), cid, Trigger.BUTTON, utcnow())
            seen.append((claim.send_log_id, claim.message_id, _installation(db.engine)))
            db.engine.dispose()
    (id1, msg1, inst1), (id2, msg2, inst2) = seen
    assert id1 == id2 == 1 and inst1 != inst2 and msg1 != msg2
    assert inst1 in msg1 and inst2 in msg2


def test_a_reused_row_id_gets_a_new_message_id_and_a_retry_keeps_its_own(app, engine, settings, smtp):
    # After a restore from an older backup the same installation reuses send_log ids.
    cid = make_campaign(engine, 2, variants="A")
    first = claim_next(engine, settings, cid, Trigger.BUTTON, utcnow())
    installation = _installation(engine)
    with immediate(engine) as conn:  # what a restore of a backup taken before this claim does
        conn.execute(delete(SendLog.__table__))
        conn.execute(update(CampaignLead.__table__).values(state="pending"))
    again = claim_next(engine, settings, cid, Trigger.BUTTON, utcnow())
    assert again.send_log_id == first.send_log_id and again.message_id != first.message_id
    assert _installation(engine) == installation  # made once, kept
    # A retry of one row keeps that row's Message-ID on every attempt.
    store(engine, settings, Outcome(again, Result(SendStatus.RETRY, "451 later"), utcnow(), stored=False))
    retried = claim_next(engine, settings, cid, Trigger.BUTTON, utcnow())
    assert (retried.send_log_id, retried.attempts) == (again.send_log_id, 2)
    assert retried.message_id == again.message_id
