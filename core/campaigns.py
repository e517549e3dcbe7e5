"""Campaign life cycle: create, add variants, validate, start, pause, resume.

Start validates every variant against every enrolled lead first: an unknown merge field
or a template error stops the start, so it is reported before the first email, never
half-way through a campaign.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import ColumnElement, Engine, delete, false, func, select, update

from core import leads
from delivery import templating
from models import (
    Campaign,
    CampaignLead,
    CampaignStatus,
    CampaignStep,
    EnrollmentState,
    Lead,
    SendLog,
    Variant,
)
from storage.database import immediate, write_session

MAX_PROBLEMS = 20


class CampaignError(ValueError):
    """A campaign cannot do what was asked; the message says why.

    `code` names the reason for pages that show it in the user's language.
    """

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


def create(engine: Engine, **values: Any) -> int:
    """Create a draft campaign and return its id."""
    with write_session(engine) as session:
        campaign = Campaign(**values)
        campaign.steps = [CampaignStep(position=1, delay_amount=0)]  # every campaign: a sequence of 1+ steps
        session.add(campaign)
        session.flush()
        return campaign.id


def add_variant(engine: Engine, campaign_id: int, letter: str, subject: str, body: str,
                weight: int = 1) -> None:
    """Add a variant; its templates are checked for syntax (and the sandbox) right away."""
    check_variant(letter, subject, body)
    with write_session(engine) as session:
        session.add(Variant(campaign_id=campaign_id, letter=letter.upper(), subject=subject,
                            body=body, weight=weight))


def check_variant(letter: str, subject: str, body: str) -> None:
    """Refuse a bad letter or a template that does not parse (or leaves the sandbox)."""
    if not re.fullmatch(r"[A-Za-z]", letter):  # fullmatch: "A\n" is not a second "A"
        raise CampaignError(f"a variant letter is one letter A-Z, not {letter!r}")
    problems = templating.check(letter, subject, body, _sample_context(), "")
    syntax = [p for p in problems if not p.undefined]  # fields are checked per lead at start
    if syntax:
        raise CampaignError("; ".join(map(str, syntax)))


def _sample_context() -> dict[str, Any]:
    sample = Lead(email="lead@example.com", first_name="Anna", last_name="Nowak",
                  company="Firma", fields={}, tags="")
    return templating.lead_context(sample, templating.SAMPLE_UNSUBSCRIBE_URL)


def validate(engine: Engine, campaign_id: int,
             draft: Variant | None = None) -> list[templating.TemplateProblem]:
    """Render each enrolled lead's own variant; the problems found (at most MAX_PROBLEMS).

    With `draft`, that unsaved variant stands in for its letter, so an edit of a running
    campaign is checked against its leads before it is saved.
    """
    problems: list[templating.TemplateProblem] = []
    with engine.connect() as conn:
        variants = {v.letter: v for v in conn.execute(
            select(Variant.__table__).where(Variant.campaign_id == campaign_id, Variant.step == 1))}
        later = [] if draft is not None else conn.execute(
            select(Variant.__table__).where(Variant.campaign_id == campaign_id, Variant.step > 1)).all()
        if draft is not None:
            variants[draft.letter] = draft
        if not variants:
            return [templating.TemplateProblem("-", "variants", "the campaign has no variant")]
        rows = conn.execute(
            select(Lead.__table__, CampaignLead.variant_letter)
            .join(CampaignLead, CampaignLead.lead_id == Lead.id)
            .where(CampaignLead.campaign_id == campaign_id,
                   *([CampaignLead.variant_letter == draft.letter] if draft else [])))
        for lead in rows:
            context = templating.lead_context(lead, templating.SAMPLE_UNSUBSCRIBE_URL)
            # A later step's variant is chosen when it is due: any lead may get any of them.
            for v in [variants[lead.variant_letter], *later]:
                problems += templating.check(v.letter, v.subject, v.body, context, lead.email)
            if len(problems) >= MAX_PROBLEMS:
                break
    return problems[:MAX_PROBLEMS]


def matching(tag: str | None) -> tuple:
    """The leads enroll_leads takes: all (but erased ones), or those carrying `tag`."""
    conditions = (Lead.email.not_like(leads.ERASED_PREFIX + "%"),)
    if tag:
        conditions += (_carries_tag(tag.strip()),)
    return conditions


def count_enrollable(engine: Engine, campaign_id: int, tag: str | None = None) -> tuple[int, int]:
    """(leads matching `tag` or all, of them not yet in the campaign): what enroll_leads would do."""
    enrolled = select(CampaignLead.lead_id).where(CampaignLead.campaign_id == campaign_id)
    with engine.connect() as conn:
        matched = conn.execute(select(func.count()).select_from(Lead).where(*matching(tag))).scalar_one()
        new = conn.execute(select(func.count()).select_from(Lead).where(
            *matching(tag), Lead.id.not_in(enrolled))).scalar_one()
    return matched, new


def enroll_leads(engine: Engine, campaign_id: int, tag: str | None = None,
                 skip: frozenset[int] | set[int] = frozenset()) -> tuple[int, int]:
    """Enroll every lead (or those carrying `tag`) but `skip`; returns (how many were new, matched)."""
    with engine.connect() as conn:
        ids = [i for i in conn.execute(select(Lead.id).where(*matching(tag)).order_by(Lead.id)).scalars()
               if i not in skip]
    if not _has_variants(engine, campaign_id):
        raise CampaignError("add a variant first: each lead is bound to one variant when enrolled")
    return leads.enroll(engine, campaign_id, ids), len(ids)


def _carries_tag(tag: str) -> ColumnElement[bool]:
    """Leads whose comma-separated tags include exactly `tag` (a set member, not a substring)."""
    if "," in tag or ";" in tag:
        return false()  # tags are stored split at these: no single tag contains one
    # autoescape: "%" and "_" are text, not LIKE wildcards ("%" would match every lead).
    return ("," + Lead.tags + ",").contains(f",{tag},", autoescape=True)


def _has_variants(engine: Engine, campaign_id: int) -> bool:
    with engine.connect() as conn:
        return conn.execute(select(Variant.id).where(Variant.campaign_id == campaign_id)).first() is not None


def start(engine: Engine, campaign_id: int) -> None:
    """Validate, then make the campaign active; raises CampaignError listing the problems."""
    _refuse_without_work(engine, campaign_id)
    problems = validate(engine, campaign_id)
    if problems:
        raise CampaignError("; ".join(map(str, problems)))
    _set_status(engine, campaign_id, CampaignStatus.ACTIVE,
                [CampaignStatus.DRAFT, CampaignStatus.PAUSED, CampaignStatus.FINISHED])


def _refuse_without_work(engine: Engine, campaign_id: int) -> None:
    # A start with nothing to send would only say "finished" a tick later: say why now.
    # (A paused campaign may resume with nothing left: its next tick marks it finished.)
    table = CampaignLead.__table__
    with engine.connect() as conn:
        status = conn.execute(select(Campaign.status).where(Campaign.id == campaign_id)).scalar()
        states = dict(conn.execute(select(table.c.state, func.count())
                                   .where(table.c.campaign_id == campaign_id).group_by(table.c.state)).all())
    if status is None:
        raise CampaignError(f"no campaign {campaign_id}")
    if not states:
        raise CampaignError("no leads are enrolled in this campaign: enroll leads first", "no_leads")
    open_work = states.keys() & {EnrollmentState.PENDING, EnrollmentState.SENDING}
    if not open_work and status != CampaignStatus.PAUSED:
        raise CampaignError("every enrolled lead is already handled (sent, failed, skipped or unknown): "
                            "nothing to send", "nothing_to_send")


def archive(engine: Engine, campaign_id: int) -> None:
    """Put a campaign that is not sending away: off the dashboard, its history kept."""
    _set_status(engine, campaign_id, CampaignStatus.ARCHIVED,
                [CampaignStatus.DRAFT, CampaignStatus.PAUSED, CampaignStatus.FINISHED])


def unarchive(engine: Engine, campaign_id: int) -> None:
    """Bring an archived campaign back, paused (a person resumes it, which validates again)."""
    _set_status(engine, campaign_id, CampaignStatus.PAUSED, [CampaignStatus.ARCHIVED],
                pause_reason="paused by hand")


def duplicate(engine: Engine, campaign_id: int, name: str) -> int:
    """A new draft with the same settings and variants, and no leads; returns its id."""
    settings = ("from_address", "from_name", "interval_seconds", "batch_size", "daily_cap", "window_weekdays",
                "window_start_hour", "window_end_hour", "timezone")
    with write_session(engine) as session:
        source = session.get(Campaign, campaign_id)
        if source is None:
            raise CampaignError(f"no campaign {campaign_id}")
        copy = Campaign(name=name, **{key: getattr(source, key) for key in settings},
                        country=source.country, stop_company_on_reply=source.stop_company_on_reply)
        copy.variants = [Variant(letter=v.letter, subject=v.subject, body=v.body, weight=v.weight)
                         for v in source.variants]
        copy.steps = [CampaignStep(position=s.position, delay_amount=s.delay_amount, delay_unit=s.delay_unit,
                                   business_days=s.business_days, new_thread=s.new_thread)
                      for s in source.steps if s.archived_at is None] or [CampaignStep(position=1)]
        session.add(copy)
        session.flush()
        session.add_all([Variant(campaign_id=copy.id, step=v.step, letter=v.letter, subject=v.subject,
                                 body=v.body, weight=v.weight) for v in session.scalars(select(Variant).where(
                                     Variant.campaign_id == campaign_id, Variant.step > 1))])
        return copy.id


def delete_draft(engine: Engine, campaign_id: int) -> None:
    """Delete a draft that never sent anything, with its variants and enrollments."""
    with immediate(engine) as conn:
        status = conn.execute(select(Campaign.status).where(Campaign.id == campaign_id)).scalar()
        if status != CampaignStatus.DRAFT:
            raise CampaignError(f"campaign {campaign_id} is {status}: only a draft can be deleted",
                                "not_draft")
        if conn.execute(select(SendLog.id).where(SendLog.campaign_id == campaign_id).limit(1)).first():
            raise CampaignError(f"campaign {campaign_id} has sends: archive it instead", "has_sends")
        for table in (CampaignLead.__table__, Variant.__table__, CampaignStep.__table__):
            conn.execute(delete(table).where(table.c.campaign_id == campaign_id))
        conn.execute(delete(Campaign.__table__).where(Campaign.id == campaign_id))


def pause(engine: Engine, campaign_id: int, reason: str = "paused by hand") -> None:
    """Stop claiming for this campaign; a message already claimed still completes."""
    _set_status(engine, campaign_id, CampaignStatus.PAUSED, [CampaignStatus.ACTIVE],
                pause_reason=reason)


def resume(engine: Engine, campaign_id: int) -> None:
    """Resume a paused campaign (validating again: templates or leads may have changed)."""
    start(engine, campaign_id)


def _set_status(engine: Engine, campaign_id: int, status: CampaignStatus,
                allowed_from: list[CampaignStatus], pause_reason: str | None = None) -> None:
    table = Campaign.__table__
    with immediate(engine) as conn:
        current = conn.execute(select(table.c.status).where(table.c.id == campaign_id)).scalar()
        if current is None:
            raise CampaignError(f"no campaign {campaign_id}")
        if current not in allowed_from:
            raise CampaignError(f"campaign {campaign_id} is {current}, cannot become {status}")
        values: dict[str, Any] = {"status": status, "pause_reason": pause_reason}
        if status == CampaignStatus.ACTIVE:
            values["consecutive_failures"] = 0
        conn.execute(update(table).where(table.c.id == campaign_id).values(**values))


def pause_all_active(engine: Engine, reason: str) -> list[int]:
    """Pause every active campaign with `reason` (one transaction); the ids paused."""
    table = Campaign.__table__
    with immediate(engine) as conn:
        return list(conn.execute(
            update(table).where(table.c.status == CampaignStatus.ACTIVE)
            .values(status=CampaignStatus.PAUSED, pause_reason=reason).returning(table.c.id)).scalars())
