"""Deliverability: every kind of message SendOnce sends is built as receiving servers expect
and scores at most MAX_SCORE with SpamAssassin's local rules (`spamassassin -L -t`).

The messages are the real ones: a campaign step sent by the engine through the outbox
transport (the .eml file it writes), a test send from the editor ("Wyślij test"), and a
step with a mailbox signature and Polish diacritics. Debian's spamassassin is installed by
`make test`; each message costs one spamassassin run (~1.5 s), so keep the list short.
"""

from __future__ import annotations

import email
import re
import subprocess
from email import policy
from email.utils import parseaddr, parsedate_to_datetime
from pathlib import Path

import pytest
from sqlalchemy import select, update

from conftest import app_config
from core import campaigns, importer, leads, mailboxes
from delivery import messages, templating
from delivery.transport import MailboxTransports, make_transport
from helpers import csrf_token, log_in, make_campaign
from models import Campaign, Lead, Mailbox, Trigger, Variant
from sender import Settings, send_batch
from storage.database import immediate
from storage.secrets import Vault

SPAMASSASSIN = "/usr/bin/spamassassin"  # Debian's, as the Makefile's test target installs it
MAX_SCORE = 1.0  # the bar (#16); the demo message scores 0.0 today
SIGNATURE = ("Łukasz Żółtowski\nDział sprzedaży, Przykład Sp. z o.o.\n"
             "tel. +48 600 700 800\nul. Źródlana 5, 80-001 Gdańsk")
POLISH_BODY = ("Dzień dobry {{ first_name }},\n\nczy {{ company }} szuka nowych klientów w tym "
               "kwartale? Chętnie opowiem, jak pomagamy zespołom sprzedaży z Łodzi i Gdańska.\n\n"
               "Pozdrawiam serdecznie\n-- \n{{ signature }}\n\n"
               "Nie chcesz więcej wiadomości? Wypisz się: {{ unsubscribe_url }}\n")


@pytest.fixture
def config(tmp_path) -> dict:
    # The outbox transport: the bytes scored are exactly the bytes SendOnce hands on.
    return app_config(tmp_path / "sendonce.db", 0, MAIL_BACKEND="outbox", OUTBOX_DIR=str(tmp_path / "outbox"),
                      BASE_URL="https://sendonce.example.pl")


@pytest.fixture(scope="session")
def spam_home(tmp_path_factory) -> Path:
    """A home of its own for spamassassin (it writes user_prefs there), with empty prefs."""
    home = tmp_path_factory.mktemp("spamassassin")
    (home / "user_prefs").write_text("")
    return home


def spam_score(raw: bytes, home: Path) -> tuple[float, list[str]]:
    """SpamAssassin's score of one message with local rules only, and the rules that hit."""
    done = subprocess.run(
        [SPAMASSASSIN, "-L", "-t", "-p", str(home / "user_prefs")], input=raw, capture_output=True,
        timeout=60, env={"HOME": str(home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, check=True)
    report = done.stdout.decode("utf-8", "replace")
    found = re.search(r"Content analysis details:\s+\((-?\d+(?:\.\d+)?) points", report)
    assert found, f"no score in spamassassin's report:\n{report}\n{done.stderr.decode()}"
    table = report[found.end():]
    rules = re.findall(r"^\s*(-?\d+\.\d+ [A-Z0-9_]+\s+.*)$", table, re.MULTILINE)
    return float(found.group(1)), rules


def assert_scores_low(raw: bytes, home: Path) -> None:
    score, rules = spam_score(raw, home)
    print(f"spamassassin -L -t: {score} points", *rules, sep="\n  ")  # shown with -s or on failure
    assert score <= MAX_SCORE, f"{score} points > {MAX_SCORE}:\n" + "\n".join(rules)


def assert_receivable(raw: bytes) -> email.message.EmailMessage:
    """The headers and encoding a receiving server expects of a message; returns it parsed."""
    assert raw.isascii(), "8-bit bytes in a message: headers encoded, body quoted-printable/base64"
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))  # RFC 5322 2.1.1
    msg = email.message_from_bytes(raw, policy=policy.default)
    for name in ("From", "To", "Subject", "Date", "Message-ID", "MIME-Version"):
        assert len(msg.get_all(name) or []) == 1, f"{name} missing or repeated"
    assert parsedate_to_datetime(msg["Date"]).tzinfo is not None
    sender = parseaddr(str(msg["From"]))[1]
    assert re.fullmatch(rf"<[\x21-\x3b\x3d\x3f-\x7e]+@{re.escape(messages.id_domain(sender))}>",
                        msg["Message-ID"]), msg["Message-ID"]
    assert re.fullmatch(r"<https://[^>\s]+>", msg["List-Unsubscribe"])
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"  # RFC 8058
    assert msg["MIME-Version"] == "1.0"
    assert msg.get_content_type() == "text/plain" and msg.get_content_charset() == "utf-8"
    assert msg["Content-Transfer-Encoding"] in ("quoted-printable", "base64")
    return msg


