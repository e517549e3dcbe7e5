"""The reconciliation: what the database says against what the SMTP server accepted.

Every check names the lead (id and address), the campaign and the rows that broke it.
None depends on timing luck: where an order matters it follows from commits, never from
a guess about how long something takes. A claim's `claimed_at` is taken before its
transaction (so before its commit); a snapshot's time after its read (so after every
commit it shows); ids of inserted rows grow in commit order.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from chaos.store import dicts, is_postgres, rows, snapshot
from storage import schema

FINAL = {"sent", "failed", "skipped", "unknown", "stopped"}
ACCEPTED = {"accepted"}


@dataclass
class Check:
    name: str
    detail: str = ""
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


def ts(value: str | datetime | None) -> float | None:
    """A naive-UTC database timestamp as epoch seconds."""
    if value is None:
        return None
    return as_datetime(value).replace(tzinfo=UTC).timestamp()


def as_datetime(value: str | datetime) -> datetime:
    """A timestamp as the driver gives it (text on SQLite, a datetime on PostgreSQL)."""
    return datetime.fromisoformat(value) if isinstance(value, str) else value


@dataclass
class Evidence:
    """Everything the checks read, loaded once after the run."""

    enrollments: list[dict]
    logs: dict[int, dict]
    emails: dict[int, str]
    suppressions: dict[str, dict]
    campaigns: list[dict]
    integrity: list[str]
    derived: dict[str, tuple[Counter, Counter]]  # table -> (as kept by triggers, recounted)
    events: list[dict]
    kills: dict[int, list[Any]]  # pid -> incidents (SIGKILL)
    host: str
    presses: list[Any]
    snapshots: list[Any]  # actors.Snapshot, in time order
    sightings: dict[int, Any]  # suppression id -> actors.Sighting
    requests: dict[str, list[dict]]  # "send now" requests by their one-time key
    status_changes: list[Any]  # actors.StatusChange by the pauser
    drain_started: float
    # campaign -> its steps (position, delay), in order
    steps: dict[int, list[tuple[int, timedelta]]] = field(default_factory=dict)
    lead_stops: list[Any] = field(default_factory=list)  # actors.LeadStop, by the stopper
    # check 7's name and what it covered: SQLite's PRAGMA, or amcheck on PostgreSQL
    integrity_check: tuple[str, str] = ("PRAGMA integrity_check", "")

    @classmethod
    def load(cls, engine: Engine, events_path: Path, **rest) -> Evidence:
        integrity, integrity_check = _integrity(engine)
        with snapshot(engine) as conn:
            return cls(
                enrollments=dicts(conn, "SELECT * FROM campaign_lead ORDER BY id"),
                logs={r["id"]: r for r in dicts(conn, "SELECT * FROM send_log")},
                emails=dict(rows(conn, "SELECT id, email FROM lead")),
                suppressions={r["email"]: r for r in dicts(conn, "SELECT * FROM suppression")},
                campaigns=dicts(conn, "SELECT * FROM campaign ORDER BY id"),
                integrity=integrity,
                integrity_check=integrity_check,
                derived=_derived(conn),
                requests=_requests(conn),
                steps=_steps(conn),
                events=[json.loads(line) for line in events_path.read_text().splitlines() if line],
                **rest,
            )

    def who(self, campaign_id: int, lead_id: int) -> str:
        return f"lead {lead_id} <{self.emails.get(lead_id, '?')}> in campaign {campaign_id}"

    def accepted(self) -> list[dict]:
        """Campaign messages the server kept: accepted, or delivered and then cut off (alert
        mails to the admins are not campaign mail: they are left out)."""
        return [e for e in self.events if not e.get("alert") and (
            e["ev"] == "accepted" or (e["ev"] == "drop_after_data" and e["delivered"]))]

    def epochs_seen(self) -> dict[int, float]:
        """Each lease epoch and when a snapshot first showed it."""
        seen: dict[int, float] = {}
        for snap in self.snapshots:
            seen.setdefault(snap.epoch, snap.t)
        return seen

    def log_by_step(self) -> dict[tuple[int, int, int], dict]:
        """send_log rows by (campaign, lead, step): the database allows one each."""
        return {(r["campaign_id"], r["lead_id"], r["step"]): r for r in self.logs.values()}

    def last_step(self, campaign_id: int) -> int:
        return max((p for p, _ in self.steps.get(campaign_id, [])), default=1)

    def previous(self, campaign_id: int, position: int) -> tuple[int, timedelta] | None:
        """The step before `position` and `position`'s delay (None for the first step)."""
        steps = self.steps.get(campaign_id, [])
        earlier = [p for p, _ in steps if p < position]
        delay = next((d for p, d in steps if p == position), timedelta(0))
        return (max(earlier), delay) if earlier else None


