"""Sequences (#17): a campaign's steps, their delays, stops, and the checks around enrolling.

Step 1 is what a campaign always had; step n > 1 becomes due for a lead `delay` after its
step n-1 was sent (sender.py moves the enrollment on in the transaction that stores
`sent`). A step's delay counts hours or days, optionally only business days: the
campaign's sending weekdays that are not public holidays of its country (the `holidays`
package). A stop (a reply, a person) ends a lead's sequence: it is never claimed again,
and a send in flight ends it `stopped` instead of moving it on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import holidays
from sqlalchemy import Engine, and_, delete, func, insert, or_, select, update
from sqlalchemy.engine import Connection

from core import campaigns
from core.campaigns import CampaignError
from models import (
    Campaign,
    CampaignLead,
    CampaignStatus,
    CampaignStep,
    DelayUnit,
    EnrollmentState,
    Lead,
    SendLog,
    SendStatus,
    Variant,
)
from storage.database import immediate

_step = CampaignStep.__table__
_enrollment = CampaignLead.__table__
_campaign = Campaign.__table__
_log = SendLog.__table__
_lead = Lead.__table__
_variant = Variant.__table__

FREEMAIL = frozenset(
    line.strip().lower() for line in
    (Path(__file__).with_name("data") / "freemail_domains.txt").read_text(encoding="utf-8").splitlines()
    if line.strip() and not line.startswith("#"))
# What a person may ask for: a follow-up more than a year later is a typo.
MAX_DELAY = {DelayUnit.DAYS: 365, DelayUnit.HOURS: 24 * 365, DelayUnit.SECONDS: 86_400 * 365}
_MAX_WALK = 3660  # days walked looking for business days before the calendar is judged empty
STOP_REASONS = ("replied", "company_replied", "person", "unsubscribed", "bounced")


# --- delays ------------------------------------------------------------------------


@lru_cache(maxsize=128)
def _holidays(country: str, year: int) -> frozenset[date]:
    return frozenset(holidays.country_holidays(country, years=year).keys())


def is_business_day(day: date, weekdays: frozenset[int], country: str) -> bool:
    """A sending weekday of the campaign that is not a public holiday of its country."""
    return day.weekday() in weekdays and day not in _holidays(country, day.year)


def parse_weekdays(text: str) -> frozenset[int]:
    """The campaign's window_weekdays ("0,1,2,3,4", 0 = Monday) as a set."""
    return frozenset(int(d) for d in text.split(",") if d.strip()) or frozenset(range(7))


def due_after(sent_at: datetime, amount: int, unit: str, business_days: bool, weekdays: str,
              timezone: str, country: str) -> datetime:
    """When a step with this delay becomes due after the previous one was sent (naive UTC).

    Business days are counted in the campaign's time zone: "1 day" after Friday 10:00 is
    Monday 10:00 for a Monday-Friday campaign, Tuesday if Monday is a holiday.
    """
    if unit == DelayUnit.SECONDS:
        return sent_at + timedelta(seconds=amount)
    if not business_days:
        return sent_at + (timedelta(days=amount) if unit == DelayUnit.DAYS else timedelta(hours=amount))
    days, zone = parse_weekdays(weekdays), ZoneInfo(timezone)
    local = sent_at.replace(tzinfo=UTC).astimezone(zone)
    if unit == DelayUnit.DAYS:
        day = local.date()
        for _ in range(_walk(amount)):
            if amount == 0:
                break
            day += timedelta(days=1)
            amount -= is_business_day(day, days, country)
        moment = datetime.combine(day, local.time(), zone)
    else:
        moment = local
        for _ in range(_walk(amount) * 24):
            if amount == 0:
                break
            moment = (moment.astimezone(UTC) + timedelta(hours=1)).astimezone(zone)
            amount -= is_business_day(moment.date(), days, country)
    if amount:
        raise CampaignError("the campaign's calendar has no business days to count", "no_business_days")
    return moment.astimezone(UTC).replace(tzinfo=None)


def _walk(amount: int) -> int:
    return amount * 7 + _MAX_WALK


