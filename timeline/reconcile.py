"""Reconcile after a restore: a send log says who was mailed after the backup was taken.

A restored database does not know what went out after its backup. Before a campaign
resumes, a person imports a send log (SendOnce's timeline CSV export taken from the newer
file, or another system's log in the format timeline/legacy_log.py reads) and every
(campaign, lead) found there *with a delivered status* is marked `sent`, with the source
recorded in send_log.decided_by and smtp_reply, so it is never mailed again. Rows that
match no enrollment, or whose status is not a delivery, are listed and never applied.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.engine import Connection

from core.csvfile import neutralized
from models import CampaignLead, EnrollmentState, Lead, SendLog, SendStatus, Trigger
from storage.database import immediate
from timeline import legacy_log
from timeline import live as live_sql

# Status values that mean the mail was handed to the receiving server.
DELIVERED = {"sent", "delivered", "ok", "success", "250", "wysłano", "dostarczono"}
# SendOnce's "it may have gone out": never sent again by itself, a person decides (resolve).
UNCERTAIN = {"unknown"}
WORKER = "reconcile"  # send_log.worker of a row reconcile wrote


@dataclass(frozen=True)
class LogRow:
    """One row of the imported log: where it was, what it names, what it says happened."""

    line: int
    campaign: str
    lead: str  # an address (lower-cased) or a lead id
    status: str  # "" when the log has no status column: every row is a send that went out
    at: datetime  # naive UTC


@dataclass
class Report:
    """What reconcile did (or, in a dry run, would do), row by row where it did not apply."""

    applied: list[tuple[int, int, int]] = field(default_factory=list)  # (line, campaign, lead id)
    uncertain: list[tuple[int, int, int]] = field(default_factory=list)  # marked unknown, same shape
    already_sent: int = 0
    unmatched: list[tuple[int, str]] = field(default_factory=list)  # (line, why)
    not_delivered: list[tuple[int, str]] = field(default_factory=list)  # (line, status)
    rejected: list[tuple[int, str]] = field(default_factory=list)  # unreadable rows


def parse(data: bytes, tz: str = "UTC") -> tuple[list[LogRow], list[tuple[int, str]]]:
    """Read a send log (the formats timeline/legacy_log.py reads, with an optional status
    column) into rows, whatever their status, and the rejected rows."""
    rows, rejections = legacy_log.read_rows(data, tz)
    return ([LogRow(line, event.campaign, event.lead, status.strip().lower(), event.at)
             for line, event, status in rows], [(r.line, r.reason) for r in rejections])


def reconcile(engine: Engine, rows: list[LogRow], source: str, apply: bool = True) -> Report:
    """Mark every delivered (campaign, lead) of the log `sent`, in one write transaction
    (nothing is written when apply is False: a dry run reports the same lists).

    A row SendOnce itself logged as `unknown` (it may have gone out) makes a pending
    enrollment `unknown` too: left pending, the resumed campaign could mail it a second
    time; `unknown`, a person decides with `resolve`, as after any crash.
    """
    report = Report()
    with immediate(engine) as conn:
        for row in rows:
            if row.status in UNCERTAIN:
                _one(conn, row, source, apply, report, EnrollmentState.UNKNOWN)
            elif row.status and row.status not in DELIVERED:
                report.not_delivered.append((row.line, row.status))
            else:
                _one(conn, row, source, apply, report, EnrollmentState.SENT)
    return report


def _one(conn: Connection, row: LogRow, source: str, apply: bool, report: Report,
         target: EnrollmentState) -> None:
    enrollment = _enrollment(conn, row)
    if enrollment is None:
        report.unmatched.append((row.line, f"no enrollment of {row.lead} in campaign {row.campaign}"))
        return
    if enrollment.state == EnrollmentState.SENT:
        report.already_sent += 1
        return
    if target == EnrollmentState.UNKNOWN and enrollment.state != EnrollmentState.PENDING:
        # Already claimed, failed or skipped here: that outcome stands, a person sees it.
        report.not_delivered.append((row.line, f"{row.status} (here: {enrollment.state})"))
        return
    found = (row.line, enrollment.campaign_id, enrollment.lead_id)
    (report.applied if target == EnrollmentState.SENT else report.uncertain).append(found)
    if apply:
        _mark(conn, enrollment, row, source, target)


def _enrollment(conn: Connection, row: LogRow):
    if not row.campaign.isdigit():
        return None
    lead = Lead.email == row.lead if "@" in row.lead else (
        Lead.id == int(row.lead) if row.lead.isdigit() else None)
    if lead is None:
        return None
    cl = CampaignLead
    return conn.execute(
        select(cl.campaign_id, cl.lead_id, cl.state, cl.variant_letter)
        .join(Lead, Lead.id == CampaignLead.lead_id)
        .where(CampaignLead.campaign_id == int(row.campaign), lead)).first()


def _mark(conn: Connection, enrollment, row: LogRow, source: str, target: EnrollmentState) -> None:
    """The enrollment and its send_log row (made if missing) become `sent` (the source as who
    decided) or `unknown` (undecided: the source in the reply), naming the log's line."""
    if target == EnrollmentState.SENT:
        note = {"status": SendStatus.SENT, "sent_at": row.at, "decided_by": f"reconcile:{source}"[:320],
                "smtp_reply": f"reconciled: delivered per {source}, line {row.line}"}
    else:
        note = {"status": SendStatus.UNKNOWN, "sent_at": None, "decided_by": None,
                "smtp_reply": f"reconciled: may have been delivered per {source}, line {row.line}; "
                              "decide with resolve"}
    note["next_attempt_at"] = None
    # An exported log names no step: it reconciles step 1, the campaign's message before #17.
    key = (SendLog.campaign_id == enrollment.campaign_id, SendLog.lead_id == enrollment.lead_id,
           SendLog.step == 1)
    if conn.execute(update(SendLog).where(*key).values(**note)).rowcount == 0:
        conn.execute(insert(SendLog).values(
            campaign_id=enrollment.campaign_id, lead_id=enrollment.lead_id,
            variant_letter=enrollment.variant_letter, attempts=1, trigger=Trigger.CLI, worker=WORKER,
            message_id="", created_at=row.at, claimed_at=row.at, **note))
    conn.execute(update(CampaignLead).where(CampaignLead.campaign_id == enrollment.campaign_id,
                                            CampaignLead.lead_id == enrollment.lead_id)
                 .values(state=target))


# The columns of the timeline page's CSV export (web/timeline.py), which reconcile reads back.
EXPORT_HEADER = ["time", "campaign", "lead", "variant", "status", "trigger", "worker"]


def export_rows(conn: Connection, campaign_id: int | None, tz: str = "UTC") -> Iterator[list[str]]:
    """The sends (status sent or unknown) as the export's rows, times in `tz`, oldest first."""
    zone = ZoneInfo(tz)
    yield EXPORT_HEADER
    for row in live_sql.all_events(conn, live_sql.Scope(campaign_id)):
        at = row.claimed_at.replace(tzinfo=UTC).astimezone(zone)
        yield [at.strftime("%Y-%m-%d %H:%M:%S"), str(row.campaign_id), neutralized(row.email),
               row.variant_letter, row.status, row.trigger, neutralized(row.worker)]