def check_final_states(ev: Evidence) -> Check:
    """Every enrollment ends in exactly one final state at its step, agreeing with its rows.

    Complete is `sent` at the last step; an earlier step ends the sequence only as failed,
    skipped, unknown or stopped. Every step before the enrollment's was sent; none after it
    was claimed.
    """
    check = Check("every enrollment ends in one final state at its step, agreeing with its rows")
    logs = ev.log_by_step()
    rows_of: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for row in ev.logs.values():
        rows_of[(row["campaign_id"], row["lead_id"])].append(row)
    counts: Counter[str] = Counter()
    at_step: Counter[int] = Counter()
    for e in ev.enrollments:
        c, lead, step, state = e["campaign_id"], e["lead_id"], e["step"], e["state"]
        row = logs.get((c, lead, step))
        counts[state] += 1
        at_step[step] += 1
        expected = _expected_state(row, e["stopped_at"] is not None)
        if step != ev.last_step(c):
            expected.discard("sent")  # sent short of the last step: the lead was never moved on
        if state not in FINAL or state not in expected:
            log_text = (f"send_log {row['id']} {row['status']} ({row['smtp_reply']})" if row
                        else "no send_log row")
            check.violations.append(f"{ev.who(c, lead)}: enrollment {state!r} at step {step}, "
                                    f"{log_text}; expected one of {sorted(expected)}")
        for other in rows_of[(c, lead)]:
            if other["step"] > step:
                check.violations.append(f"{ev.who(c, lead)}: send_log {other['id']} of step {other['step']} "
                                        f"({other['status']}), but the enrollment is at step {step}")
            elif other["step"] < step and other["status"] != "sent":
                check.violations.append(f"{ev.who(c, lead)}: moved on to step {step} while send_log "
                                        f"{other['id']} of step {other['step']} is {other['status']}")
    complete = sum(1 for e in ev.enrollments if e["state"] == "sent")
    check.detail = (f"{len(ev.enrollments)} enrollments: " + ", ".join(
        f"{counts[s]} {s}" for s in ("sent", "stopped", "failed", "skipped", "unknown") if counts[s])
        + f" ({complete} complete); ended at step "
        + ", ".join(f"{p}: {n}" for p, n in sorted(at_step.items())))
    return check


def _expected_state(row: dict | None, stopped: bool) -> set[str]:
    """The states an enrollment may end in, given its row at its current step."""
    if row is None:  # suppressed (or stopped) before this step's claim: no row is written
        return {"skipped", "stopped"} if stopped else {"skipped"}
    status, reply = row["status"], row["smtp_reply"]
    if status == "failed":
        if reply == "suppressed before retry":
            return {"failed", "skipped"}
        return {"failed", "stopped"} if stopped and reply == "stopped before retry" else {"failed"}
    if status == "sent":  # stopped while this step was in flight: it ends stopped
        return {"sent", "stopped"} if stopped else {"sent"}
    return {status} if status == "unknown" else set()


