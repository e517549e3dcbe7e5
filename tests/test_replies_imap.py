"""Replies and bounces read from a real Dovecot (#18): read-only, once per message across
restarts and a SIGKILL, UIDVALIDITY changes, matching, effects, the bounce-rate guard,
the lease, the CLI and the Replies page."""

from __future__ import annotations

import itertools
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import expect
from sqlalchemy import func, select, update

from conftest import app_config, env_for
from core import mailboxes, replies, sequences
from delivery import lease as leases
from delivery.transport import Result
from helpers import log_in, make_campaign
from models import (
    CampaignLead,
    DelayUnit,
    InboundMessage,
    Lead,
    Mailbox,
    MailboxFolderState,
    SendLog,
    SendStatus,
    Suppression,
    Trigger,
)
from sender import Claim, Refusal, claim_next, record
from storage.database import immediate
from storage.secrets import Vault
from storage.timeutil import utcnow

pytestmark = pytest.mark.postgres

SAMPLES = Path(__file__).with_name("data") / "replies"
WORKER = Path(__file__).with_name("reply_worker.py")
RECEIVED = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)  # INTERNALDATE of APPENDed samples
_serial = itertools.count(1)


@pytest.fixture
def config(tmp_path, smtp) -> dict:
    return app_config(tmp_path / "sendonce.db", smtp.port, MAILBOX_KEY_FILE=str(tmp_path / "secret.keys"))


@dataclass
class Box:
    id: int
    address: str


@pytest.fixture
def box(app, engine, dovecot) -> Box:
    """A mailbox whose IMAP side is a fresh Dovecot user (the session's one server)."""
    return add_box(app, engine, dovecot)


def add_box(app, engine, dovecot) -> Box:
    address, password = dovecot.new_user()
    mailbox_id = mailboxes.create(
        engine, Vault(app.config["MAILBOX_KEY_FILE"]), address=address, backend="smtp", smtp_host="127.0.0.1",
        smtp_security="none", daily_cap=1000, min_gap_seconds=0, imap_host="127.0.0.1",
        imap_port=dovecot.imap_port, imap_security="none", imap_username=address, imap_password=password)
    return Box(mailbox_id, address)


def sample(name: str, original: str = "<none@nowhere.test>", **replace: str) -> bytes:
    text = (SAMPLES / name).read_text(encoding="utf-8").replace("<ORIGINAL-MESSAGE-ID>", original)
    # Each delivery is a new message: its own Message-ID (a copy of one message keeps it).
    text = re.sub(r"^Message-ID: <", f"Message-ID: <{next(_serial)}.", text, count=1, flags=re.MULTILINE)
    for old, new in replace.items():
        text = text.replace(old, new)
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()


def message(sender: str, body: str, subject: str = "Re: hello", **headers: str) -> bytes:
    extra = "".join(f"{name.replace('_', '-')}: {value}\r\n" for name, value in headers.items())
    return (f"From: {sender}\r\nTo: x@example.test\r\nSubject: {subject}\r\n{extra}"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n").encode()


def send(engine, settings, campaign_id: int, n: int) -> list[tuple[Claim, str]]:
    """Claim n sends (each gets its Message-ID) and mark them sent; with each lead's address."""
    sent = []
    for _ in range(n):
        claim = claim_next(engine, settings, campaign_id, Trigger.CLI, utcnow())
        assert isinstance(claim, Claim), claim
        sent.append(claim)
    with immediate(engine) as conn:
        conn.execute(update(SendLog.__table__).where(SendLog.id.in_([c.send_log_id for c in sent]))
                     .values(status="sent", sent_at=utcnow()))
        emails = dict(conn.execute(select(Lead.id, Lead.email)).all())
    return [(c, emails[c.lead_id]) for c in sent]


def read(app, engine, box: Box, lease=None, **options) -> replies.ReadResult:
    [result] = replies.read_all(engine, Vault(app.config["MAILBOX_KEY_FILE"]),
                                replies.ReaderOptions(**options), lease, box.id)
    assert result.error is None, result.error
    return result


def inbound(engine, box: Box) -> list:
    with engine.connect() as conn:
        return conn.execute(select(InboundMessage.__table__).where(InboundMessage.mailbox_id == box.id)
                            .order_by(InboundMessage.id)).all()


def suppressed(engine) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(select(Suppression.email, Suppression.reason)).all())


