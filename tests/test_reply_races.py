"""Replies arriving in a real IMAP server (Dovecot) while real processes race a three-step
sequence (#18): no follow-up is claimed after the reply, auto-reply or bounce of its lead
was recorded; each IMAP message is processed once; the other leads get every step once."""

from __future__ import annotations

from collections import defaultdict
from email.utils import parseaddr

import pytest
from sqlalchemy import select

from conftest import env_for
from core import campaigns, mailboxes, sequences
from helpers import make_campaign
from models import CampaignLead, DelayUnit, InboundMessage, Lead, SendLog, Suppression
from procs import spawn_workers, wait_all, wait_for
from storage.secrets import Vault
from storage.timeutil import utcnow
from test_replies_imap import message, sample

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def rows(engine, model, *where):
    with engine.connect() as conn:
        return conn.execute(select(model.__table__).where(*where)).all()


def test_no_follow_up_is_claimed_after_a_recorded_reply_or_bounce(
        app, engine, smtp, config, dovecot):
    address, password = dovecot.new_user()
    box = mailboxes.create(engine, Vault(app.config["MAILBOX_KEY_FILE"]), address=address, backend="smtp",
                           smtp_host="127.0.0.1", smtp_port=smtp.port, smtp_security="none", daily_cap=1000,
                           min_gap_seconds=0, imap_host="127.0.0.1", imap_port=dovecot.imap_port,
                           imap_security="none", imap_username=address, imap_password=password)
    cid = make_campaign(engine, 16, start=False, variants="A", batch_size=4)
    for step in (2, 3):  # 3 s between steps: time for replies to arrive in between
        sequences.add_step(engine, cid, amount=3, unit=DelayUnit.SECONDS, subject=f"s{step}",
                           body=f"step {step} {{{{ unsubscribe_url }}}}", now=utcnow())
    mailboxes.link(engine, cid, [box])
    campaigns.start(engine, cid)
    # Timed: the auto-replied lead waits until December, so the work never runs dry.
    env = {**env_for(config), "SENDONCE_WORKER_SECONDS": "15"}
    procs = spawn_workers(["scheduler", "scheduler", "send-due", "button"], cid, env)

    # Once step 1 reached the first leads, they answer as people and servers do.
    def step_one() -> list:
        found = [m for m in list(smtp.recorder.messages) if m["Subject"].startswith("A:")]
        return found[:8] if len(found) >= 8 else []

    first = wait_for(step_one, timeout=60)
    leads = [(parseaddr(m["To"])[1], m["Message-ID"]) for m in first]
    replied = leads[:5]
    for email, msg_id in replied:  # a human answer to step 1 (some clients keep only References)
        header = {"In_Reply_To": msg_id} if len(email) % 2 else {"References": msg_id}
        dovecot.deliver(address, message(email, "Dzień dobry, proszę o telefon.", **header))
    away_email, away_id = leads[5]
    dovecot.deliver(address, sample("ooo_pl.eml", away_id))  # back on 15.12.2026: no step until then
    bounced_email, bounced_id = leads[6]
    dsn = sample("dsn_hard_postfix.eml", bounced_id, **{"lead0009@example.com": bounced_email})
    dovecot.deliver(address, dsn)
    wait_all(procs)

    emails = {r.email: r.id for r in rows(engine, Lead)}
    recorded = {}
    for r in rows(engine, InboundMessage, InboundMessage.mailbox_id == box):
        recorded[r.lead_id] = (r.kind, r.created_at)
    expected = {**{emails[e]: "reply" for e, _ in replied}, emails[away_email]: "auto_reply",
                emails[bounced_email]: "bounce_hard"}
    assert {lead: kind for lead, (kind, _) in recorded.items()} == expected  # each message once, matched
    sends = defaultdict(list)
    for row in rows(engine, SendLog, SendLog.campaign_id == cid):
        sends[row.lead_id].append(row)
    for lead, (kind, at) in recorded.items():
        late = [(r.step, r.claimed_at) for r in sends[lead] if r.claimed_at > at]
        assert not late, f"lead {lead}: claimed after its {kind} was recorded at {at}: {late}"
    states = {e.lead_id: e for e in rows(engine, CampaignLead, CampaignLead.campaign_id == cid)}
    assert all(states[emails[e]].state == "stopped" and states[emails[e]].stop_reason == "replied"
               for e, _ in replied)
    assert states[emails[away_email]].due_at.date().isoformat() == "2026-12-15"
    assert {r.email: r.reason for r in rows(engine, Suppression)} == {bounced_email: "bounce"}
    # Everyone else: every step once, in order, through the one mailbox.
    others = set(range(1, 17)) - set(expected)
    assert others and all(sorted(r.step for r in sends[lead]) == [1, 2, 3] for lead in others)
    assert all(r.status == "sent" and r.mailbox_id == box for lead in others for r in sends[lead])