def check_no_pending(ev: Evidence) -> Check:
    """Nothing pending, in flight or waiting for a retry after recover and drain."""
    check = Check("no pending work left (after recover and drain)")
    for e in ev.enrollments:
        if e["state"] in ("pending", "sending"):
            check.violations.append(f"{ev.who(e['campaign_id'], e['lead_id'])}: still {e['state']}")
    for r in ev.logs.values():
        if r["status"] in ("sending", "retry"):
            check.violations.append(f"{ev.who(r['campaign_id'], r['lead_id'])}: send_log {r['id']} "
                                    f"still {r['status']} (attempts {r['attempts']}, worker {r['worker']})")
    check.detail = f"{len(check.violations)} open"
    return check


def check_at_most_once(ev: Evidence) -> Check:
    """The server accepted at most one message per recipient and step in each campaign.

    A message's step is its send_log row's (the Message-ID carries the row's id); one the
    database does not know counts as step "?" (check 3 names it).
    """
    check = Check("SMTP server accepted <= 1 message per (campaign, recipient, step)")
    per_step: dict[tuple[int | None, str, int | str], list[dict]] = defaultdict(list)
    accepted = ev.accepted()
    for e in accepted:
        row = ev.logs.get(e["log_id"])
        per_step[(e["campaign"], e["rcpt"], row["step"] if row is not None else "?")].append(e)
    lead_ids = {email: lead_id for lead_id, email in ev.emails.items()}
    for (campaign_id, rcpt, step), got in sorted(per_step.items(), key=lambda kv: str(kv[0])):
        if len(got) > 1:
            times = ", ".join(f"log {g['log_id']} at {_clock(g['t'])}" for g in got)
            check.violations.append(f"{ev.who(campaign_id, lead_ids.get(rcpt, -1))}: "
                                    f"received {len(got)} messages of step {step} ({times})")
    per_rcpt = Counter(e["rcpt"] for e in accepted)
    steps = Counter(step for _, _, step in per_step)
    check.detail = (f"{len(accepted)} accepted, {len(per_rcpt)} recipients, "
                    + ", ".join(f"step {s}: {n}" for s, n in sorted(steps.items(), key=str))
                    + f"; max per (campaign, recipient, step) {max(map(len, per_step.values()), default=0)}")
    return check


def check_sent_equals_accepted(ev: Evidence) -> Check:
    """send_log `sent` rows are exactly the accepted messages, except explained unknowns."""
    check = Check("send_log sent == accepted by the server (unknown rows aside)")
    by_log: dict[int, list[dict]] = defaultdict(list)
    for e in ev.accepted():
        row = ev.logs.get(e["log_id"])
        if row is None or row["campaign_id"] != e["campaign"]:
            check.violations.append(f"server accepted a message for {e['rcpt']} with unknown "
                                    f"Message-ID campaign {e['campaign']} log {e['log_id']}")
            continue
        if ev.emails.get(row["lead_id"]) != e["rcpt"]:
            check.violations.append(f"{ev.who(row['campaign_id'], row['lead_id'])}: send_log "
                                    f"{row['id']} was delivered to {e['rcpt']}")
        by_log[e["log_id"]].append(e)
    unknown_accepted = 0
    for row in ev.logs.values():
        got = len(by_log.get(row["id"], []))
        status = row["status"]
        if status == "sent" and got != 1:
            check.violations.append(f"{ev.who(row['campaign_id'], row['lead_id'])}: send_log {row['id']} "
                                    f"is sent but the server accepted it {got} times")
        elif status == "unknown":
            unknown_accepted += got
        elif status != "sent" and got:
            check.violations.append(f"{ev.who(row['campaign_id'], row['lead_id'])}: send_log {row['id']} "
                                    f"is {status} ({row['smtp_reply']}) but the server accepted it")
    sent = Counter(r["step"] for r in ev.logs.values() if r["status"] == "sent")
    got = Counter(ev.logs[log_id]["step"] for log_id, v in by_log.items() for _ in v)
    check.detail = (f"{sum(sent.values())} sent rows, {sum(got.values())} accepted "
                    f"({unknown_accepted} of them for unknown rows); per step sent/accepted "
                    + ", ".join(f"{s}: {sent[s]}/{got[s]}" for s in sorted(set(sent) | set(got))))
    return check