def test_reading_never_changes_a_flag_nor_moves_or_deletes_anything(app, engine, dovecot, box):
    for i in range(3):  # unseen, as an MTA delivers them
        dovecot.deliver(box.address, message(f"p{i}@example.com", f"hello {i}"))
    dovecot.append(box.address, message("seen@example.com", "read in Outlook"), flags=(b"\\Seen",))
    dovecot.append(box.address, message("flag@example.com", "flagged"), flags=(b"\\Seen", b"\\Flagged"))
    dovecot.append(box.address, message("ans@example.com", "answered"), flags=(b"\\Answered",))
    dovecot.append(box.address, sample("dsn_hard_postfix.eml"), folder="Bounces")
    before = dovecot.snapshot(box.address)
    assert {uid_flags[1] for _, uids in before.values() for uid_flags in uids} >= {
        (b"\\Recent",), (b"\\Recent", b"\\Seen")}  # both kinds really are there
    result = read(app, engine, box, bounce_folder="Bounces")
    assert result.read == 7
    assert dovecot.snapshot(box.address) == before  # every flag, uid, size and folder as it was
    read(app, engine, box, bounce_folder="Bounces")  # a second pass: nothing new, nothing touched
    assert dovecot.snapshot(box.address) == before and len(inbound(engine, box)) == 7


def test_each_message_is_processed_once_across_restarts(app, engine, dovecot, box):
    for i in range(3):
        dovecot.deliver(box.address, message(f"p{i}@example.com", f"hello {i}"))
    assert read(app, engine, box).read == 3
    with immediate(engine) as conn:  # a restart that lost the cursor: everything is offered again
        conn.execute(update(MailboxFolderState.__table__).values(last_uid=0))
    assert read(app, engine, box).read == 0  # the unique key says each was done
    dovecot.deliver(box.address, message("p3@example.com", "one more"))
    assert read(app, engine, box).read == 1
    rows = inbound(engine, box)
    assert sorted(r.uid for r in rows) == [1, 2, 3, 4] and len({(r.uidvalidity, r.uid) for r in rows}) == 4