def parse_delay(text: str) -> tuple[int, str]:
    """"3d" -> (3, days), "36h" -> (36, hours); the CLI's --after."""
    match = re.fullmatch(r"\s*(\d+)\s*([dh])\s*", text or "")
    if not match:
        raise CampaignError(f"a delay is a number of days or hours, like 3d or 36h, not {text!r}",
                            "bad_delay")
    return int(match.group(1)), DelayUnit.DAYS if match.group(2) == "d" else DelayUnit.HOURS


def check_delay(amount: int, unit: str) -> None:
    """Refuse an unknown unit or an out-of-range amount, saying why."""
    if unit not in MAX_DELAY:
        raise CampaignError(f"a delay's unit is days or hours, not {unit!r}", "bad_delay")
    if not 0 <= amount <= MAX_DELAY[unit]:
        raise CampaignError(f"a delay is 0 to {MAX_DELAY[unit]} {unit}", "bad_delay")


def next_step(conn: Connection, campaign_id: int, after: int):
    """The first step after position `after` that is not archived (a row), or None."""
    return conn.execute(select(_step).where(_step.c.campaign_id == campaign_id, _step.c.position > after,
                                            _step.c.archived_at.is_(None))
                        .order_by(_step.c.position).limit(1)).first()


# --- editing the sequence --------------------------------------------------------------


def ensure_first_step(conn: Connection, campaign_id: int) -> None:
    """Give a campaign its step 1 (no delay) if it has none."""
    first = select(_step.c.id).where(_step.c.campaign_id == campaign_id, _step.c.position == 1)
    if conn.execute(first).first():
        return
    conn.execute(insert(_step).values(campaign_id=campaign_id, position=1, delay_amount=0,
                                      delay_unit=DelayUnit.DAYS, business_days=False, new_thread=False))


@dataclass(frozen=True)
class Added:
    position: int
    reopened: int  # complete leads given the new step (a finished campaign reopened)


def reopen_count(engine: Engine, campaign_id: int) -> int:
    """How many complete leads a reopened finished campaign would give a new step."""
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(_enrollment)
                            .where(*_complete(campaign_id))).scalar_one()


def _complete(campaign_id: int) -> tuple:
    return (_enrollment.c.campaign_id == campaign_id, _enrollment.c.state == EnrollmentState.SENT,
            _enrollment.c.stopped_at.is_(None))


def add_step(engine: Engine, campaign_id: int, *, amount: int, unit: str, subject: str, body: str,
             business_days: bool = False, new_thread: bool = False, letter: str = "A", weight: int = 1,
             reopen: bool = False, now: datetime) -> Added:
    """Append a step with its first variant; leads neither complete nor stopped get it.

    A finished campaign is reopened only with `reopen`: its complete leads go back to
    pending at the new step, due their last send + the delay, and the campaign is active.
    """
    check_delay(amount, unit)
    campaigns.check_variant(letter, subject, body)
    with immediate(engine) as conn:
        status = conn.execute(select(_campaign.c.status).where(_campaign.c.id == campaign_id)).scalar()
        if status is None:
            raise CampaignError(f"no campaign {campaign_id}", "no_campaign")
        if status == CampaignStatus.FINISHED and not reopen:
            count = conn.execute(select(func.count()).select_from(_enrollment)
                                 .where(*_complete(campaign_id))).scalar_one()
            raise CampaignError(f"campaign {campaign_id} is finished: adding a step reopens it and sends the "
                                f"new step to {count} leads who got every step; confirm with --reopen",
                                "needs_reopen")
        ensure_first_step(conn, campaign_id)
        position = conn.execute(select(func.max(_step.c.position))
                                .where(_step.c.campaign_id == campaign_id)).scalar_one() + 1
        conn.execute(insert(_step).values(campaign_id=campaign_id, position=position, delay_amount=amount,
                                          delay_unit=unit, business_days=business_days,
                                          new_thread=new_thread))
        conn.execute(insert(_variant).values(campaign_id=campaign_id, step=position, letter=letter.upper(),
                                             subject=subject, body=body, weight=weight))
        reopened = _reopen(conn, campaign_id, position) if status == CampaignStatus.FINISHED else 0
    return Added(position, reopened)