def check_step_order(ev: Evidence) -> Check:
    """Step n is first claimed only after step n-1 was sent to that lead and its delay passed.

    Exact: the claim compares its `claimed_at` (taken before its transaction, kept as the
    row's created_at) with the due time its predecessor's outcome stored from `sent_at`.
    """
    check = Check("no step claimed before the previous step was sent and its delay passed")
    logs = ev.log_by_step()
    margins: list[float] = []
    for row in ev.logs.values():
        before = ev.previous(row["campaign_id"], row["step"])
        if before is None:
            continue
        position, delay = before
        prev = logs.get((row["campaign_id"], row["lead_id"], position))
        claimed = as_datetime(row["created_at"])
        if prev is None or prev["status"] != "sent" or prev["sent_at"] is None:
            what = f"send_log {prev['id']} is {prev['status']}" if prev else "there is no row"
            check.violations.append(f"{ev.who(row['campaign_id'], row['lead_id'])}: send_log {row['id']} of "
                                    f"step {row['step']} claimed at {row['created_at']}, but of step "
                                    f"{position} {what}")
            continue
        due = as_datetime(prev["sent_at"]) + delay
        margins.append((claimed - due).total_seconds())
        if claimed < due:
            check.violations.append(f"{ev.who(row['campaign_id'], row['lead_id'])}: send_log {row['id']} of "
                                    f"step {row['step']} claimed at {row['created_at']}, before {due} (step "
                                    f"{position} sent {prev['sent_at']} + {delay.total_seconds():g} s)")
    check.detail = (f"{len(margins)} later-step claims, earliest {min(margins):.3f} s after its due time"
                    if margins else "no later-step claims")
    return check


def check_stops(ev: Evidence) -> Check:
    """Nothing claimed or retried for a lead after a person's stop of its sequence committed.

    Read after the stop committed: the newest send_log id and the enrollment's rows with
    their attempts. A row with a larger id is a claim after the stop; more attempts, a
    retry after it. Exact: no time is compared.
    """
    check = Check("nothing claimed or retried for a lead after its stop")
    enrollments = {(e["campaign_id"], e["lead_id"]): e for e in ev.enrollments}
    rows_of: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for row in ev.logs.values():
        rows_of[(row["campaign_id"], row["lead_id"])].append(row)
    checked = 0
    for stop in ev.lead_stops:
        if stop.ended is None or stop.attempts is None:
            continue  # no answer: it may not have committed
        key = (stop.campaign_id, stop.lead_id)
        checked += 1
        what = f"its stop at {_clock(stop.ended)}"
        for row in rows_of[key]:
            if row["id"] > stop.max_log_id:
                check.violations.append(f"{ev.who(*key)}: send_log {row['id']} of step {row['step']} "
                                        f"({row['status']}) was claimed after {what}")
            elif row["attempts"] > stop.attempts.get(row["id"], row["attempts"]):
                check.violations.append(f"{ev.who(*key)}: send_log {row['id']} of step {row['step']} was "
                                        f"retried (attempt {row['attempts']}) after {what}")
        enrollment = enrollments.get(key)
        if stop.stopped and (enrollment is None or enrollment["stopped_at"] is None):
            check.violations.append(f"{ev.who(*key)}: stopped at {_clock(stop.ended)}, but no stop is "
                                    "recorded")
    stopped = Counter(e["state"] for e in ev.enrollments if e["stopped_at"] is not None)
    check.detail = (f"{checked} stops checked; enrollments with a stop end " + (", ".join(
        f"{n} {s}" for s, n in stopped.most_common()) or "none"))
    return check