@pytest.mark.slow
def test_a_reader_killed_between_fetch_and_commit_loses_and_repeats_nothing(app, engine, dovecot, box,
                                                                            config, settings):
    cid = make_campaign(engine, 3)
    mailboxes.link(engine, cid, [box.id])
    (first, _), (second, second_email), _ = send(engine, settings, cid, 3)
    dovecot.deliver(box.address, sample("reply_pl_gmail.eml", first.message_id))
    dovecot.deliver(box.address, sample("dsn_hard_postfix.eml", second.message_id,
                                        **{"lead0009@example.com": second_email}))
    dovecot.deliver(box.address, message("stranger@example.org", "who are you?"))
    worker = subprocess.Popen([sys.executable, str(WORKER), str(box.id), "2"], env=env_for(config),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline().strip() == "holding 2"  # inside message 2's transaction
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        worker.kill()
        worker.stdout.close()
    assert [r.uid for r in inbound(engine, box)] == [1]  # message 1 committed; 2 rolled back with its effects
    assert second_email not in suppressed(engine)
    # The next reader takes the dead holder's lease over and reads on.
    app.extensions["sendonce_ticker"].read_replies(box.id)
    rows = inbound(engine, box)
    assert [(r.uid, r.kind) for r in rows] == [(1, "reply"), (2, "bounce_hard"), (3, "unmatched")]
    assert suppressed(engine) == {second_email: "bounce"}
    with engine.connect() as conn:
        assert conn.execute(select(MailboxFolderState.last_uid)).scalar_one() == 3


def test_a_new_uidvalidity_reads_the_folder_again_without_acting_twice(app, engine, dovecot, box, settings):
    cid = make_campaign(engine, 2)
    mailboxes.link(engine, cid, [box.id])
    (claim, email), _ = send(engine, settings, cid, 2)
    bounce = sample("dsn_hard_postfix.eml", claim.message_id, **{"lead0009@example.com": email})
    dovecot.append(box.address, bounce, folder="Bounces")
    read(app, engine, box, bounce_folder="Bounces")
    old = dovecot.snapshot(box.address)["Bounces"][0]
    with immediate(engine) as conn:  # a person "unsuppresses" it: a second processing would re-add it
        conn.execute(Suppression.__table__.delete())
    with dovecot.client(box.address) as imap:  # the folder is re-created: a new UIDVALIDITY
        imap.delete_folder("Bounces")
    time.sleep(1.1)  # Dovecot's UIDVALIDITY is a time in seconds
    dovecot.append(box.address, bounce, folder="Bounces")
    dovecot.append(box.address, message("late@example.org", "new after the change"), folder="Bounces")
    assert dovecot.snapshot(box.address)["Bounces"][0] != old
    assert read(app, engine, box, bounce_folder="Bounces").kinds == {"duplicate": 1, "unmatched": 1}
    with engine.connect() as conn:
        cursor = conn.execute(select(MailboxFolderState.__table__)
                              .where(MailboxFolderState.folder == "Bounces")).one()
    assert (cursor.uidvalidity, cursor.last_uid) == (dovecot.snapshot(box.address)["Bounces"][0], 2)
    assert suppressed(engine) == {}  # the copy acted on nothing
    assert [r.kind for r in replies_listed(engine)] == ["unmatched", "bounce_hard"]


def replies_listed(engine) -> list:
    with engine.connect() as conn:
        return replies.rows(conn)


def test_matching_by_in_reply_to_references_and_the_sender_address(app, engine, dovecot, box, settings):
    cid = make_campaign(engine, 4)
    mailboxes.link(engine, cid, [box.id])
    sent = send(engine, settings, cid, 4)
    (a, a_email), (b, b_email), (c, c_email), (d, d_email) = sent
    dovecot.deliver(box.address, message(a_email, "yes", In_Reply_To=a.message_id))
    dovecot.deliver(box.address, message(b_email.upper(), "maybe",  # a client that keeps References only
                                         References=f"<older@x.test> {b.message_id}"))
    # Gmail rewrote the headers: only the sender's address is left to match.
    dovecot.deliver(box.address, message(f"C <{c_email}>", "call me", In_Reply_To="<CA+new@mail.gmail.com>"))
    dovecot.deliver(box.address, message("stranger@example.org", "who are you?"))
    read(app, engine, box)
    rows = {r.from_address: r for r in inbound(engine, box)}
    assert (rows[a_email].kind, rows[a_email].send_log_id) == ("reply", a.send_log_id)
    assert (rows[b_email].kind, rows[b_email].send_log_id) == ("reply", b.send_log_id)
    assert (rows[c_email].kind, rows[c_email].send_log_id, rows[c_email].campaign_id) == (
        "reply", c.send_log_id, cid)
    stranger = rows["stranger@example.org"]
    assert (stranger.kind, stranger.send_log_id) == ("unmatched", None)
    assert d_email not in rows


def test_the_sender_address_matches_only_sends_through_that_mailbox(app, engine, dovecot, box, settings):
    other = add_box(app, engine, dovecot)
    cid = make_campaign(engine, 1)
    mailboxes.link(engine, cid, [other.id])
    [(_claim, email)] = send(engine, settings, cid, 1)
    dovecot.deliver(box.address, message(email, "hello?"))  # it wrote to a mailbox that never mailed it
    read(app, engine, box)
    assert [(r.kind, r.lead_id) for r in inbound(engine, box)] == [("unmatched", None)]


def test_a_permanent_dsn_suppresses_the_address_and_every_campaign_skips_it(app, engine, dovecot, box,
                                                                            settings):
    first, second = make_campaign(engine, 3), make_campaign(engine, 3)  # the same three leads
    mailboxes.link(engine, first, [box.id])
    mailboxes.link(engine, second, [box.id])
    (_, _), (bounced, email), _ = send(engine, settings, first, 3)
    dovecot.deliver(box.address, sample("dsn_hard_postfix.eml", bounced.message_id,
                                        **{"lead0009@example.com": email}), sender="")
    read(app, engine, box)
    [row] = inbound(engine, box)
    assert (row.kind, row.send_log_id, row.lead_id) == ("bounce_hard", bounced.send_log_id, bounced.lead_id)
    assert suppressed(engine) == {email: "bounce"}
    claimed = []
    while isinstance(claim := claim_next(engine, settings, second, Trigger.CLI, utcnow()), Claim):
        claimed.append(claim.lead_id)
    assert sorted(claimed) == sorted({1, 2, 3} - {bounced.lead_id})
    with engine.connect() as conn:
        state = conn.execute(select(CampaignLead.state).where(
            CampaignLead.campaign_id == second, CampaignLead.lead_id == bounced.lead_id)).scalar()
    assert state == "skipped"


def test_a_dsn_found_by_its_failed_recipient_when_it_quotes_no_message_id(app, engine, dovecot, box,
                                                                          settings):
    cid = make_campaign(engine, 1)
    mailboxes.link(engine, cid, [box.id])
    [(claim, email)] = send(engine, settings, cid, 1)
    dovecot.deliver(box.address, sample("bounce_qmail.eml", **{"lead0011@example.com": email}))
    read(app, engine, box)
    assert [(r.kind, r.send_log_id) for r in inbound(engine, box)] == [("bounce_hard", claim.send_log_id)]
    assert suppressed(engine) == {email: "bounce"}


def test_a_temporary_dsn_is_only_recorded(app, engine, dovecot, box, settings):
    cid = make_campaign(engine, 1)
    mailboxes.link(engine, cid, [box.id])
    [(claim, email)] = send(engine, settings, cid, 1)
    dovecot.deliver(box.address, sample("dsn_soft_headers.eml", claim.message_id,
                                        **{"lead0010@example.com": email}))
    read(app, engine, box)
    assert [(r.kind, r.send_log_id) for r in inbound(engine, box)] == [("bounce_soft", claim.send_log_id)]
    assert suppressed(engine) == {}


def test_an_auto_reply_is_not_a_stop_and_its_return_date_delays(app, engine, dovecot, box, settings,
                                                                monkeypatch):
    stops, delays = [], []
    monkeypatch.setattr(replies.sequences, "stop_for_reply",
                        lambda conn, cid, lead, now: stops.append((cid, lead)))
    monkeypatch.setattr(replies.sequences, "delay_until",
                        lambda conn, cid, lead, day: delays.append((cid, lead, day)))
    cid = make_campaign(engine, 2)
    mailboxes.link(engine, cid, [box.id])
    (away, _), (answered, answered_email) = send(engine, settings, cid, 2)
    dovecot.append(box.address, sample("ooo_pl.eml", away.message_id), received=RECEIVED)
    dovecot.append(box.address, message(answered_email, "Tak, poproszę.", In_Reply_To=answered.message_id))
    read(app, engine, box)
    rows = inbound(engine, box)
    assert [(r.kind, r.return_date) for r in rows] == [("auto_reply", datetime(2026, 12, 15)),
                                                       ("reply", None)]
    assert stops == [(cid, answered.lead_id)]  # the reply stops its lead; the auto-reply does not
    assert delays == [(cid, away.lead_id, datetime(2026, 12, 15))]
    assert suppressed(engine) == {}


def test_an_unsubscribe_request_by_reply_suppresses_the_sender(app, engine, dovecot, box, settings):
    cid = make_campaign(engine, 3)
    mailboxes.link(engine, cid, [box.id])
    (a, a_email), (b, b_email), (c, c_email) = send(engine, settings, cid, 3)
    dovecot.deliver(box.address, sample("unsubscribe_pl.eml", a.message_id,
                                        **{"lead0012@example.com": a_email}))
    dovecot.deliver(box.address, sample("wypisz.eml", b.message_id, **{"lead0014@example.com": b_email}))
    # "unsubscribe" only in the quoted thread (our own footer): a reply, nobody suppressed.
    dovecot.deliver(box.address, sample("reply_quoted_unsubscribe.eml", c.message_id,
                                        **{"lead0015@example.com": c_email}))
    read(app, engine, box)
    assert [r.kind for r in inbound(engine, box)] == ["unsubscribe", "unsubscribe", "reply"]
    assert suppressed(engine) == {a_email: "unsubscribed", b_email: "unsubscribed"}


def test_the_bounce_rate_guard_pauses_the_mailbox(app, engine, dovecot, box, settings):
    cid = make_campaign(engine, 6)
    mailboxes.link(engine, cid, [box.id])
    sent = send(engine, settings, cid, 6)
    guard = {"guard_sends": 10, "guard_rate": 0.1}  # more than 1 hard bounce in the last 10 sends
    for claim, email in sent[:1]:
        dovecot.deliver(box.address, sample("dsn_hard_postfix.eml", claim.message_id,
                                            **{"lead0009@example.com": email}))
    assert read(app, engine, box, **guard).paused is None
    for claim, email in sent[1:2]:
        dovecot.deliver(box.address, sample("dsn_hard_postfix.eml", claim.message_id,
                                            **{"lead0009@example.com": email}))
    result = read(app, engine, box, **guard)
    assert result.paused == "hard-bounce rate 2 of the last 10 sends (20.0 %) is above 10.0 %"
    with engine.connect() as conn:
        status = conn.execute(select(Mailbox.status, Mailbox.pause_reason).where(Mailbox.id == box.id)).one()
    assert tuple(status) == ("paused", result.paused)
    assert isinstance(claim_next(engine, settings, cid, Trigger.CLI, utcnow()), Refusal)  # it sends no more
    mailboxes.resume(engine, box.id)  # a person looked and resumed it: it holds until a new bounce
    dovecot.deliver(box.address, message("someone@example.org", "hello"))
    assert read(app, engine, box, **guard).paused is None
    claim, email = sent[2]
    dovecot.deliver(box.address, sample("dsn_hard_postfix.eml", claim.message_id,
                                        **{"lead0009@example.com": email}))
    assert read(app, engine, box, **guard).paused.startswith("hard-bounce rate 3 of the last 10 sends")


def test_a_reader_whose_lease_was_taken_over_records_nothing(app, engine, dovecot, box):
    dovecot.deliver(box.address, message("p@example.com", "hello"))
    mine = leases.acquire(engine, "reader-a", utcnow(), 60)
    with immediate(engine) as conn:  # frozen past its expiry: another process took over
        conn.execute(update(leases._lease).values(holder="reader-b", epoch=mine.epoch + 1))
    with pytest.raises(replies.LeaseLost):
        replies.read_all(engine, Vault(app.config["MAILBOX_KEY_FILE"]), replies.ReaderOptions(), mine, box.id)
    assert inbound(engine, box) == []


def test_the_scheduler_tick_and_the_cli_read_and_list(app, engine, dovecot, box, runner):
    dovecot.deliver(box.address, message("first@example.org", "one"))
    app.extensions["sendonce_ticker"].safe_tick()  # the scheduled job reads after its tick
    assert len(inbound(engine, box)) == 1
    dovecot.deliver(box.address, message("second@example.org", "two"))
    out = runner.invoke(args=["replies", "read", "--mailbox", str(box.id)])
    assert out.exit_code == 0, out.output
    assert f"mailbox {box.id} ({box.address}): unmatched 1" in out.output
    listed = runner.invoke(args=["replies", "list"])
    assert "second@example.org" in listed.output and "first@example.org" in listed.output
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(leases._lease)
                            .where(leases._lease.c.holder != "")).scalar() == 0  # the CLI released it