def outbox_files(app) -> list[bytes]:
    """The messages the outbox transport wrote, oldest first."""
    files = sorted(Path(app.config["OUTBOX_DIR"]).glob("*.eml"), key=lambda p: p.stat().st_mtime_ns)
    return [f.read_bytes() for f in files]


def send_everything(app, engine, campaign_id: int) -> list[bytes]:
    """Run the engine over the campaign through the app's own transport; what it wrote."""
    transport = MailboxTransports(engine, app.config)
    try:
        send_batch(engine, Settings.from_config(app.config), transport, campaign_id, Trigger.BUTTON, limit=50)
    finally:
        transport.close()
    return outbox_files(app)


def test_the_demo_campaign_steps_are_receivable_and_score_low(app, engine, runner, spam_home):
    assert runner.invoke(args=["demo"]).exit_code == 0  # today's demo: two Polish variants
    with immediate(engine) as conn:
        campaign_id = conn.execute(select(Campaign.id)).scalar_one()
        # The demo's mailboxes wait 60 s between sends; the messages, not the pacing, are tested.
        conn.execute(update(Mailbox.__table__).values(min_gap_seconds=0))
    sent = send_everything(app, engine, campaign_id)
    assert len(sent) == 4
    # One message of each variant the leads were given (assignment is weighted at random).
    by_variant = {assert_receivable(raw)["Subject"].startswith("Dzień dobry"): raw for raw in sent}
    for raw in by_variant.values():
        assert_scores_low(raw, spam_home)


def test_a_test_send_from_the_editor_is_receivable_and_scores_low(app, engine, client, spam_home):
    campaign_id = make_campaign(engine, 1, start=False, variants="A", subject="Pytanie do {{ company }}",
                                body=POLISH_BODY, from_address="handlowiec@sendonce.example.pl",
                                from_name="Łukasz Żółtowski")
    log_in(app, client)
    token = csrf_token(client.get(f"/campaigns/{campaign_id}/variants/A").data)
    client.post(f"/campaigns/{campaign_id}/variants/A/test",
                data={"csrf_token": token, "to": "szef@firma.pl"})
    (raw,) = outbox_files(app)
    msg = assert_receivable(raw)
    assert msg["Subject"].startswith("[TEST] ") and msg["To"] == "szef@firma.pl"
    assert msg["Message-ID"].endswith("@sendonce.example.pl>")
    assert_scores_low(raw, spam_home)


def test_a_step_with_a_signature_and_polish_diacritics_is_receivable_and_scores_low(app, engine, spam_home):
    # Through the engine: a lead sent through a mailbox with a signature, From and the
    # Message-ID's domain taken from the mailbox (its display name with Polish letters).
    box = mailboxes.create(engine, Vault(app.config["MAILBOX_KEY_FILE"]), name="Łukasz Żółtowski",
                           address="lukasz@sendonce.example.pl", backend="outbox", signature=SIGNATURE)
    cid = make_campaign(engine, 0, start=False, variants="A",
                        subject="{{ first_name }}, pytanie o {{ company }}", body=POLISH_BODY)
    csv = ("email,first_name,last_name,company\n"
           "zofia.wisniewska@example.com,Zofia,Wiśniewska,Źródło Sp. z o.o.\n")
    report = importer.import_leads(engine, csv.encode())
    leads.enroll(engine, cid, report.lead_ids)
    mailboxes.link(engine, cid, [box])
    campaigns.start(engine, cid)
    batch = send_batch(engine, Settings.from_config(app.config), make_transport(app.config), cid, Trigger.CLI)
    assert batch.sent == 1
    (raw,) = outbox_files(app)
    parsed = assert_receivable(raw)
    body = parsed.get_content().replace("\r\n", "\n")
    assert SIGNATURE in body and "Wiśniewska" not in body and "Dzień dobry Zofia" in body
    assert parsed["From"].addresses[0].display_name == "Łukasz Żółtowski"
    assert parsed["Message-ID"].endswith("@sendonce.example.pl>")
    assert_scores_low(raw, spam_home)