def check_unknown_explained(ev: Evidence) -> Check:
    """Each `unknown` row: its process was SIGKILLed after the claim, or DATA was cut off."""
    check = Check("every unknown explained by a SIGKILL of its process or a drop after DATA")
    drops = {e["log_id"]: e for e in ev.events if e["ev"] == "drop_after_data"}
    why: Counter[str] = Counter()
    for row in ev.logs.values():
        if row["status"] != "unknown":
            continue
        claimed = ts(row["claimed_at"])
        drop = drops.get(row["id"])
        host, _, rest = row["worker"].partition(":")
        pid = int(rest.split(":")[0]) if rest.split(":")[0].isdigit() else -1
        kills = [k for k in ev.kills.get(pid, []) if host == ev.host and k.t >= claimed]
        if drop is not None and drop["t"] >= claimed:
            why["drop after DATA"] += 1
        elif kills:
            why[f"SIGKILL of {kills[0].role}"] += 1
        else:
            check.violations.append(
                f"{ev.who(row['campaign_id'], row['lead_id'])}: send_log {row['id']} unknown "
                f"({row['smtp_reply']}), claimed {row['claimed_at']} by {row['worker']} "
                f"[{row['trigger']}], attempts {row['attempts']}; no kill of pid {pid} after the "
                f"claim and no drop after DATA for it")
    total = sum(why.values()) + len(check.violations)
    check.detail = f"{total} unknown: " + (", ".join(f"{n} {k}" for k, n in why.most_common()) or "none")
    return check


def check_suppressed(ev: Evidence) -> Check:
    """No claim, and so no message, for an address after its suppression committed.

    The snapshot that first showed a suppression also read that lead's send_log rows and
    their attempts. Later, a row with a larger id than the snapshot's newest is a first
    claim that should have been skipped, and a row with more attempts is a retry that
    should have been refused. Exact: no time is compared.
    """
    check = Check("suppressed addresses got nothing after suppression (any step)")
    lead_ids = {email: lead_id for lead_id, email in ev.emails.items()}
    rows_by_lead: dict[int, list[dict]] = defaultdict(list)
    for row in ev.logs.values():
        rows_by_lead[row["lead_id"]].append(row)
    in_flight = unseen = 0
    for email, sup in ev.suppressions.items():
        lead_id = lead_ids.get(email)
        sight = ev.sightings.get(sup["id"])
        if sight is None:
            unseen += 1
            continue
        what = f"suppressed ({sup['reason']}: {sup['detail']}) before {_clock(sight.snapshot.t)}"
        for row in rows_by_lead.get(lead_id, []):
            if row["id"] > sight.snapshot.max_log_id:
                check.violations.append(f"{ev.who(row['campaign_id'], lead_id)}: send_log {row['id']} "
                                        f"({row['status']}) was claimed after the address was {what}")
            elif row["attempts"] > sight.attempts.get(row["id"], row["attempts"]):
                check.violations.append(
                    f"{ev.who(row['campaign_id'], lead_id)}: send_log {row['id']} ({row['status']}) was "
                    f"retried (attempt {row['attempts']}) after the address was {what}")
            elif row["status"] == "sent" and ts(row["sent_at"]) > ts(sup["created_at"]):
                in_flight += 1
    bounced = sum(1 for e in ev.events if e["ev"] == "bounce")
    unchecked = f"; {unseen} not seen by a snapshot, not checked" if unseen else ""
    check.detail = (f"{len(ev.suppressions)} suppressed ({bounced} 550s given); {in_flight} sends were "
                    f"already in flight{unchecked}")
    return check