def test_a_mailbox_that_cannot_be_read_is_reported_and_changes_nothing(app, engine, dovecot, box, runner):
    mailboxes.update_mailbox(engine, Vault(app.config["MAILBOX_KEY_FILE"]), box.id, imap_password="wrong")
    out = runner.invoke(args=["replies", "read"])
    assert out.exit_code == 1 and "not read:" in out.output and "wrong" not in out.output
    assert inbound(engine, box) == []


def test_the_replies_page_shows_text_escaped_and_takes_labels(app, engine, dovecot, box, settings):
    cid = make_campaign(engine, 2)
    mailboxes.link(engine, cid, [box.id])
    (a, a_email), (b, b_email) = send(engine, settings, cid, 2)
    dovecot.deliver(box.address, sample("reply_plain_hostile.eml", a.message_id,
                                        **{"lead0003@example.com": a_email}))
    dovecot.deliver(box.address, sample("reply_html_hostile.eml", b.message_id,
                                        **{"lead0003@example.com": b_email}))
    read(app, engine, box)
    client = app.test_client()
    assert client.get("/replies").status_code == 302  # login first
    log_in(app, client)
    page = client.get(f"/replies?campaign={cid}").get_data(as_text=True)
    assert "&lt;script&gt;alert(&#39;plain-script&#39;)&lt;/script&gt;" in page
    assert "<script>alert" not in page and "<img src=x" not in page and "tracker.invalid" not in page
    assert "Call me tomorrow &amp; bring the offer." in page and "html-script" not in page
    assert a_email in page and "test 2" in page
    row = inbound(engine, box)[0]
    assert client.post(f"/replies/{row.id}/label", data={"label": "interested"}).status_code == 400  # no CSRF
    token = log_in_token(client)
    done = client.post(f"/replies/{row.id}/label", data={"label": "interested", "csrf_token": token})
    assert done.status_code == 302
    labelled = inbound(engine, box)[0]
    assert (labelled.label, labelled.labelled_by) == ("interested", "admin@example.com")