def _reopen(conn: Connection, campaign_id: int, position: int) -> int:
    campaign = conn.execute(select(_campaign).where(_campaign.c.id == campaign_id)).one()
    step = conn.execute(select(_step).where(_step.c.campaign_id == campaign_id,
                                            _step.c.position == position)).one()
    last_sent = (select(_log.c.lead_id, func.max(_log.c.sent_at).label("at"))
                 .where(_log.c.campaign_id == campaign_id).group_by(_log.c.lead_id).subquery())
    rows = conn.execute(select(_enrollment.c.id, last_sent.c.at).outerjoin(
        last_sent, last_sent.c.lead_id == _enrollment.c.lead_id).where(*_complete(campaign_id))).all()
    for enrollment_id, at in rows:
        due = due_after(at or datetime(2000, 1, 1), step.delay_amount, step.delay_unit, step.business_days,
                        campaign.window_weekdays, campaign.timezone, campaign.country)
        conn.execute(update(_enrollment).where(_enrollment.c.id == enrollment_id).values(
            state=EnrollmentState.PENDING, step=position, due_at=due))
    conn.execute(update(_campaign).where(_campaign.c.id == campaign_id)
                 .values(status=CampaignStatus.ACTIVE, consecutive_failures=0, pause_reason=None))
    return len(rows)


def set_step_variant(engine: Engine, campaign_id: int, position: int, letter: str, subject: str, body: str,
                     weight: int = 1) -> None:
    """Add or replace a later step's variant; takes effect for messages not claimed yet."""
    campaigns.check_variant(letter, subject, body)
    if position == 1:
        raise CampaignError("step 1's variants are the campaign's own: use `campaign variant`", "step_one")
    with immediate(engine) as conn:
        _existing_step(conn, campaign_id, position)
        where = (_variant.c.campaign_id == campaign_id, _variant.c.step == position,
                 _variant.c.letter == letter.upper())
        changed = update(_variant).where(*where).values(subject=subject, body=body, weight=weight)
        if conn.execute(changed).rowcount:
            return
        conn.execute(insert(_variant).values(campaign_id=campaign_id, step=position, letter=letter.upper(),
                                             subject=subject, body=body, weight=weight))


def _existing_step(conn: Connection, campaign_id: int, position: int):
    row = conn.execute(select(_step).where(_step.c.campaign_id == campaign_id,
                                           _step.c.position == position)).first()
    if row is None:
        raise CampaignError(f"campaign {campaign_id} has no step {position}", "no_step")
    return row


def archive_step(engine: Engine, campaign_id: int, position: int, now: datetime) -> int:
    """Skip a step from now on; leads waiting for it move to the next step (or complete).

    Returns how many waiting leads moved. A lead whose message of this step is in flight
    keeps it. Step 1 cannot be archived (pause or archive the campaign instead).
    """
    if position == 1:
        raise CampaignError("step 1 cannot be archived: pause the campaign instead", "step_one")
    with immediate(engine) as conn:
        _existing_step(conn, campaign_id, position)
        conn.execute(update(_step).where(_step.c.campaign_id == campaign_id, _step.c.position == position,
                                         _step.c.archived_at.is_(None)).values(archived_at=now))
        return _skip_waiting(conn, campaign_id, position)


def remove_step(engine: Engine, campaign_id: int, position: int) -> None:
    """Delete a step nobody got yet; one that some lead got is refused (archive it instead)."""
    if position == 1:
        raise CampaignError("step 1 cannot be removed", "step_one")
    with immediate(engine) as conn:
        _existing_step(conn, campaign_id, position)
        got = conn.execute(select(func.count()).select_from(_log).where(
            _log.c.campaign_id == campaign_id, _log.c.step == position)).scalar_one()
        if got:
            raise CampaignError(f"{got} leads already got step {position}: it cannot be removed; archive it "
                                "instead (archived steps are skipped)", "step_sent")
        _skip_waiting(conn, campaign_id, position)
        conn.execute(delete(_variant).where(_variant.c.campaign_id == campaign_id,
                                            _variant.c.step == position))
        conn.execute(delete(_step).where(_step.c.campaign_id == campaign_id, _step.c.position == position))


def _skip_waiting(conn: Connection, campaign_id: int, position: int) -> int:
    # Called with the step already archived (or about to be deleted): next_step skips it.
    later = conn.execute(select(_step.c.position).where(
        _step.c.campaign_id == campaign_id, _step.c.position > position,
        _step.c.archived_at.is_(None)).order_by(_step.c.position).limit(1)).scalar()
    waiting = (_enrollment.c.campaign_id == campaign_id, _enrollment.c.step == position,
               _enrollment.c.state == EnrollmentState.PENDING)
    values: dict[str, Any] = {"step": later} if later else {"state": EnrollmentState.SENT}
    return conn.execute(update(_enrollment).where(*waiting).values(**values)).rowcount