def check_paused(ev: Evidence) -> Check:
    """No message claimed for a campaign while it was paused.

    Two snapshots that both show the campaign paused, with no resume asked for in
    between, bracket a stretch in which it was paused throughout; a send_log row of that
    campaign whose id falls between the two snapshots' newest ids was claimed in it.
    """
    check = Check("no first claim while the campaign was paused")
    resumes: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for change in ev.status_changes:
        if change.action == "resume":  # may have committed anywhere in [started, ended]
            resumes[change.campaign_id].append((change.started, change.ended or float("inf")))
    ids_by_campaign: dict[int, list[int]] = defaultdict(list)  # sorted: bisect finds a range
    for log_id in sorted(ev.logs):
        ids_by_campaign[ev.logs[log_id]["campaign_id"]].append(log_id)
    covered = 0.0
    for a, b in zip(ev.snapshots, ev.snapshots[1:], strict=False):
        for campaign_id, status in b.statuses.items():
            if status != "paused" or a.statuses.get(campaign_id) != "paused":
                continue
            if any(start <= b.t and end >= a.t0 for start, end in resumes[campaign_id]):
                continue  # a resume may have committed in between
            covered += b.t - a.t
            if b.max_log_id == a.max_log_id:
                continue
            ids = ids_by_campaign[campaign_id]
            for log_id in ids[bisect_right(ids, a.max_log_id):bisect_right(ids, b.max_log_id)]:
                row = ev.logs[log_id]
                check.violations.append(
                    f"{ev.who(campaign_id, row['lead_id'])}: send_log {log_id} [{row['trigger']}, "
                    f"{row['worker']}] claimed between {_clock(a.t)} and {_clock(b.t)}, while the "
                    f"campaign was paused")
    pauses = sum(1 for c in ev.status_changes if c.action == "pause" and c.ok)
    check.detail = f"{pauses} pauses by hand; first claims checked over {covered:.0f} campaign-seconds paused"
    return check


def check_integrity(ev: Evidence) -> Check:
    """PRAGMA integrity_check says ok (on PostgreSQL: amcheck finds no corruption)."""
    name, covered = ev.integrity_check
    check = Check(name)
    if ev.integrity not in (["ok"], ["n/a"]):
        check.violations = [f"integrity_check: {line}" for line in ev.integrity]
    check.detail = "; ".join(ev.integrity)[:200] + (f" ({covered})" if covered else "")
    return check


AMCHECK = "amcheck: tables and B-tree indexes free of corruption"


def _integrity(engine: Engine) -> tuple[list[str], tuple[str, str]]:
    """Check 7's lines ("ok" alone if all is well; "n/a" if nothing could check) and its
    name and scope.

    SQLite: PRAGMA integrity_check. PostgreSQL has no such statement; its contrib module
    amcheck (in Debian's server package) is the counterpart: verify_heapam reads every
    table's pages, bt_index_check with heapallindexed every B-tree index -- send_log's
    unique keys among them, the at-most-once guard -- and that it holds every table row.
    """
    if not is_postgres(engine):
        with snapshot(engine) as conn:
            return [r[0] for r in rows(conn, "PRAGMA integrity_check")], ("PRAGMA integrity_check", "")
    with engine.connect() as conn:
        if not rows(conn, "SELECT 1 FROM pg_available_extensions WHERE name = 'amcheck'"):
            return ["n/a"], (AMCHECK, "on PostgreSQL without the amcheck extension: nothing checked")
        conn.execute(text("CREATE EXTENSION IF NOT EXISTS amcheck"))
        conn.commit()
        tables = [r[0] for r in rows(conn, "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n "
                                           "ON n.oid = c.relnamespace WHERE n.nspname = 'public' "
                                           "AND c.relkind = 'r' ORDER BY 1")]
        indexes = [r[0] for r in rows(conn, "SELECT c.oid::regclass::text FROM pg_index i JOIN pg_class c "
                                            "ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam "
                                            "JOIN pg_namespace n ON n.oid = c.relnamespace "
                                            "WHERE n.nspname = 'public' AND a.amname = 'btree' ORDER BY 1")]
        found = [f"{table}: block {block}, offset {offset}: {msg}" for table in tables
                 for block, offset, msg in rows(conn, "SELECT blkno, offnum, msg FROM "
                                                      "verify_heapam(CAST(:t AS regclass))", t=table)]
        for index in indexes:
            try:
                with conn.begin_nested():
                    rows(conn, "SELECT bt_index_check(CAST(:i AS regclass), true)", i=index)
            except DBAPIError as exc:
                found.append(f"{index}: {exc.orig}")
        conn.commit()
    return found or ["ok"], (AMCHECK, f"verify_heapam on {len(tables)} tables, bt_index_check "
                                      f"(heapallindexed) on {len(indexes)} indexes")