def log_in_token(client) -> str:
    from helpers import csrf_token

    return csrf_token(client.get("/replies").data)


def send_through(engine, settings, campaign_id: int, n: int, at: datetime) -> list[tuple[Claim, str]]:
    """Claim n sends one by one, each recorded as the sender does after the server's 250 (the lead
    moves on to its next step)."""
    sent = []
    for _ in range(n):
        claim = claim_next(engine, settings, campaign_id, Trigger.CLI, at)
        assert isinstance(claim, Claim), claim
        record(engine, settings, claim, Result(SendStatus.SENT, "250 ok"), at)
        sent.append(claim)
    with engine.connect() as conn:
        emails = dict(conn.execute(select(Lead.id, Lead.email)).all())
    return [(claim, emails[claim.lead_id]) for claim in sent]


def test_rates_per_step_and_variant_on_the_campaign_page(app, engine, dovecot, box, settings):
    cid = make_campaign(engine, 6, variants="AB")
    mailboxes.link(engine, cid, [box.id])
    sequences.add_step(engine, cid, amount=1, unit=DelayUnit.HOURS, subject="s2",
                       body="step 2 {{ unsubscribe_url }}", now=utcnow())
    sent = send_through(engine, settings, cid, 6, utcnow())
    (replied, replied_email), (bounced, bounced_email) = sent[0], sent[1]
    dovecot.deliver(box.address, message(replied_email, "yes", In_Reply_To=replied.message_id))
    dovecot.deliver(box.address, message(replied_email, "and again", In_Reply_To=replied.message_id))
    dovecot.deliver(box.address, sample("dsn_hard_postfix.eml", bounced.message_id,
                                        **{"lead0009@example.com": bounced_email}))
    dovecot.deliver(box.address, sample("ooo_en.eml", sent[2][0].message_id))  # an auto-reply: no reply
    read(app, engine, box)
    # Step 2 (one variant, A) reaches the three leads who neither answered, bounced nor are away.
    later = send_through(engine, settings, cid, 3, utcnow() + timedelta(hours=2))
    assert {claim.step for claim, _ in later} == {2}
    dovecot.deliver(box.address, message(later[0][1], "step two, yes", In_Reply_To=later[0][0].message_id))
    read(app, engine, box)
    with engine.connect() as conn:
        rates = {(r.step, r.variant): (r.sent, r.replied, r.bounced) for r in replies.rates(conn, cid)}
    letters = Counter(claim.variant_letter for claim, _ in sent)  # variants are drawn at enrollment
    first = {(1, letter): (n, int(letter == replied.variant_letter), int(letter == bounced.variant_letter))
             for letter, n in letters.items()}  # two replies of one lead count once
    assert rates == {**first, (2, "A"): (3, 1, 0)}
    client = app.test_client()
    log_in(app, client)
    page = client.get(f"/campaigns/{cid}").get_data(as_text=True)
    table = page[page.index("Odpowiedzi i odbicia"):]
    assert f'href="/replies?campaign={cid}"' in table
    found = re.findall(r'<tr data-step="(\d)" data-variant="(\w)"><td>\d</td><td><b>\w</b></td>'
                       r'<td>(\d+)</td><td>(\d+)</td>', table)
    shown = {(int(step), letter): (int(n), int(answered)) for step, letter, n, answered in found}
    assert shown == {key: (n, r) for key, (n, r, _b) in rates.items()}
    assert ('<tr data-step="2" data-variant="A"><td>2</td><td><b>A</b></td><td>3</td><td>1</td>'
            '<td>33.3 %</td><td>0</td><td>0.0 %</td></tr>') in page
    sequence = client.get(f"/campaigns/{cid}/sequence").get_data(as_text=True)
    assert sequence.count("<tr data-step=") == len(rates) and f'href="/replies?campaign={cid}"' in sequence