def test_the_score_check_catches_a_message_servers_would_distrust(app, spam_home):
    # The check is not blind: the same kind of message without Date and Message-ID (what a
    # careless builder would send) scores over the bar.
    msg = messages.build_message(
        from_address="lukasz@sendonce.example.pl", from_name="Łukasz", to_address="anna@example.com",
        to_name="Anna", subject="Pytanie", body="Dzień dobry,\n\nczy mogę zadzwonić?\n",
        msg_id="<x@sendonce.example.pl>", unsubscribe_url="https://sendonce.example.pl/u/t")
    del msg["Date"], msg["Message-ID"]
    score, rules = spam_score(msg.as_bytes(policy=messages.MAIL_POLICY), spam_home)
    assert score > MAX_SCORE and any("MISSING_DATE" in rule for rule in rules), rules


# --- {{ signature }}: a known merge field, plain text put in as it is -----------------------


def test_signature_is_a_known_merge_field_before_the_first_send(app, engine):
    campaign_id = make_campaign(engine, 2, start=False, variants="A", body="Hej\n-- \n{{ signature }}\n")
    assert campaigns.validate(engine, campaign_id) == []
    campaigns.start(engine, campaign_id)  # raises CampaignError on an unknown field


def test_the_editor_accepts_the_signature_field(app, engine, client):
    campaign_id = make_campaign(engine, 1, start=False, variants="A")
    log_in(app, client)
    form = client.get(f"/campaigns/{campaign_id}/variants/A").data
    assert b'data-insert="{{ signature }}"' in form  # offered beside the other fields
    token = csrf_token(form)
    page = client.post(f"/campaigns/{campaign_id}/variants/A", data={
        "csrf_token": token, "letter": "A", "subject": "Hej", "weight": "1",
        "body": "Hej {{ first_name }}\n{{ signature }}"}, follow_redirects=True).get_data(as_text=True)
    assert "nieznane pole" not in page and "unknown field" not in page
    with engine.connect() as conn:
        assert conn.execute(select(Variant.body)).scalar_one() == "Hej {{ first_name }}\n{{ signature }}"



def test_a_signature_is_plain_text_never_a_template_and_defaults_to_empty():
    lead = Lead(email="a@example.com", first_name="Anna", last_name="", company="", fields={}, tags="")
    tricky = "Anna <anna@firma.pl> & {{ 7 * 7 }} {% raw %}\r\ntel. 600"
    body = templating.render("X\n{{ signature }}", templating.lead_context(lead, "u", signature=tricky))
    assert body == "X\n" + tricky  # no HTML escaping (text/plain) and not rendered again
    assert templating.render("[{{ signature }}]", templating.lead_context(lead, "u")) == "[]"


# --- Message-ID: the mailbox's domain, ASCII even for an internationalized domain -------


@pytest.mark.parametrize(("address", "domain"), [
    ("sprzedaż@przykład.pl", "xn--przykad-rjb.pl"),
    ("Biuro@Przykład.PL", "xn--przykad-rjb.pl"),
    ("team@sendonce.test", "sendonce.test"),
    ("team@Example.COM.", "example.com"),
    ("no-domain", "sendonce.invalid"),
    ("a@", "sendonce.invalid"),
    ("a@[192.0.2.1]", "sendonce.invalid"),
])
def test_message_ids_use_the_mailbox_domain_in_ascii(address, domain):
    for made in (messages.message_id(3, 2, address, "inst"), messages.test_message_id(address)):
        assert made.isascii() and made.endswith(f"@{domain}>"), made
        parsed = email.message_from_string(f"Message-ID: {made}\n\n", policy=policy.default)
        assert parsed["Message-ID"] == made