# Tables kept by triggers, each beside the GROUP BY it must equal (zero counts dropped):
# the dashboard's enrollment counts by counted state (schema.py) and the timeline's hourly sends
# (timeline_summary.py). Written in the same statement as the rows they count, they must
# match after any number of SIGKILLs mid-transaction.
_DERIVED = {
    "campaign_state_count": (
        "SELECT campaign_id, state, n FROM campaign_state_count WHERE n != 0", schema.RECOUNT),
    "timeline_hour": (
        'SELECT campaign_id, hour, "trigger", sends FROM timeline_hour WHERE sends != 0',
        "SELECT campaign_id, {hour}, \"trigger\", count(*) FROM send_log "
        "WHERE status IN ('sent', 'unknown') GROUP BY 1, 2, 3"),
}


def _steps(conn: Connection) -> dict[int, list[tuple[int, timedelta]]]:
    """Each campaign's steps that are not archived, in order, with their delays in seconds.

    The chaos run uses delays in seconds only; a step without a row is step 1 (no delay).
    """
    found: dict[int, list[tuple[int, timedelta]]] = defaultdict(list)
    for row in dicts(conn, "SELECT campaign_id, position, delay_amount, delay_unit FROM campaign_step "
                           "WHERE archived_at IS NULL ORDER BY campaign_id, position"):
        if row["delay_unit"] != "seconds" and row["position"] > 1:
            raise ValueError(f"campaign {row['campaign_id']} step {row['position']}: the chaos checks "
                             f"read delays in seconds, not {row['delay_unit']}")
        found[row["campaign_id"]].append((row["position"], timedelta(seconds=row["delay_amount"])))
    return dict(found)


def _requests(conn: Connection) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = defaultdict(list)
    for row in dicts(conn, "SELECT * FROM send_request"):
        found[row["key"]].append(row)
    return found


def _derived(conn: Connection) -> dict[str, tuple[Counter, Counter]]:
    def counts(sql: str) -> Counter:
        return Counter({tuple(row[:-1]): row[-1] for row in rows(conn, sql)})

    hour = schema.hour_sql("claimed_at", conn).replace(":", "\\:")  # a colon in text() starts a parameter
    return {table: (counts(kept), counts(live.format(hour=hour))) for table, (kept, live) in _DERIVED.items()}


def check_derived_counts(ev: Evidence) -> Check:
    """The trigger-kept tables equal a recount of the rows they summarize."""
    check = Check("trigger-kept counts equal a recount (dashboard, timeline)")
    for table, (kept, live) in ev.derived.items():
        for key in sorted(set(kept) | set(live), key=str):
            if kept[key] != live[key]:
                check.violations.append(f"{table} {key}: kept {kept[key]}, recounted {live[key]}")
    check.detail = ", ".join(f"{table}: {len(kept)} rows, {sum(kept.values())} counted"
                             for table, (kept, _) in ev.derived.items())
    return check