def test_a_message_no_parser_can_read_is_recorded_and_does_not_block_the_next(app, engine, dovecot, box,
                                                                              monkeypatch):
    real = replies.read_message

    def fussy(raw: bytes, received_at):
        if b"poison" in raw:
            raise UnicodeError("a parser bug")
        return real(raw, received_at)

    monkeypatch.setattr(replies, "read_message", fussy)
    dovecot.deliver(box.address, message("p@example.com", "poison"))
    dovecot.deliver(box.address, message("q@example.com", "fine"))
    read(app, engine, box)
    assert [(r.kind, r.snippet) for r in inbound(engine, box)] == [("other", replies.UNREADABLE),
                                                                   ("unmatched", "fine")]


@pytest.mark.slow
def test_the_replies_page_in_a_real_browser_runs_no_mail_content(page, live_server, app, engine, dovecot, box,
                                                                  settings, screenshot):
    cid = make_campaign(engine, 2)
    mailboxes.link(engine, cid, [box.id])
    (a, a_email), (b, b_email) = send(engine, settings, cid, 2)
    dovecot.deliver(box.address, sample("reply_plain_hostile.eml", a.message_id,
                                        **{"lead0003@example.com": a_email}))
    dovecot.deliver(box.address, sample("reply_html_hostile.eml", b.message_id,
                                        **{"lead0003@example.com": b_email}))
    read(app, engine, box)
    dialogs, requests = [], []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.on("request", lambda request: requests.append(request.url))
    log_in(app, app.test_client())  # makes the login
    page.goto(f"{live_server}/login")
    page.fill("input[name=email]", "admin@example.com")
    page.fill("input[name=password]", "correct horse")
    page.click("button[type=submit] >> text=Zaloguj")
    expect(page.locator("h1")).to_have_text("Kampanie")
    page.click("nav >> text=Odpowiedzi")
    page.goto(f"{live_server}/replies?campaign={cid}")
    expect(page.locator("h1")).to_have_text("Odpowiedzi")
    plain, html = page.locator("tr", has_text=a_email), page.locator("tr", has_text=b_email)
    expect(plain.locator(".snippet")).to_have_text(
        "Sure <script>alert('plain-script')</script><img src=x onerror=alert(1)> let's talk.")
    expect(html.locator(".snippet")).to_have_text("Call me tomorrow & bring the offer.\n\nclick")
    plain.get_by_role("button", name="zainteresowany", exact=True).click()
    expect(page.locator("tr", has_text=a_email).locator("td").last).to_contain_text("zainteresowany")
    expect(page.locator("tr", has_text=a_email).get_by_role("button", name="zainteresowany", exact=True)
           ).to_have_count(0)  # the mark set is shown, not offered again
    screenshot("replies")
    assert dialogs == []  # no script of a mail ran
    assert not [url for url in requests if not url.startswith(live_server)]  # nothing fetched from elsewhere