# --- stops ---------------------------------------------------------------------------


def stop(engine: Engine, campaign_id: int | None, lead_id: int, reason: str, now: datetime) -> int:
    """A person's "stop": end the lead's sequence in one campaign (None: in every campaign).

    Returns how many enrollments it stopped. Waiting ones become `stopped` at once; one in
    flight ends `stopped` when its outcome is stored; a failed or unknown one stays for a
    person to decide, and deciding it moves it on to nothing.
    """
    with immediate(engine) as conn:
        where = [_enrollment.c.lead_id == lead_id]
        if campaign_id is not None:
            where.append(_enrollment.c.campaign_id == campaign_id)
        return _stop(conn, and_(*where), reason, now)


def _stop(conn: Connection, where, reason: str, now: datetime) -> int:
    fresh = and_(where, _enrollment.c.stopped_at.is_(None),
                 _enrollment.c.state != EnrollmentState.SKIPPED)
    waiting = conn.execute(update(_enrollment).where(fresh, _enrollment.c.state == EnrollmentState.PENDING)
                           .values(state=EnrollmentState.STOPPED, stopped_at=now,
                                   stop_reason=reason)).rowcount
    other = conn.execute(update(_enrollment).where(fresh)
                         .values(stopped_at=now, stop_reason=reason)).rowcount
    return waiting + other


def email_domain(email: str) -> str:
    """The part after the last @, lower-cased ("" for none)."""
    return email.rpartition("@")[2].strip().lower() if "@" in email else ""


def stop_for_reply(conn: Connection, campaign_id: int, lead_id: int, now: datetime) -> int:
    """The reply reader's stop (inside its transaction): the lead replied to this campaign.

    With the campaign's stop_company_on_reply, every lead of the same company domain in
    the campaign stops too, never for a free-mail domain (core/data/freemail_domains.txt).
    """
    stopped = _stop(conn, and_(_enrollment.c.campaign_id == campaign_id, _enrollment.c.lead_id == lead_id),
                    "replied", now)
    company = conn.execute(select(_campaign.c.stop_company_on_reply)
                           .where(_campaign.c.id == campaign_id)).scalar()
    email = conn.execute(select(_lead.c.email).where(_lead.c.id == lead_id)).scalar() or ""
    domain = email_domain(email)
    if not company or not domain or domain in FREEMAIL:
        return stopped
    colleagues = select(_lead.c.id).where(_lead.c.email.endswith("@" + domain, autoescape=True))
    return stopped + _stop(conn, and_(_enrollment.c.campaign_id == campaign_id,
                                      _enrollment.c.lead_id.in_(colleagues)), "company_replied", now)


def delay_until(conn: Connection, campaign_id: int, lead_id: int, until: datetime) -> int:
    """An auto-reply's return date (inside the reader's transaction): the lead's next step
    waits until then, never sooner than its own delay; how many enrollments were delayed."""
    return conn.execute(update(_enrollment).where(
        _enrollment.c.campaign_id == campaign_id, _enrollment.c.lead_id == lead_id,
        _enrollment.c.state == EnrollmentState.PENDING, _enrollment.c.stopped_at.is_(None),
        or_(_enrollment.c.due_at.is_(None), _enrollment.c.due_at < until)).values(due_at=until)).rowcount


# --- enrolling ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Elsewhere:
    lead_id: int
    email: str
    campaign_id: int
    campaign_name: str


def active_elsewhere(engine: Engine, campaign_id: int, tag: str | None = None,
                     limit: int | None = None) -> tuple[int, list[Elsewhere]]:
    """Leads enroll_leads would take that are active (waiting or in flight, not stopped) in
    another campaign: (how many leads, the first `limit` of them with that campaign)."""
    active = and_(_enrollment.c.campaign_id != campaign_id, _enrollment.c.stopped_at.is_(None),
                  _enrollment.c.state.in_([EnrollmentState.PENDING, EnrollmentState.SENDING]))
    base = (select(Lead.id, Lead.email, _campaign.c.id, _campaign.c.name)
            .join(_enrollment, _enrollment.c.lead_id == Lead.id)
            .join(_campaign, _campaign.c.id == _enrollment.c.campaign_id)
            .where(active, *campaigns.matching(tag)))
    with engine.connect() as conn:
        count = conn.execute(select(func.count(func.distinct(base.subquery().c.id)))).scalar_one()
        rows = conn.execute(base.order_by(Lead.email, _campaign.c.id).limit(limit)).all()
    return count, [Elsewhere(*row) for row in rows]


