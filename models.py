"""Typed SQLAlchemy models: the whole state of SendOnce lives in these tables.

Duplicate-proofing is declared here, where a reader looks for it:
- campaign_lead is UNIQUE(campaign_id, lead_id): a lead is enrolled once, with one variant
  for step 1 (a later step's variant is chosen when it is claimed, stored in its row);
- send_log is UNIQUE(campaign_id, lead_id, step, variant_letter) (the incident's fix, per
  step of a sequence) and also UNIQUE(campaign_id, lead_id, step), so even a hand-edited
  variant letter cannot make the database accept a second delivery row of a step. A retry
  updates its row; it never adds one.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from flask_login import UserMixin
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    event,
    inspect,
    select,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from werkzeug.security import check_password_hash, generate_password_hash

from storage import schema
from storage.timeutil import utcnow

# Names for constraints and indexes declared without one, so a migration can refer to them.
# Set before the first migration: databases made by 3a618c4 keep their unnamed UNIQUEs
# (the baseline revision creates them unnamed too); batch migrations that must touch one
# reflect it with this convention (Alembic's "Dealing with Referencing Unnamed Constraints").
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


db = SQLAlchemy(model_class=Base)


class CampaignStatus(enum.StrEnum):
    DRAFT = "draft"
    ACTIVE = "active"
    PAUSED = "paused"
    FINISHED = "finished"
    ARCHIVED = "archived"  # put away by a person; never sends (the claim wants ACTIVE)


class EnrollmentState(enum.StrEnum):
    PENDING = "pending"
    SENDING = "sending"  # claimed; also while its send_log row waits for a retry
    SENT = "sent"
    FAILED = "failed"
    UNKNOWN = "unknown"
    SKIPPED = "skipped"  # suppressed before it was claimed
    STOPPED = "stopped"  # its sequence was stopped (a reply, a person): an accounted end state


class SendStatus(enum.StrEnum):
    SENDING = "sending"
    SENT = "sent"
    RETRY = "retry"
    FAILED = "failed"
    UNKNOWN = "unknown"


class Trigger(enum.StrEnum):
    SCHEDULER = "scheduler"
    BUTTON = "button"
    CLI = "cli"


class MailboxStatus(enum.StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"  # by a person, or by SendOnce (bad credentials, failures in a row): pause_reason


class Mailbox(db.Model):
    """One sender mailbox (#16): who a message is from, how it travels, how much it may send.

    The limits (daily cap with ramp-up, minimum gap) are checked inside the claim
    transaction and count every campaign using the mailbox (sender.py's ledger). Secrets
    (SMTP/IMAP password or XOAUTH2 token) are stored encrypted (storage/secrets.py) and are
    never rendered back.
    """

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")  # the From display name
    address: Mapped[str] = mapped_column(String(320), unique=True)  # normalized
    backend: Mapped[str] = mapped_column(String(16), default="smtp")  # smtp | outbox
    smtp_host: Mapped[str] = mapped_column(String(255), default="localhost")
    smtp_port: Mapped[int] = mapped_column(default=587)
    smtp_security: Mapped[str] = mapped_column(String(16), default="starttls")  # none | starttls | ssl
    smtp_username: Mapped[str] = mapped_column(String(320), default="")
    auth_kind: Mapped[str] = mapped_column(String(16), default="password")  # password | xoauth2
    smtp_secret: Mapped[str | None] = mapped_column(Text, default=None)  # encrypted password or token
    imap_host: Mapped[str] = mapped_column(String(255), default="")
    imap_port: Mapped[int] = mapped_column(default=993)
    imap_security: Mapped[str] = mapped_column(String(16), default="ssl")  # none | starttls | ssl
    imap_username: Mapped[str] = mapped_column(String(320), default="")
    imap_secret: Mapped[str | None] = mapped_column(Text, default=None)  # encrypted
    daily_cap: Mapped[int] = mapped_column(default=50)
    min_gap_seconds: Mapped[int] = mapped_column(default=120)
    # Ramp-up: ramp_start a day on ramp_from's day, + ramp_step each later day, up to daily_cap.
    ramp_start: Mapped[int | None] = mapped_column(default=None)  # None: no ramp-up
    ramp_step: Mapped[int] = mapped_column(default=0)
    ramp_from: Mapped[datetime] = mapped_column(default=utcnow)
    # Whose midnight starts a new day for the cap.
    timezone: Mapped[str] = mapped_column(String(64), default="Europe/Warsaw")
    signature: Mapped[str] = mapped_column(Text, default="")  # the {{ signature }} merge field
    status: Mapped[str] = mapped_column(String(16), default=MailboxStatus.ACTIVE)
    pause_reason: Mapped[str | None] = mapped_column(Text, default=None)
    consecutive_failures: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    # The gap checkpoint: advanced by the claim, like campaign.last_claim_at.
    last_send_at: Mapped[datetime | None] = mapped_column(default=None)
    alert_sender: Mapped[bool] = mapped_column(default=False)  # alerts to the admins go out through it
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)  # a changed mailbox gets a new connection


# Which mailboxes a campaign sends through. A campaign with none sends through the app's
# SMTP_* / MAIL_BACKEND configuration, unlimited by any mailbox (the set-up before #16).
campaign_mailbox = Table(
    "campaign_mailbox", db.metadata,
    Column("campaign_id", Integer, ForeignKey("campaign.id"), primary_key=True),
    Column("mailbox_id", Integer, ForeignKey("mailbox.id"), primary_key=True),
)


class Campaign(db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default=CampaignStatus.DRAFT)
    from_address: Mapped[str] = mapped_column(String(320))
    from_name: Mapped[str] = mapped_column(String(200), default="")
    interval_seconds: Mapped[int] = mapped_column(default=300)
    batch_size: Mapped[int] = mapped_column(default=1)
    daily_cap: Mapped[int | None] = mapped_column(default=None)  # None: no cap
    window_weekdays: Mapped[str] = mapped_column(String(20), default="0,1,2,3,4,5,6")
    window_start_hour: Mapped[int] = mapped_column(default=0)
    window_end_hour: Mapped[int] = mapped_column(default=24)  # exclusive
    timezone: Mapped[str] = mapped_column(String(64), default="Europe/Warsaw")
    # The pacing checkpoint: advanced inside the claim transaction, never after sending.
    last_claim_at: Mapped[datetime | None] = mapped_column(default=None)
    consecutive_failures: Mapped[int] = mapped_column(default=0)
    pause_reason: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Whose public holidays a step's "business days" skip (the `holidays` package).
    country: Mapped[str] = mapped_column(String(2), default="PL", server_default="PL")
    # A reply stops every lead of the replier's company domain too (never a free-mail one).
    stop_company_on_reply: Mapped[bool] = mapped_column(default=False, server_default="0")

    # Step 1's variants: the ones a lead is bound to at enrollment (later steps' are read by
    # core/sequences.py).
    variants: Mapped[list[Variant]] = relationship(
        back_populates="campaign", order_by="Variant.letter", cascade="all, delete-orphan",
        primaryjoin="and_(Campaign.id == Variant.campaign_id, Variant.step == 1)",
    )
    steps: Mapped[list[CampaignStep]] = relationship(
        back_populates="campaign", order_by="CampaignStep.position", cascade="all, delete-orphan"
    )


class DelayUnit(enum.StrEnum):
    HOURS = "hours"
    DAYS = "days"
    SECONDS = "seconds"  # not offered to people: the real-time race tests' short delays


class CampaignStep(db.Model):
    """One message of a campaign's sequence (#17): step n waits `delay` after step n-1 was
    sent to the lead. Step 1 always exists (delay 0); an archived step is skipped."""

    __tablename__ = "campaign_step"
    __table_args__ = (UniqueConstraint("campaign_id", "position", name="uq_campaign_step_position"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaign.id"))
    position: Mapped[int] = mapped_column()  # 1-based
    delay_amount: Mapped[int] = mapped_column(default=0)
    delay_unit: Mapped[str] = mapped_column(String(16), default=DelayUnit.DAYS)
    # Count only the campaign's sending weekdays that are not public holidays of its country.
    business_days: Mapped[bool] = mapped_column(default=False)
    new_thread: Mapped[bool] = mapped_column(default=False)  # False: "Re: step 1" in the same thread
    archived_at: Mapped[datetime | None] = mapped_column(default=None)

    campaign: Mapped[Campaign] = relationship(back_populates="steps")


class Variant(db.Model):
    __table_args__ = (
        UniqueConstraint("campaign_id", "step", "letter", name="uq_variant_campaign_step_letter"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaign.id"))
    step: Mapped[int] = mapped_column(default=1, server_default="1")  # campaign_step.position
    letter: Mapped[str] = mapped_column(String(2))
    subject: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    weight: Mapped[int] = mapped_column(default=1)

    campaign: Mapped[Campaign] = relationship(back_populates="variants")


SEARCH_FIELDS = ("email", "first_name", "last_name", "company", "tags")


def lead_search_text(values: dict[str, Any]) -> str:
    """What lead search matches: the searchable fields case-folded, one per line."""
    # SQLite's LIKE folds ASCII only ("łukasz" missed "Łukasz"): fold in Python, once, when
    # the lead is written; a search then folds its query the same way.
    return "\n".join(str(values.get(name) or "").casefold() for name in SEARCH_FIELDS)


def _search_default(context: Any) -> str:
    return lead_search_text(context.get_current_parameters())


class Lead(db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    # Normalized (trimmed, lower-cased) before insert; see leads.normalize_email.
    email: Mapped[str] = mapped_column(String(320), unique=True)
    first_name: Mapped[str] = mapped_column(String(200), default="")
    last_name: Mapped[str] = mapped_column(String(200), default="")
    company: Mapped[str] = mapped_column(String(200), default="")
    fields: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    tags: Mapped[str] = mapped_column(String(500), default="")  # comma-separated
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # lead_search_text of the row; writers that set a searchable field set it too (the
    # importer, lead edits). Nullable only so an older database can gain it (install_search).
    search: Mapped[str | None] = mapped_column("search", Text, default=_search_default)


class CampaignLead(db.Model):
    __tablename__ = "campaign_lead"
    __table_args__ = (
        UniqueConstraint("campaign_id", "lead_id", name="uq_campaign_lead"),
        Index("ix_campaign_lead_next", "campaign_id", "state", "id"),
        # The claim's "next pending enrollment that is due" lookup walks this index.
        Index("ix_campaign_lead_due", "campaign_id", "state", "due_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaign.id"))
    lead_id: Mapped[int] = mapped_column(ForeignKey("lead.id"))
    # Assigned once at enrollment: the only letter this lead can ever receive.
    variant_letter: Mapped[str] = mapped_column(String(2))
    state: Mapped[str] = mapped_column(String(16), default=EnrollmentState.PENDING)
    enrolled_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Pinned by the lead's first claim and kept for every later message of the campaign
    # (its thread); only a person moves it (core/mailboxes.move_leads). None: not sent yet,
    # or a campaign without mailboxes.
    mailbox_id: Mapped[int | None] = mapped_column(ForeignKey("mailbox.id"), default=None)
    # The step to send next (or in flight), and when it may be claimed (#17): NULL for
    # step 1 (due from enrollment on, whatever a process's clock says), the previous step's
    # sent time + the step's delay for a later one.
    step: Mapped[int] = mapped_column(default=1, server_default="1")
    due_at: Mapped[datetime | None] = mapped_column(default=None)
    # Set by a stop (a reply, a person): never claimed again; its in-flight send ends it STOPPED.
    stopped_at: Mapped[datetime | None] = mapped_column(default=None)
    stop_reason: Mapped[str | None] = mapped_column(String(50), default=None)

    lead: Mapped[Lead] = relationship()


class CampaignStateCount(db.Model):
    """How many enrollments a campaign has in each state, for the dashboard and campaign
    pages. Never written by the application: triggers on campaign_lead keep it (schema.py)."""

    __tablename__ = schema.COUNTS
    __table_args__ = {"sqlite_with_rowid": False}  # ~6 rows a campaign, read by primary key

    campaign_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    state: Mapped[str] = mapped_column(String(16), primary_key=True)
    n: Mapped[int] = mapped_column(default=0)


# Every create_all (init-db, first-run, the tests, bench and chaos set-ups) also installs
# the triggers that keep campaign_state_count, and backfills it on an older database.
event.listen(Base.metadata, "after_create", schema.install_triggers)


def install_search(metadata: Any, conn: Any, **_kw: Any) -> None:
    """The create_all hook for lead.search: fill it in where it is empty (a lead written by
    an older process); the column itself comes with create_all or migration 0005."""
    lead = Lead.__table__
    if "search" not in {column["name"] for column in inspect(conn).get_columns("lead")}:
        return  # a database from before revision 0005: its upgrade adds and fills the column
    rows = conn.execute(select(lead.c.id, *(lead.c[name] for name in SEARCH_FIELDS))
                        .where(lead.c.search.is_(None))).mappings().all()
    if rows:
        conn.execute(update(lead).where(lead.c.id == bindparam("b_id")).values(search=bindparam("b_search")),
                     [{"b_id": row["id"], "b_search": lead_search_text(row)} for row in rows])


event.listen(Base.metadata, "after_create", install_search)


class SendLog(db.Model):
    __tablename__ = "send_log"
    __table_args__ = (
        UniqueConstraint(
            "campaign_id", "lead_id", "step", "variant_letter", name="uq_send_log_campaign_lead_step_variant"
        ),
        UniqueConstraint("campaign_id", "lead_id", "step", name="uq_send_log_campaign_lead_step"),
        Index("ix_send_log_status", "status", "next_attempt_at"),
        Index("ix_send_log_campaign_created", "campaign_id", "created_at"),
        # The timeline's range scans and per-bucket GROUP BYs.
        Index("ix_send_log_campaign_claimed", "campaign_id", "claimed_at"),
        Index("ix_send_log_claimed", "claimed_at"),
        Index("ix_send_log_last_sent", "campaign_id", "status", "sent_at"),  # dashboard's last send
        # A campaign's recent sends and its send log filtered by status, newest first.
        Index("ix_send_log_campaign", "campaign_id"),
        Index("ix_send_log_campaign_status", "campaign_id", "status"),
        # The campaign page's A/B results and reply rates: each (status, letter) counted from
        # this index alone (stats.send_counts: ~5 ms at 100,000 rows a campaign, against
        # ~100 ms reading the rows), one more entry per send.
        Index("ix_send_log_campaign_status_variant", "campaign_id", "status", "variant_letter"),
        # A mailbox's sends today, counted by every claim through it (its daily cap).
        Index("ix_send_log_mailbox_claimed", "mailbox_id", "claimed_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaign.id"))
    lead_id: Mapped[int] = mapped_column(ForeignKey("lead.id"))
    step: Mapped[int] = mapped_column(default=1, server_default="1")  # campaign_step.position
    variant_letter: Mapped[str] = mapped_column(String(2))
    status: Mapped[str] = mapped_column(String(16), default=SendStatus.SENDING)
    attempts: Mapped[int] = mapped_column(default=1)
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=None)
    trigger: Mapped[str] = mapped_column(String(16))
    worker: Mapped[str] = mapped_column(String(200))  # host:pid:random of the last claimer
    lease_epoch: Mapped[int | None] = mapped_column(default=None)
    message_id: Mapped[str] = mapped_column(String(300), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)  # first claim
    claimed_at: Mapped[datetime] = mapped_column(default=utcnow)  # latest claim
    sent_at: Mapped[datetime | None] = mapped_column(default=None)
    smtp_reply: Mapped[str | None] = mapped_column(Text, default=None)
    decided_by: Mapped[str | None] = mapped_column(String(320), default=None)
    mailbox_id: Mapped[int | None] = mapped_column(ForeignKey("mailbox.id"), default=None)  # sent through

    lead: Mapped[Lead] = relationship()


class SchedulerLease(db.Model):
    __tablename__ = "scheduler_lease"

    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200), default="")  # host:pid:random, "" = free
    epoch: Mapped[int] = mapped_column(default=0)  # fencing token; only grows
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)


class ClaimHeartbeat(db.Model):
    """A claim whose process is still working on it: while a send lasts longer than
    HEARTBEAT_SECONDS, its process writes beat_at here (lease.py). The sweep leaves such a
    claim alone, and a person cannot decide it, until the beats stop (sender.py's ledger).
    Keyed like the claim token: a beat of an older attempt vouches for nothing."""

    __tablename__ = "claim_heartbeat"

    send_log_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    worker: Mapped[str] = mapped_column(String(200))
    attempts: Mapped[int] = mapped_column()
    beat_at: Mapped[datetime] = mapped_column()


class AppMeta(db.Model):
    """Facts about this installation, one row each (e.g. installation_id: a random id made
    once, part of every Message-ID so that ids never repeat across installations)."""

    __tablename__ = "app_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class ButtonPress(db.Model):
    """One-time keys of the "Wyślij kampanię" form: a key is consumed by the first claim."""

    __tablename__ = "button_press"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaign.id"))
    pressed_at: Mapped[datetime] = mapped_column(default=utcnow)


class SendRequest(db.Model):
    """A person's "send now" (#14 item 17): recorded by the click, carried out by the
    process that holds the scheduler lease (never a thread in a web worker, which gunicorn
    may kill mid-send). `key` is the form's one-time key: a double click records one request."""

    __tablename__ = "send_request"
    __table_args__ = (Index("ix_send_request_open", "finished_at", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaign.id"))
    requested_by: Mapped[str] = mapped_column(String(320), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    picked_at: Mapped[datetime | None] = mapped_column(default=None)  # a sender started on it
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    sent: Mapped[int] = mapped_column(default=0)
    outcome: Mapped[str] = mapped_column(Text, default="")  # why the batch stopped (Refusal)


class Alert(db.Model):
    """Something a person must know without watching the dashboard (#16): a mailbox paused,
    new `unknown` sends, the scheduler lease unheld, a failed backup. One open alert per
    (kind, key); e-mailed to the admins once, rate-limited (core/alerts.py)."""

    id: Mapped[int] = mapped_column(primary_key=True)
    # mailbox_paused, unknown_sends, lease_unheld, backup_failed
    kind: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(100), default="")  # e.g. the mailbox id
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    emailed_at: Mapped[datetime | None] = mapped_column(default=None)
    cleared_at: Mapped[datetime | None] = mapped_column(default=None)  # resolved, or dismissed by a person


class ReplyKind(enum.StrEnum):
    """What an inbound message is (core/replies.py decides; each kind's effect is there)."""

    REPLY = "reply"  # a person answered: the lead's sequence stops
    AUTO_REPLY = "auto_reply"  # out of office and the like: recorded, not a stop
    BOUNCE_HARD = "bounce_hard"  # 5.x.x: the address is suppressed
    BOUNCE_SOFT = "bounce_soft"  # 4.x.x: recorded only
    UNSUBSCRIBE = "unsubscribe"  # "wypisz mnie" by reply: the address is suppressed
    UNMATCHED = "unmatched"  # a person's mail matching no send: listed for a person
    OTHER = "other"  # our own address writing to itself (a copy of a send, a test)
    DUPLICATE = "duplicate"  # a copy of a message recorded already (same Message-ID header)


class MailboxFolderState(db.Model):
    """The reader's cursor in one folder of a mailbox: UIDs up to last_uid are processed.

    Advanced in each message's own transaction; a new UIDVALIDITY starts it again at 0
    (inbound_message's unique key includes uidvalidity, so old and new UIDs never clash).
    """

    __tablename__ = "mailbox_folder_state"

    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailbox.id"), primary_key=True, autoincrement=False)
    folder: Mapped[str] = mapped_column(String(255), primary_key=True)
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    last_uid: Mapped[int] = mapped_column(BigInteger, default=0)
    read_at: Mapped[datetime | None] = mapped_column(default=None)  # the last read that finished


class InboundMessage(db.Model):
    """One message read from a mailbox over IMAP (#18), recorded once with its effects.

    UNIQUE(mailbox_id, folder, uidvalidity, uid) is written in the same transaction as the
    message's effects and the cursor, so a message is processed exactly once across
    crashes and restarts: a second insert of the same key means "done already".
    """

    __tablename__ = "inbound_message"
    __table_args__ = (
        UniqueConstraint("mailbox_id", "folder", "uidvalidity", "uid"),
        Index("ix_inbound_message_created", "created_at"),  # the Replies page, newest first
        Index("ix_inbound_message_campaign", "campaign_id", "kind"),
        Index("ix_inbound_message_send_log", "send_log_id"),  # the bounce-rate guard
        Index("ix_inbound_message_header", "mailbox_id", "message_id"),  # copies of one message
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(ForeignKey("mailbox.id"))
    folder: Mapped[str] = mapped_column(String(255))
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    uid: Mapped[int] = mapped_column(BigInteger)
    message_id: Mapped[str] = mapped_column(Text, default="")  # the headers, as sent
    in_reply_to: Mapped[str] = mapped_column(Text, default="")
    references: Mapped[str] = mapped_column(Text, default="")
    from_address: Mapped[str] = mapped_column(String(320), default="")  # normalized
    subject: Mapped[str] = mapped_column(Text, default="")
    received_at: Mapped[datetime] = mapped_column()  # the server's INTERNALDATE, naive UTC
    kind: Mapped[str] = mapped_column(String(16))  # ReplyKind
    # The match: the send this message answers (or reports on), its campaign and lead.
    send_log_id: Mapped[int | None] = mapped_column(ForeignKey("send_log.id"), default=None)
    campaign_id: Mapped[int | None] = mapped_column(ForeignKey("campaign.id"), default=None)
    lead_id: Mapped[int | None] = mapped_column(ForeignKey("lead.id"), default=None)
    # Plain text only (HTML converted, the quoted thread cut), shortened; never rendered as HTML.
    snippet: Mapped[str] = mapped_column(Text, default="")
    return_date: Mapped[datetime | None] = mapped_column(default=None)  # an auto-reply's "back on"
    # A person's judgement: interested | not_interested | not_a_reply.
    label: Mapped[str | None] = mapped_column(String(16), default=None)
    labelled_by: Mapped[str | None] = mapped_column(String(320), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Suppression(db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    # A normalized address, or "@domain" for a whole domain (#17: a company, a competitor).
    email: Mapped[str] = mapped_column(String(320), unique=True)
    reason: Mapped[str] = mapped_column(String(50))  # unsubscribed, bounce, manual
    detail: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class User(UserMixin, db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(300))
    language: Mapped[str] = mapped_column(String(5), default="pl")
    failed_logins: Mapped[int] = mapped_column(default=0)
    locked_until: Mapped[datetime | None] = mapped_column(default=None)
    # Part of every session cookie made for this user (get_id): bumping it ends them all
    # (logout, a password change, "log out everywhere"; core/accounts.py).
    session_generation: Mapped[int] = mapped_column(default=0, server_default="0")
    disabled: Mapped[bool] = mapped_column(default=False, server_default="0")  # no login, no session

    def get_id(self) -> str:
        """The session's user key: id and session generation (Flask-Login stores it in the cookie)."""
        return f"{self.id}:{self.session_generation}"

    def set_password(self, password: str) -> None:
        """Store a salted scrypt hash, never the password."""
        self.password_hash = generate_password_hash(password)

    def check_password(self, password: str) -> bool:
        """Compare a candidate password with the stored hash."""
        return check_password_hash(self.password_hash, password)


# The timeline's hourly summary of send_log, kept exact by triggers (storage/schema.py:
# SUMMARY_TRIGGERS); a plain Table, read by timeline/live.py.
timeline_hour = Table(
    schema.SUMMARY, db.metadata,
    Column("campaign_id", Integer, primary_key=True, autoincrement=False),
    Column("hour", String(16), primary_key=True),
    Column("trigger", String(16), primary_key=True),
    # Can fall to 0 (a send deleted or re-queued); readers skip such rows.
    Column("sends", Integer, nullable=False),
    sqlite_with_rowid=False,  # a few rows an hour, always read by key: one B-tree, not two
)


class LegacyLog(db.Model):
    """A send log exported from another sender, parsed once at upload (#15): its analysis,
    buckets and how it was read in `summary`, its events in legacy_event. Never send_log."""

    __tablename__ = "legacy_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # False while its events are being written (in chunks, so claims never wait long for the
    # lock); a crash leaves it False, listed as incomplete, for a person to delete.
    ready: Mapped[bool] = mapped_column(default=False)
    events: Mapped[int] = mapped_column(default=0)
    duplicate_sends: Mapped[int] = mapped_column(default=0)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class LegacyEvent(db.Model):
    """One send of an uploaded legacy log; seq 0 is its newest send, so a page is a seq range."""

    __tablename__ = "legacy_event"
    __table_args__ = (
        Index("ix_legacy_event_at", "log_id", "at"),
        {"sqlite_with_rowid": False},  # read by (log_id, seq) only: one B-tree, not two
    )

    log_id: Mapped[int] = mapped_column(ForeignKey("legacy_log.id", ondelete="CASCADE",
                                                   name="fk_legacy_event_log"), primary_key=True)
    seq: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column()
    campaign: Mapped[str] = mapped_column(String(200))
    lead: Mapped[str] = mapped_column(String(320))
    variant: Mapped[str] = mapped_column(String(50), default="")
    step: Mapped[str] = mapped_column(String(50), default="")
    trigger: Mapped[str] = mapped_column(String(100), default="")
    worker: Mapped[str] = mapped_column(String(200), default="")
    duplicate: Mapped[bool] = mapped_column(default=False)