def test_reading_a_mailbox_without_an_imap_host_is_a_clear_error(app, engine, runner):
    mailbox_id = mailboxes.create(engine, Vault(app.config["MAILBOX_KEY_FILE"]), address="anna@firma.pl")
    out = runner.invoke(args=["replies", "read", "--mailbox", str(mailbox_id)])
    assert out.exit_code == 1 and f"no mailbox {mailbox_id} with an IMAP host" in out.output
    out = runner.invoke(args=["replies", "read"])
    assert out.exit_code == 0 and "no mailbox has an IMAP host" in out.output


@pytest.mark.parametrize("security", ["starttls", "ssl"])
def test_tls_with_the_servers_certificate_checked(app, engine, dovecot, box, monkeypatch, security):
    vault = Vault(app.config["MAILBOX_KEY_FILE"])
    port = dovecot.imaps_port if security == "ssl" else dovecot.imap_port
    mailboxes.update_mailbox(engine, vault, box.id, imap_security=security, imap_port=port)
    dovecot.deliver(box.address, message("p@example.com", "over TLS"))
    [refused] = replies.read_all(engine, vault, replies.ReaderOptions(), None, box.id)
    assert "CERTIFICATE_VERIFY_FAILED" in refused.error  # not trusted: not read
    assert inbound(engine, box) == []
    monkeypatch.setenv("SSL_CERT_FILE", str(dovecot.ca_file))  # OpenSSL's default trust store, for this test
    assert read(app, engine, box).read == 1


def test_a_mailbox_that_logs_in_with_xoauth2_is_read_over_imap(app, engine, dovecot):
    address, token = dovecot.oauth_user()  # Dovecot checks the token with its introspection endpoint
    vault = Vault(app.config["MAILBOX_KEY_FILE"])
    common = dict(backend="smtp", smtp_host="127.0.0.1", smtp_security="none", auth_kind="xoauth2",
                  imap_host="127.0.0.1", imap_port=dovecot.imap_port, imap_security="none",
                  imap_username=address)
    good = Box(mailboxes.create(engine, vault, address=address, imap_password=token, **common), address)
    dovecot.deliver(address, message("someone@example.org", "hello over oauth"))
    assert read(app, engine, good).read == 1
    assert [row.snippet for row in inbound(engine, good)] == ["hello over oauth"]
    assert token in dovecot.introspection.asked
    # A token the provider does not know (expired, revoked): the mailbox is reported, nothing read.
    wrong = mailboxes.create(engine, vault, address="other@firma.pl", imap_password="ya29.revoked", **common)
    [result] = replies.read_all(engine, vault, replies.ReaderOptions(), None, wrong)
    assert result.error and "uthenticat" in result.error and result.read == 0