# --- reading ------------------------------------------------------------------------------


@dataclass
class StepView:
    position: int
    delay_amount: int
    delay_unit: str
    business_days: bool
    new_thread: bool
    archived: bool
    variants: list[Any] = field(default_factory=list)  # rows: letter, weight, subject
    counts: dict[str, int] = field(default_factory=dict)  # sent, waiting, stopped, failed, unknown
    by_variant: dict[str, dict[str, int]] = field(default_factory=dict)  # letter -> status -> n


COUNTED = ("sent", "waiting", "stopped", "failed", "unknown")


def steps(conn: Connection, campaign_id: int) -> list[StepView]:
    """The campaign's steps in order, each with its variants and per-step counts."""
    views = {row.position: StepView(row.position, row.delay_amount, row.delay_unit, row.business_days,
                                    row.new_thread, row.archived_at is not None)
             for row in conn.execute(select(_step).where(_step.c.campaign_id == campaign_id)
                                     .order_by(_step.c.position))}
    if 1 not in views:  # a campaign made before its steps were (always one step)
        views[1] = StepView(1, 0, DelayUnit.DAYS, False, False, False)
    for view in views.values():
        view.counts = dict.fromkeys(COUNTED, 0)
    for row in conn.execute(select(_variant.c.step, _variant.c.letter, _variant.c.weight, _variant.c.subject)
                            .where(_variant.c.campaign_id == campaign_id)
                            .order_by(_variant.c.step, _variant.c.letter)):
        if row.step in views:
            views[row.step].variants.append(row)
    for position, letter, status, n in conn.execute(
            select(_log.c.step, _log.c.variant_letter, _log.c.status, func.count())
            .where(_log.c.campaign_id == campaign_id)
            .group_by(_log.c.step, _log.c.variant_letter, _log.c.status)):
        if position in views and status in (SendStatus.SENT, SendStatus.FAILED, SendStatus.UNKNOWN):
            views[position].counts[status] += n
            views[position].by_variant.setdefault(letter, dict.fromkeys(COUNTED, 0))[status] += n
    for position, state, n in conn.execute(
            select(_enrollment.c.step, _enrollment.c.state, func.count())
            .where(_enrollment.c.campaign_id == campaign_id,
                   _enrollment.c.state.in_([EnrollmentState.PENDING, EnrollmentState.STOPPED]))
            .group_by(_enrollment.c.step, _enrollment.c.state)):
        if position in views:
            views[position].counts["waiting" if state == EnrollmentState.PENDING else "stopped"] += n
    return [views[p] for p in sorted(views)]


@dataclass(frozen=True)
class Event:
    kind: str  # sent, failed, unknown, retry, sending, due, waiting, stopped, complete
    step: int | None
    at: datetime | None
    detail: str = ""


def lead_timeline(conn: Connection, campaign_id: int, lead_id: int) -> list[Event]:
    """What happened to one lead in the campaign, step by step, and what comes next."""
    events = [Event(row.status, row.step, row.sent_at or row.claimed_at, row.variant_letter)
              for row in conn.execute(select(_log)
                                      .where(_log.c.campaign_id == campaign_id, _log.c.lead_id == lead_id)
                                      .order_by(_log.c.step))]
    enrollment = conn.execute(select(_enrollment).where(_enrollment.c.campaign_id == campaign_id,
                                                        _enrollment.c.lead_id == lead_id)).first()
    if enrollment is None:
        return events
    if enrollment.stopped_at is not None:
        events.append(Event("stopped", enrollment.step, enrollment.stopped_at, enrollment.stop_reason or ""))
    elif enrollment.state == EnrollmentState.PENDING:
        events.append(Event("due" if enrollment.due_at else "waiting", enrollment.step, enrollment.due_at))
    elif enrollment.state == EnrollmentState.SENT:
        events.append(Event("complete", None, None))
    return events