def check_double_submits(ev: Evidence) -> Check:
    """A one-time key recorded one "send now" request, however many times it was POSTed, and
    a POST the server answered was not lost (its key's request exists).

    The click only records the request (send_request, UNIQUE key); the lease holder sends its
    one batch, and the key is consumed by that batch's first claim (button_press).
    """
    check = Check("a button key records one request and sends at most one batch (double submits)")
    by_key: dict[str, list[Any]] = defaultdict(list)
    for press in ev.presses:
        by_key[press.key].append(press)
    repeated = 0
    for key, presses in by_key.items():
        if len(presses) > 1:
            repeated += 1
        rows = ev.requests.get(key, [])
        if len(rows) > 1:
            check.violations.append(f"key {key} of campaign {presses[0].campaign_id} recorded "
                                    f"{len(rows)} requests ({', '.join(p.kind for p in presses)})")
        if not rows and any(p.status == 302 for p in presses):
            check.violations.append(f"key {key} of campaign {presses[0].campaign_id}: answered, "
                                    "but no request was recorded")
        refused = sorted({p.status for p in presses if p.status not in (None, 302)})
        if refused:  # a refused button records nothing: the run would not test double submits
            check.violations.append(f"key {key} of campaign {presses[0].campaign_id}: POST answered "
                                    f"HTTP {', '.join(map(str, refused))}, not a redirect")
    answered = sum(1 for p in ev.presses if p.status is not None)
    served = sum(1 for rows in ev.requests.values() for r in rows if r["picked_at"])
    check.detail = (f"{len(ev.presses)} POSTs ({answered} answered), {repeated} keys POSTed "
                    f"twice, {len(ev.requests)} requests recorded, {served} carried out")
    return check


def check_fencing(ev: Evidence) -> Check:
    """Scheduler claims: one process per lease epoch, none after a newer epoch was seen."""
    check = Check("lease fencing: no claim under an epoch after it was taken over")
    workers: dict[int, set[str]] = defaultdict(set)
    seen = sorted(ev.epochs_seen().items())
    for row in ev.logs.values():
        epoch = row["lease_epoch"]
        if epoch is None:
            continue
        workers[epoch].add(row["worker"])
        later = [t for e, t in seen if e > epoch]
        claimed = ts(row["claimed_at"])
        if later and claimed >= min(later):
            check.violations.append(
                f"{ev.who(row['campaign_id'], row['lead_id'])}: send_log {row['id']} claimed at "
                f"{row['claimed_at']} under epoch {epoch} by {row['worker']}, after a newer epoch "
                f"was seen at {_clock(min(later))}")
    for epoch, names in sorted(workers.items()):
        if len(names) > 1:
            check.violations.append(f"epoch {epoch} claimed by {len(names)} processes: {sorted(names)}")
    check.detail = f"{len(seen)} epochs seen, {len(workers)} epochs with claims"
    return check


def check_pins(ev: Evidence) -> Check:
    """Every step's message went through the mailbox its lead is pinned to (never moved silently)."""
    check = Check("each lead's messages (every step) went through its pinned mailbox")
    pinned = {(e["campaign_id"], e["lead_id"]): e["mailbox_id"] for e in ev.enrollments}
    for row in ev.logs.values():
        pin = pinned.get((row["campaign_id"], row["lead_id"]))
        if row["mailbox_id"] != pin:
            check.violations.append(f"{ev.who(row['campaign_id'], row['lead_id'])}: step {row['step']} "
                                    f"(send_log {row['id']}) went through mailbox "
                                    f"{row['mailbox_id']}, pinned to {pin}")
    check.detail = (f"{len(ev.logs)} rows of {len({r['step'] for r in ev.logs.values()})} steps, "
                    f"{len({r['mailbox_id'] for r in ev.logs.values()})} mailboxes used")
    return check


def _clock(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S.%f")[:-3]


def run_checks(ev: Evidence) -> list[Check]:
    """All checks, in the order the table prints them."""
    return [check_final_states(ev), check_at_most_once(ev), check_sent_equals_accepted(ev),
            check_unknown_explained(ev), check_no_pending(ev), check_suppressed(ev),
            check_integrity(ev), check_double_submits(ev), check_fencing(ev), check_paused(ev),
            check_derived_counts(ev), check_pins(ev), check_step_order(ev), check_stops(ev)]
