"""The sending engine: claim in one BEGIN IMMEDIATE transaction, send, record the outcome.
(On PostgreSQL the same transaction under storage.database's locks: P33.)

THE GUARANTEES LEDGER. Every promise SendOnce makes (P1…), the code that keeps it, and
the tests that fail if it breaks (in tests/; "races" = test_races.py, "holes" =
test_promise_holes.py, "machine" = test_state_machine.py). README.md links here.

P1  A claim reads, decides and writes in one BEGIN IMMEDIATE transaction: two claimers queue, never
    interleave
    kept by:   `claim_next` on storage.database.immediate/transaction
    proven by: test_claim::test_claims_run_under_begin_immediate,
               ::test_claim_holds_the_write_lock_from_its_first_statement;
               races::test_eight_processes_mixing_ticks_cron_and_button_send_each_lead_once
P2  One send_log row per (campaign, lead): the database refuses a second (also per variant, the incident's
    key)
    kept by:   models.SendLog UNIQUE constraints; a retry updates its own row
    proven by: test_schema::test_db_rejects_second_row_*; test_claim::test_retry_reuses_its_row
P3  Pacing, daily cap, send window, pause and (ticks) the lease are checked inside the claim
    kept by:   `_check_campaign`, lease.fence in `claim_next`
    proven by: test_claim::test_interval_allows_one_claim_per_interval,
               ::test_button_bypasses_interval_and_window_but_not_pause_or_cap,
               ::test_daily_cap_resets_at_local_midnight
P4  A replaced lease holder sends nothing (fencing epoch)
    kept by:   lease.fence in the claim; lease.is_current right before SMTP
    proven by: races::test_frozen_lease_holder_sends_nothing_after_takeover;
               test_lease::test_fence_rejects_an_old_epoch_and_an_expired_lease
P5  A double click, a replayed POST or two tabs send one batch
    kept by:   the click records one request per key (send_request.key UNIQUE, core/send_requests);
               `_consume_key` (one-time key, primary key) in the request's first claim
    proven by: test_claim::test_one_time_key_lets_one_batch_through;
               test_web::test_double_submit_of_the_send_button_records_one_request_and_sends_one_batch;
               test_send_requests::test_two_tabs_posting_one_key_at_once_record_one_request;
               test_browser::test_double_click_without_javascript_still_sends_one_batch
P6  The hot-reloader's watcher and extra workers cannot double-send
    kept by:   the lease + claims (never "one scheduler")
    proven by: races::test_reloader_watcher_never_ticks,
               ::test_incident_replayed_two_gunicorn_workers_with_schedulers
P7  A claim taken away before SMTP is never sent (re-check right before SMTP)
    kept by:   `_read_for_send`, `_release`
    proven by: test_claim::test_a_claim_taken_away_before_smtp_is_not_sent_and_goes_back_to_retry
P8  A stale claimer never overwrites a newer outcome or a person's decision
    kept by:   the claim token `_OURS` (row, worker, attempt) on every outcome write
    proven by: test_claim::test_a_late_release_does_not_undo_a_persons_decision; machine
P9  `unknown` is never re-sent automatically; a crash leaves `unknown`, not a loss
    kept by:   `recover`; `_take_retry` takes only `retry` rows
    proven by: races::test_worker_killed_after_claim_leaves_unknown_and_is_not_resent;
               test_smtp_faults::test_disconnect_after_data_is_unknown_and_never_resent
P10 No final dot after the send's deadline (counted from the claim): a frozen or slow claimer cannot deliver
    late
    kept by:   delivery.transport (`_arm` before every command, last right before the dot); Claim.deadline
    proven by: holes::test_no_data_is_sent_once_the_deadline_has_passed,
               ::test_send_again_while_the_claimer_is_frozen_in_smtp_delivers_once
P11 STALE_SENDING_SECONDS cannot be set below what a send may last
    kept by:   transport.stale_floor, checked by app._finish_config
    proven by: holes::test_a_stale_limit_below_its_floor_is_refused_at_start
P12 The sweep leaves a claim alone while its process heartbeats it
    kept by:   lease.track/beat (per-process random identity), `recover`
    proven by: holes::test_the_sweep_leaves_a_heartbeaten_claim_alone,
               ::test_a_claim_of_an_older_attempt_does_not_vouch_for_the_row
P13 A person cannot "send again" / "mark as sent" while the claimer may still deliver
    kept by:   `resolve_unknown` + `decidable_at` (stale limit passed and heartbeat stale), in its own BEGIN
               IMMEDIATE
    proven by: holes::test_no_decision_while_the_claimer_heartbeats_even_if_its_row_looks_abandoned,
               ::test_a_fresh_claim_cannot_be_decided_before_its_stale_limit,
               ::test_the_send_log_page_says_wait_while_the_claim_is_heartbeaten; machine
P14 A late "not sent" (4xx, deadline, hand-back) never strands a lead: it is re-queued and a finished
    campaign wakes up
    kept by:   `_requeued` from `_store_in` and `_put_back`; `_finish_if_done` waits for unknown rows that
               may still report
    proven by: holes::test_a_retryable_answer_after_the_sweep_is_sent_once_not_stranded;
               machine::test_the_issues_interleavings
P15 Every enrollment ends accounted (sent, failed, skipped, unknown), after any interleaving
    kept by:   all of the above
    proven by: machine::test_no_interleaving_sends_twice_or_strands_a_lead; test_chaos
P16 A known SMTP outcome survives a busy database
    kept by:   `_until_stored` (waits out writers up to the stale limit; the token makes the retry safe)
    proven by: test_smtp_faults::test_a_known_outcome_waits_out_a_writer_stalled_past_busy_timeout,
               ::test_an_answer_left_for_the_next_claim_is_stored_even_when_that_claim_fails
P17 4xx and failures before DATA retry on the same row with backoff; 5xx fail; 5xx at RCPT suppresses
    kept by:   transport `_by_code`, `_store_in`
    proven by: test_smtp_faults::test_transient_421_and_451_are_retried_on_the_same_row_then_sent_once,
               ::test_permanent_550_on_recipient_fails_and_suppresses,
               ::test_transient_failures_give_up_after_max_attempts
P18 A broken sender (bad credentials, failures in a row, a template that breaks) pauses the campaign and
    burns no lead
    kept by:   `_count_failures`; `attempt` (config_error, RETRY)
    proven by: test_smtp_faults::test_wrong_credentials_pause_the_campaign_with_the_reason,
               ::test_consecutive_failures_pause_the_campaign,
               ::test_a_template_that_breaks_mid_campaign_pauses_it_and_loses_no_lead
P19 Suppressed (unsubscribed, bounced) addresses are never mailed, not even on retry
    kept by:   the suppression join in `_NEXT_PENDING` / `_NEXT_RETRY`
    proven by: test_claim::test_suppressed_address_is_skipped_and_accounted,
               ::test_retry_of_an_address_suppressed_meanwhile_is_not_sent;
               test_messages::test_unsubscribed_lead_is_never_sent
P20 Message-IDs are globally unique and the same on every attempt of a row
    kept by:   messages.message_id (installation id + random part), stored by the claim
    proven by: test_messages::test_message_ids_differ_across_installations_with_the_same_ids,
               ::test_a_reused_row_id_gets_a_new_message_id_and_a_retry_keeps_its_own
P21 Request sessions only read; every write is a short BEGIN IMMEDIATE
    kept by:   storage.database.forbid_writes / write_session
    proven by: test_claim (write lock); test_web pages under concurrent sends
P22 A process whose code and the database's schema revision differ (behind or ahead), or a database
    being restored, claims nothing, whatever triggered the claim
    kept by:   storage.migrate.claim_gate, read inside every claim transaction (nothing cached)
    proven by: test_migrations::test_every_trigger_refuses_to_claim_on_a_schema_revision_it_does_not_know,
               ::test_an_old_worker_left_running_claims_nothing_once_the_schema_is_newer;
               test_backup::test_back_up_send_more_restore_reconcile_resume_every_lead_gets_exactly_one
P23 A "send now" request is sent by the lease holder only, once; one whose process died mid-batch is
    ended "interrupted", never re-run
    kept by:   scheduler.Ticker.serve_requests (lease, `send_requests.pick` conditional), the key spent by
               the first claim (P5), `recover` for the claim in flight (P9)
    proven by: test_send_requests::test_a_request_whose_process_is_killed_mid_batch_ends_interrupted*,
               ::test_a_process_that_does_not_hold_the_lease_leaves_the_request_alone

P24 A mailbox never sends more than its cap today (with ramp-up) nor sooner than its minimum gap after its
    previous claim, counted over every campaign and process using it; the button skips a campaign's
    interval, never a mailbox's cap or gap
    kept by:   `_ready_mailboxes` and the mailbox checkpoint, inside `claim_next`
    proven by: test_mailbox_engine::test_cap_and_gap_hold_across_campaigns_sharing_a_mailbox,
               ::test_the_button_skips_the_campaign_interval_but_not_the_mailbox_gap_or_cap,
               ::test_ramp_up_raises_the_cap_day_by_day;
               races::test_processes_racing_on_four_mailboxes_keep_every_cap_and_gap_and_pin
P25 A lead keeps the mailbox of its first claim (its retries, its later steps); only a person moves it
    kept by:   campaign_lead.mailbox_id and send_log.mailbox_id set by the claim; the mailbox filter in
               `_take_retry` / `_take_pending`; core.mailboxes.move_leads
    proven by: test_mailbox_engine::test_a_retry_goes_out_through_the_pinned_mailbox_only,
               ::test_leads_of_a_paused_mailbox_wait_and_move_only_when_a_person_moves_them;
               races::test_processes_racing_on_four_mailboxes_keep_every_cap_and_gap_and_pin
P26 A broken mailbox (bad credentials, failures in a row) pauses alone; its leads wait, the others go on
    kept by:   `_count_failures` (per mailbox when the claim has one)
    proven by: test_mailbox_engine::test_bad_credentials_pause_that_mailbox_only;
               races::test_processes_racing_on_four_mailboxes_keep_every_cap_and_gap_and_pin

P27 One send_log row per (campaign, lead, step) of a sequence: the database refuses a second (per
    variant too); two steps are two messages, never a duplicate in the timeline
    kept by:   models.SendLog UNIQUE(campaign_id, lead_id, step[, variant_letter]) (revision 0008)
    proven by: test_schema::test_db_rejects_second_row_for_the_same_step_of_a_sequence;
               test_sequences::test_two_steps_of_a_lead_are_not_duplicates_in_the_timeline
P28 Step n+1 is claimed only after step n is `sent` to that lead and its delay has passed (business days:
    the campaign's weekdays minus its country's public holidays), checked inside the claim; a `failed`
    or `unknown` step stops the lead's sequence until a person decides ("mark as sent" moves it on)
    kept by:   `_advance` in the outcome's transaction (state, step, due_at); the due walks of
               `_take_pending`; core.sequences.due_after; `resolve_unknown`
    proven by: test_sequences::test_steps_go_out_in_order_each_once_and_never_before_their_delay,
               ::test_business_days_skip_the_weekend_and_polish_holidays,
               ::test_the_engine_counts_business_days_from_the_sent_time,
               ::test_an_unknown_step_stops_the_sequence_until_a_person_decides;
               machine::test_no_interleaving_of_steps_stops_and_outcomes_breaks_a_sequence;
               test_sequence_races::test_processes_racing_a_three_step_sequence_send_each_step_once_in_order_after_its_delay,
               ::test_worker_killed_mid_step_two_leaves_it_unknown_and_step_three_is_never_sent
P29 A stopped lead (replied, a person's stop) is never claimed again; a stop recorded while its message
    is in flight ends it `stopped`; its retry is not retried; a suppressed domain is never mailed
    kept by:   `stopped_at IS NULL` and the state in `_NEXT_PENDING`, `_advance`, `_take_retry`,
               `_SUPPRESSED` (address or "@domain"); core.sequences.stop / stop_for_reply
    proven by: test_sequences::test_a_stopped_lead_is_never_claimed,
               ::test_a_stop_recorded_while_the_step_is_in_flight_ends_the_lead_stopped,
               ::test_a_retry_of_a_stopped_lead_is_not_retried,
               ::test_a_suppressed_domain_is_skipped_inside_the_claim,
               ::test_a_reply_stops_the_company_but_never_a_freemail_domain;
               machine::test_no_interleaving_of_steps_stops_and_outcomes_breaks_a_sequence;
               test_sequence_races::test_processes_racing_a_three_step_sequence_send_each_step_once_in_order_after_its_delay
P30 A campaign is not finished while a lead waits for a later step; a decision, a late `sent` or a
    reopened campaign that gives a lead a step wakes a finished campaign
    kept by:   `_finish_if_done` (pending counts as open), `resolve_unknown`, `_store_in` (`_requeued`),
               core.sequences.add_step(reopen)
    proven by: test_sequences::test_steps_go_out_in_order_each_once_and_never_before_their_delay,
               ::test_a_finished_campaign_reopens_for_a_new_step_only_when_confirmed,
               ::test_an_unknown_step_stops_the_sequence_until_a_person_decides,
               ::test_a_late_sent_after_the_campaign_finished_wakes_it_for_the_next_step;
               machine::test_no_interleaving_of_steps_stops_and_outcomes_breaks_a_sequence
P31 A follow-up goes from the lead's pinned mailbox as a reply in its thread ("Re: " + the step-1 subject
    the lead got, In-Reply-To the previous step, References all earlier ones) unless its step says new
    thread; a later step's variant is chosen once (weighted, per lead and step) and kept in its row
    kept by:   `_thread` in `_read_for_send`, `_compose`; pick_variant in `_take_pending`; the mailbox
               pin (P24)
    proven by: test_sequences::test_a_follow_up_replies_in_the_thread_of_step_one,
               ::test_a_follow_up_goes_out_through_the_leads_pinned_mailbox_only,
               ::test_a_new_thread_step_has_its_own_subject_and_no_reply_headers,
               ::test_a_later_steps_variant_is_chosen_once_per_lead_by_its_weights;
               test_sequence_races::test_processes_racing_a_three_step_sequence_send_each_step_once_in_order_after_its_delay
P32 A reply, auto-reply or bounce the reader has recorded stops (or, with a return date, delays) every later
    claim of its lead: the effect is written in the same transaction as the message's record, read inside
    the claim; the lease holder reads the mailboxes before it claims; each IMAP message is processed once
    kept by:   core.replies (`_apply`: sequences.stop_for_reply, delay_until, suppress), the unique key on
               inbound_message, scheduler `safe_tick` / `send-due` reading first
    proven by: test_reply_races::test_no_follow_up_is_claimed_after_a_recorded_reply_or_bounce;
               test_replies_imap::test_a_reader_killed_between_fetch_and_commit_loses_and_repeats_nothing,
               ::test_a_permanent_dsn_suppresses_the_address_and_every_campaign_skips_it
P33 On PostgreSQL (#19) every promise above holds with the same code: a writer takes the advisory write lock
    exclusively (BEGIN IMMEDIATE's meaning); a claim and the outcome it stores take it shared and lock what
    they decide on first (campaign rows, their mailboxes' rows, the lease FOR SHARE, the enrollment FOR
    UPDATE SKIP LOCKED), in one order; ids come from sequences; 40001/40P01/55P03 are "busy"
    kept by:   storage.database (`immediate`/`transaction` modes, `lock_claim_rows`, `update_then_next_id`,
               `is_busy`),
               `_lock_rows`, lease `_fence_shared`
    proven by: test_postgres::test_claims_of_different_campaigns_run_in_parallel_and_of_one_campaign_queue,
               ::test_a_writer_waits_for_claims_in_flight_and_claims_wait_for_a_writer;
               races::test_buttons_racing_in_six_processes_keep_the_daily_cap,
               ::test_schedulers_on_two_hosts_take_over_only_after_the_lease_runs_out;
               and every test marked `postgres` (make test's second run)

A mailbox's limits cost nothing on a crash: its checkpoint (last_send_at) and the row that
counts against its cap are written by the claim transaction itself, so a crash can only
leave a mailbox under its cap (a claimed row that was never sent still counts), never over.

How a crash at each step leaves the data:
- during the claim transaction: rolled back, nothing happened;
- after the claim committed, before SMTP finished: the row stays `sending`; `recover`
  turns it into `unknown` once its claim is past the stale limit, or its pid is gone
  from this host, and no heartbeat of the claim is fresh. Nothing re-sends it on its own;
  a person decides, and only once the claimer can no longer deliver (ledger above);
- after SMTP, before the outcome is recorded: the same, `unknown`;
- during the outcome transaction: rolled back, so again `sending` -> `unknown`.
In a batch the outcome of message n is written by the transaction that claims message
n+1 (one commit, one fsync, per message). That changes none of the above: the pair
commits or rolls back whole, a crash before it leaves n `sending` -> `unknown` and n+1
unclaimed, and if the claim fails (busy, an error) the batch stores n's outcome alone.

What a late outcome may do to an `unknown` row (its claimer was frozen or slow past the
sweep; the claim token still matches): `sent` and `failed` are knowledge and replace the
guess; a retryable answer or a hand-back means certainly not delivered, so the row goes
back to `retry` and its campaign, if `finished`, becomes active again (never stranded).
The one window no software closes: a claimer frozen between its last deadline check and
the write of the final dot (a few instructions) could still deliver after waking.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, func, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError

from core import mailboxes, sequences
from core.leads import pick_variant
from core.suppressions import suppress
from delivery import lease as leases
from delivery import messages, templating
from delivery.tokens import unsubscribe_url
from delivery.transport import Result, Transport, send_deadline
from models import (
    AppMeta,
    ButtonPress,
    Campaign,
    CampaignLead,
    CampaignStatus,
    ClaimHeartbeat,
    EnrollmentState,
    Lead,
    Mailbox,
    MailboxStatus,
    SendLog,
    SendStatus,
    Trigger,
    campaign_mailbox,
)
from storage.database import (
    CLAIM,
    as_datetime,
    email_domain_sql,
    immediate,
    insert_for,
    is_busy,
    is_postgres,
    lock_claim_rows,
    reading,
    run_sql,
    transaction,
    update_then_next_id,
)
from storage.migrate import claim_gate
from storage.timeutil import utcnow

log = logging.getLogger(__name__)

_campaign = Campaign.__table__
_enrollment = CampaignLead.__table__
_log = SendLog.__table__
_lead = Lead.__table__
_press = ButtonPress.__table__
_beat = ClaimHeartbeat.__table__
_meta = AppMeta.__table__
_mailbox = Mailbox.__table__

_FINAL_STATE = {
    SendStatus.SENT: EnrollmentState.SENT,
    SendStatus.FAILED: EnrollmentState.FAILED,
    SendStatus.UNKNOWN: EnrollmentState.UNKNOWN,
    SendStatus.RETRY: EnrollmentState.SENDING,
}
# Suppressed enrollments skipped inside one claim before it gives the lock back.
_SKIP_LIMIT = 200


@dataclass(frozen=True)
class Settings:
    base_url: str
    secret_key: str
    lease_seconds: float = 120
    stale_seconds: float = 300  # a `sending` row older than this is `unknown`
    max_attempts: int = 5
    retry_base_seconds: float = 60
    pause_after_failures: int = 5
    send_deadline: float = 120  # claim to final dot, at most (transport.send_deadline)
    heartbeat_seconds: float = 5  # a claim in flight longer than this is heartbeaten

    @property
    def heartbeat_stale(self) -> float:
        """A claim's heartbeat older than this says its process stopped working on it."""
        return 3 * self.heartbeat_seconds

    @classmethod
    def from_config(cls, config: Any) -> Settings:
        """Engine settings from a Flask config mapping."""
        return cls(
            base_url=config["BASE_URL"],
            secret_key=config["SECRET_KEY"],
            lease_seconds=float(config["LEASE_SECONDS"]),
            stale_seconds=float(config["STALE_SENDING_SECONDS"]),
            max_attempts=int(config["MAX_ATTEMPTS"]),
            retry_base_seconds=float(config["RETRY_BASE_SECONDS"]),
            pause_after_failures=int(config["PAUSE_AFTER_FAILURES"]),
            send_deadline=send_deadline(float(config["SMTP_TIMEOUT"])),
            heartbeat_seconds=float(config["HEARTBEAT_SECONDS"]),
        )


@dataclass(frozen=True)
class Claim:
    send_log_id: int
    campaign_id: int
    lead_id: int
    variant_letter: str
    attempts: int
    worker: str
    message_id: str  # the same on every attempt of this row; stored with the outcome
    deadline: float = math.inf  # time.monotonic(): the final dot is never sent after it
    mailbox_id: int | None = None  # sent through; None: the app's configured transport
    step: int = 1  # the campaign step (#17) this row sends


@dataclass(frozen=True)
class Refusal:
    """Why a claim took nothing: code is stable (for UI messages), detail is for people."""

    code: str  # not_active, lease_lost, not_due, outside_window, daily_cap, nothing_due, finished,
    #            already_pressed, schema_mismatch, maintenance, mailbox_limit, mailboxes_paused;
    #            for a person's decision: not_unknown, still_sending
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}" if self.detail else self.code


@dataclass
class BatchResult:
    outcomes: list[tuple[Claim, Result]] = field(default_factory=list)
    stopped_by: Refusal | None = None

    @property
    def sent(self) -> int:
        return sum(1 for _, r in self.outcomes if r.status == SendStatus.SENT)


# --- the hot path's SQL ---------------------------------------------------------------
# Every message runs these statements, the claim's under the write lock that all
# processes queue for. They are SQL text run by database.run_sql on the sqlite3
# connection beneath the SQLAlchemy one (same transaction): Core costs ~90 us a
# statement against ~13 us, and that difference, paid under the lock, was most of the
# engine's cost per claim. Rare paths (retry bookkeeping, fencing, pausing) stay in Core.


def _ts(moment: datetime) -> str:
    # SQLAlchemy's text format for DATETIME on SQLite, so Core and this path compare alike.
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


class _CampaignRow(NamedTuple):
    id: int
    status: str
    timezone: str
    daily_cap: int | None
    last_claim_at: datetime | None
    interval_seconds: int
    window_weekdays: str
    window_start_hour: int
    window_end_hour: int
    from_address: str
    has_retries: bool  # any `retry` row: else the claim need not look for a due one
    has_due_steps: bool  # any later step due now: else the claim need not look for one


# has_retries, has_due_steps: one index probe each (ix_send_log_campaign_status,
# ix_campaign_lead_due), in the round trip the claim makes anyway; most claims then skip
# the walk that would find nothing (a round trip each, a server's on PostgreSQL). No
# writer changes their answer before the claim commits: they hold the write lock or, on
# PostgreSQL, the campaign's row (P33).
_CAMPAIGN = ("SELECT id, status, timezone, daily_cap, last_claim_at, interval_seconds, window_weekdays, "
             "window_start_hour, window_end_hour, from_address, EXISTS (SELECT 1 FROM send_log r "
             f"WHERE r.campaign_id = campaign.id AND r.status = '{SendStatus.RETRY}'), "
             "EXISTS (SELECT 1 FROM campaign_lead f WHERE f.campaign_id = campaign.id "
             f"AND f.state = '{EnrollmentState.PENDING}' AND f.due_at <= ?) "
             "FROM campaign WHERE id = ?")
_SENT_SINCE = "SELECT count(*) FROM send_log WHERE campaign_id = ? AND created_at >= ?"
_CHECKPOINT = "UPDATE campaign SET last_claim_at = ? WHERE id = ?"
# {mailboxes}: "" for a campaign without mailboxes, else a filter to the rows unpinned or
# pinned to a mailbox that may send now (ids are integers from the database, never input).
# Suppressed: the address, or its whole domain ("@example.com", #17); two unique-index lookups.
# {domain}: storage.database.email_domain_sql, in the connection's dialect.
_SUPPRESSED = "EXISTS (SELECT 1 FROM suppression s WHERE s.email IN (lead.email, {domain}))"
_NEXT_RETRY = (
    f"SELECT l.id, l.lead_id, l.variant_letter, l.attempts, {_SUPPRESSED}, l.message_id, l.mailbox_id, "
    "l.step, "
    "e.stopped_at IS NOT NULL FROM send_log l JOIN lead ON lead.id = l.lead_id "
    "JOIN campaign_lead e ON e.campaign_id = l.campaign_id AND e.lead_id = l.lead_id "
    f"WHERE l.campaign_id = ? AND l.status = '{SendStatus.RETRY}' AND l.next_attempt_at <= ? {{mailboxes}}"
    "ORDER BY l.next_attempt_at LIMIT 1{lock}")
# Two walks of ix_campaign_lead_due: later steps whose delay has passed (oldest due first),
# then step-1 enrollments (due_at NULL: due since enrolled, in enrollment order). A
# stopped lead is never taken (its state is `stopped`, or it is in flight: stopped_at).
_NEXT_PENDING = (
    f"SELECT e.id, e.lead_id, e.variant_letter, {_SUPPRESSED}, e.mailbox_id, e.step, lead.email "
    "FROM campaign_lead e JOIN lead ON lead.id = e.lead_id "
    f"WHERE e.campaign_id = ? AND e.state = '{EnrollmentState.PENDING}' AND {{due}} AND e.stopped_at IS NULL "
    "{mailboxes}ORDER BY {order} LIMIT 1{lock}")
_DUE_LATER_STEP = ("e.due_at <= ?", "e.due_at, e.id")
_DUE_FIRST_STEP = ("e.due_at IS NULL", "e.id")
_STEP_VARIANTS = "SELECT letter, weight FROM variant WHERE campaign_id = ? AND step = ? ORDER BY letter"
_TAKE_PENDING = (f"UPDATE campaign_lead SET state = ?, mailbox_id = ? WHERE id = ? "
                 f"AND state = '{EnrollmentState.PENDING}'")
# A campaign's mailboxes and what their limits need; and a mailbox's claims since a moment.
_CAMPAIGN_MAILBOXES = (
    "SELECT m.id, m.address, m.status, m.daily_cap, m.min_gap_seconds, m.ramp_start, m.ramp_step, "
    "m.ramp_from, m.timezone, m.last_send_at FROM campaign_mailbox cm JOIN mailbox m ON m.id = cm.mailbox_id "
    "WHERE cm.campaign_id = ? ORDER BY m.id")
_MAILBOX_SENT_SINCE = "SELECT count(*) FROM send_log WHERE mailbox_id = ? AND claimed_at >= ?"
_MAILBOX_CHECKPOINT = "UPDATE mailbox SET last_send_at = ? WHERE id = ?"
# The new row's id is chosen by the claim (storage.database.update_then_next_id: max + 1 under
# SQLite's write lock, the sequence on PostgreSQL) so that its Message-ID, made from the
# id, is stored by the claim: a row that a crash leaves `unknown` names the Message-ID a
# person can look up in the mail server's log.
INSTALLATION_KEY = "installation_id"
_INSTALLATION = f"SELECT value FROM app_meta WHERE key = '{INSTALLATION_KEY}'"
_INSTALLATION_SEEN = "sendonce_installation"  # the id, in a pooled connection's info
_NEW_LOG_ROW = (
    'INSERT INTO send_log (id, campaign_id, lead_id, variant_letter, status, attempts, "trigger", worker, '
    "lease_epoch, message_id, created_at, claimed_at, mailbox_id, step) "
    f"VALUES (?, ?, ?, ?, '{SendStatus.SENDING}', 1, ?, ?, ?, ?, ?, ?, ?, ?)")


def _campaign_row(conn: Connection, campaign_id: int, now: datetime) -> _CampaignRow | None:
    row = run_sql(conn, _CAMPAIGN, (_ts(now), campaign_id)).fetchone()
    if row is None:
        return None
    return _CampaignRow(*row[:4], as_datetime(row[4]), *row[5:10], bool(row[10]), bool(row[11]))


# --- the claim -------------------------------------------------------------------


def claim_next(engine: Engine, settings: Settings, campaign_id: int, trigger: Trigger,
               now: datetime, lease: leases.Lease | None = None,
               once_key: str | None = None, settle: Outcome | None = None,
               conn: Connection | None = None, mailbox_id: int | None = None) -> Claim | Refusal:
    """Take the next message of a campaign for this process, or say why not.

    `settle`: the previous message's outcome, stored first in the same transaction (one
    commit, one fsync, per message in a batch). It is stored whatever the claim decides,
    and before the checks, so a pause it causes stops this very claim.
    `conn`: an open connection to run the transaction on (a batch's); else a fresh one.
    `mailbox_id`: only a message through this mailbox (a sending lane's); else through
    whichever of the campaign's mailboxes has the most room today.
    """
    started = time.monotonic()  # the send's deadline counts from before the claim's commit
    with _writing(engine, conn) as conn:
        linked = _lock_rows(conn, [campaign_id], settle)
        if settle is not None:
            _store_in(conn, settings, settle)
        if (gate := claim_gate(conn)) is not None:  # schema revision and restore flag, read every time
            return Refusal(*gate)
        if lease is not None and not leases.fence(conn, lease, now, settings.lease_seconds):
            return Refusal("lease_lost", f"epoch {lease.epoch} is no longer current")
        if once_key is not None and not _consume_key(conn, once_key, campaign_id, now):
            return Refusal("already_pressed", "this button press was handled already")
        campaign = _campaign_row(conn, campaign_id, now)
        refusal = _check_campaign(conn, campaign, trigger, now)
        if refusal is not None:
            return refusal
        boxes = _ready_mailboxes(conn, campaign, mailbox_id, now) if linked is None or campaign_id in linked \
            else None  # the lock saw no mailbox: no need to ask again
        if isinstance(boxes, Refusal):
            return boxes
        boxes, fresh = _lane_share(boxes, mailbox_id, campaign)
        if boxes == []:  # this lane's mailbox is at its cap or in its gap
            return Refusal("mailbox_limit", f"mailbox {mailbox_id} may not send now")
        taker = _Taker(campaign, trigger, now, leases.worker_id(), lease.epoch if lease else None,
                       started + settings.send_deadline, boxes, fresh)
        claim = (_take_retry(conn, taker) if campaign.has_retries else None) or _take_pending(conn, taker)
        if claim is None:
            return _finish_if_done(conn, settings, campaign_id, now) if mailbox_id is None else \
                Refusal("nothing_due", f"nothing for mailbox {mailbox_id}")
        # The pacing checkpoints advance in the claim itself (listmonk's lesson: never
        # after the send, or a crash in between lets the next tick send early).
        run_sql(conn, _CHECKPOINT, (_ts(now), campaign_id))
        if claim.mailbox_id is not None:
            run_sql(conn, _MAILBOX_CHECKPOINT, (_ts(now), claim.mailbox_id))
        return claim


@contextmanager
def _writing(engine: Engine, conn: Connection | None) -> Iterator[Connection]:
    # CLAIM: BEGIN IMMEDIATE on SQLite; on PostgreSQL the shared write lock, claims then
    # serializing on the rows _lock_rows takes (storage.database's docstring).
    if conn is None:
        with immediate(engine, CLAIM) as fresh:
            yield fresh
    else:
        with transaction(conn, immediate=CLAIM):
            yield conn


def _lock_rows(conn: Connection, campaigns: list[int], settle: Outcome | None) -> set[int] | None:
    """PostgreSQL: the rows a claim or stored outcome decides on, locked first (P33); which
    of those campaigns have mailboxes (None on SQLite: not asked)."""
    if settle is not None:
        campaigns = [*campaigns, settle.claim.campaign_id]
    return lock_claim_rows(conn, campaigns, [settle.claim.mailbox_id] if settle is not None else [])


def _pg_lock(conn: Connection, table: str) -> str:
    # PostgreSQL: the row a claim takes is locked by the query that finds it (already
    # serialized by the campaign row's lock; SKIP LOCKED never waits on anything else).
    return f" FOR UPDATE OF {table} SKIP LOCKED" if is_postgres(conn) else ""


class _Box(NamedTuple):
    """A mailbox that may send now: under its cap today and past its gap."""

    id: int
    address: str
    left: int  # messages left today


@dataclass(frozen=True)
class _Taker:
    """Who claims, when, for which campaign, through which mailboxes: what every claimed row records."""

    campaign: _CampaignRow
    trigger: Trigger
    now: datetime
    worker: str
    epoch: int | None
    deadline: float
    boxes: list[_Box] | None  # None: the campaign has no mailboxes (the app's transport)
    fresh: bool = True  # may pin leads not pinned yet (False: only its own pinned leads)

    def claim(self, log_id: int, lead_id: int, letter: str, attempts: int, message_id: str,
              mailbox_id: int | None, step: int = 1) -> Claim:
        return Claim(log_id, self.campaign.id, lead_id, letter, attempts, self.worker, message_id,
                     self.deadline, mailbox_id, step)

    def mailbox_filter(self, column: str) -> str:
        """The SQL condition keeping rows unpinned or pinned to a mailbox that may send now."""
        if self.boxes is None:
            return ""
        pinned = f"{column} IN ({', '.join(str(int(b.id)) for b in self.boxes)})"
        return f"AND ({column} IS NULL OR {pinned}) " if self.fresh else f"AND {pinned} "

    def mailbox_for(self, pinned: int | None) -> _Box | None:
        """The pinned mailbox, or for a lead not pinned yet the one with the most room today."""
        if self.boxes is None:
            return None
        return next(b for b in self.boxes if b.id == pinned) if pinned is not None else self.boxes[0]


def _ready_mailboxes(conn: Connection, campaign: _CampaignRow, only: int | None,
                     now: datetime) -> list[_Box] | Refusal | None:
    """The campaign's mailboxes that may send now, most room today first; None: it has none.

    Read inside the claim transaction, so every process and campaign sharing a mailbox
    sees the claims before its own: caps and gaps cannot be overrun by a race. A lane
    (`only`) of a campaign without interval needs only its own mailbox; with an interval,
    every one, to know whether another has more room (`_lane_share`).
    """
    rows = run_sql(conn, _CAMPAIGN_MAILBOXES, (campaign.id,)).fetchall()
    if not rows:
        return None
    ready, waits = [], []
    lane_only = only is not None and campaign.interval_seconds == 0
    for (box_id, address, status, daily_cap, gap, ramp_start, ramp_step, ramp_from, zone, last) in rows:
        if status != MailboxStatus.ACTIVE or (lane_only and box_id != only):
            continue
        cap = mailboxes.cap_today(daily_cap, ramp_start, ramp_step, as_datetime(ramp_from), zone, now)
        _, day_start = mailboxes.local_day(zone, now)
        used = run_sql(conn, _MAILBOX_SENT_SINCE, (box_id, _ts(day_start))).fetchone()[0]
        # No gap, nothing to wait for (as with a campaign's interval: see _check_campaign).
        free_at = last and gap > 0 and as_datetime(last) + timedelta(seconds=gap)
        if used >= cap:
            waits.append(f"{address}: {used}/{cap} today")
        elif free_at and free_at > now:
            waits.append(f"{address}: gap until {free_at:%Y-%m-%d %H:%M:%S} UTC")
        else:
            ready.append(_Box(box_id, address, cap - used))
    if ready:
        return sorted(ready, key=lambda b: (-b.left, b.id))
    if not waits:
        return Refusal("mailboxes_paused", "every mailbox of this campaign is paused")
    return Refusal("mailbox_limit", "; ".join(waits))


def _lane_share(ready: list[_Box] | None, only: int | None,
                campaign: _CampaignRow) -> tuple[list[_Box] | None, bool]:
    """What a claim may take: through which mailboxes, and whether it may pin new leads.

    A lane (`only`) sends its own pinned leads whenever its mailbox may send. New leads:
    without an interval, every lane takes them at its own pace (the lanes' caps and gaps
    spread them); with one, the campaign sends one message an interval, so only the lane
    of the mailbox with the most room today takes it, or the first lane to reach the lock
    would take every lead (the balance by room left: P24).
    """
    if ready is None or only is None:
        return ready, True
    mine = [b for b in ready if b.id == only]
    return mine, campaign.interval_seconds == 0 or (bool(mine) and ready[0].id == only)


def _consume_key(conn: Connection, key: str, campaign_id: int, now: datetime) -> bool:
    # A double click, a reloaded POST or two tabs share one key: the primary key lets
    # exactly one of them through, decided inside the claim transaction.
    return conn.execute(insert_for(conn, _press).values(key=key, campaign_id=campaign_id, pressed_at=now)
                        .on_conflict_do_nothing()).rowcount == 1


def _check_campaign(conn: Connection, campaign: _CampaignRow | None, trigger: Trigger,
                    now: datetime) -> Refusal | None:
    if campaign is None or campaign.status != CampaignStatus.ACTIVE:
        return Refusal("not_active", campaign.status if campaign else "no such campaign")
    tz = ZoneInfo(campaign.timezone)
    local = now.replace(tzinfo=UTC).astimezone(tz)
    if campaign.daily_cap is not None:
        day_start = local.replace(hour=0, minute=0, second=0, microsecond=0)
        day_start_utc = day_start.astimezone(UTC).replace(tzinfo=None)
        today = run_sql(conn, _SENT_SINCE, (campaign.id, _ts(day_start_utc))).fetchone()[0]
        if today >= campaign.daily_cap:
            return Refusal("daily_cap", f"{today}/{campaign.daily_cap}")
    if trigger == Trigger.BUTTON:  # a person asked: interval and window do not apply
        return None
    # No interval, nothing to wait for: a claimer whose `now` was read before it queued for
    # the lock would otherwise find a later claim's checkpoint "in its future" and stop.
    if campaign.last_claim_at is not None and campaign.interval_seconds > 0:
        due = campaign.last_claim_at + timedelta(seconds=campaign.interval_seconds)
        if due > now:
            return Refusal("not_due", due.isoformat(sep=" ", timespec="seconds") + " UTC")
    if not in_window(campaign, local):
        return Refusal("outside_window", f"{local:%a %H:%M} {campaign.timezone}")
    return None


def in_window(campaign: Any, local: datetime) -> bool:
    """Whether a local time falls in the campaign's weekdays and [start, end) hours."""
    days = {int(d) for d in campaign.window_weekdays.split(",") if d.strip()}
    return local.weekday() in days and campaign.window_start_hour <= local.hour < campaign.window_end_hour


def _take_retry(conn: Connection, taker: _Taker) -> Claim | None:
    sql = _NEXT_RETRY.format(mailboxes=taker.mailbox_filter("l.mailbox_id"),
                             domain=email_domain_sql("lead.email", conn), lock=_pg_lock(conn, "l"))
    row = run_sql(conn, sql, (taker.campaign.id, _ts(taker.now))).fetchone()
    if row is None:
        return None
    log_id, lead_id, letter, attempts, suppressed, message_id, pinned, step, stopped = row
    if suppressed or stopped:  # unsubscribed, bounced or stopped while waiting: never retry it
        conn.execute(update(_log).where(_log.c.id == log_id).values(
            status=SendStatus.FAILED,
            smtp_reply="suppressed before retry" if suppressed else "stopped before retry"))
        _set_enrollment(conn, taker.campaign.id, lead_id,
                        EnrollmentState.SKIPPED if suppressed else EnrollmentState.STOPPED)
        return None
    box = taker.mailbox_for(pinned)
    mailbox_id = box.id if box else pinned
    taken = conn.execute(
        update(_log).where(_log.c.id == log_id, _log.c.status == SendStatus.RETRY)
        .values(status=SendStatus.SENDING, attempts=attempts + 1, worker=taker.worker, mailbox_id=mailbox_id,
                trigger=taker.trigger, lease_epoch=taker.epoch, claimed_at=taker.now, next_attempt_at=None)
    )
    if taken.rowcount != 1:  # impossible under BEGIN IMMEDIATE; refuse rather than guess
        return None
    return taker.claim(log_id, lead_id, letter, attempts + 1, message_id, mailbox_id, step)


def _take_pending(conn: Connection, taker: _Taker) -> Claim | None:
    campaign_id = taker.campaign.id
    mailboxes = taker.mailbox_filter("e.mailbox_id")
    domain, lock = email_domain_sql("lead.email", conn), _pg_lock(conn, "e")
    # Later steps due first (a follow-up is not kept waiting behind new leads), then step 1.
    kinds = [(_DUE_LATER_STEP, (campaign_id, _ts(taker.now)))] if taker.campaign.has_due_steps else []
    kinds.append((_DUE_FIRST_STEP, (campaign_id,)))
    walks = [(_NEXT_PENDING.format(due=due, order=order, mailboxes=mailboxes, domain=domain, lock=lock),
              params) for (due, order), params in kinds]
    for _ in range(_SKIP_LIMIT):
        row = next((r for sql, params in walks if (r := run_sql(conn, sql, params).fetchone())), None)
        if row is None:
            return None
        enrollment_id, lead_id, letter, suppressed, pinned, step, email = row
        if step > 1 and not suppressed:  # a later step's variant is chosen now, once: its row keeps it
            weights = run_sql(conn, _STEP_VARIANTS, (campaign_id, step)).fetchall()
            # None with a positive weight: the step-1 letter. If the step has no such variant
            # the message cannot be built and the campaign pauses (P18), the lead kept.
            if any(weight > 0 for _, weight in weights):
                letter = pick_variant([tuple(w) for w in weights], campaign_id, email, step)
        state = EnrollmentState.SKIPPED if suppressed else EnrollmentState.SENDING
        box = None if suppressed else taker.mailbox_for(pinned)
        # The lead is pinned to its mailbox by this very claim: its later messages follow.
        mailbox_id = box.id if box else pinned
        if suppressed:
            run_sql(conn, _TAKE_PENDING, (state, mailbox_id, enrollment_id))
            continue
        log_id = update_then_next_id(conn, _TAKE_PENDING, (state, mailbox_id, enrollment_id), "send_log")
        if log_id is None:  # not taken (impossible under the claim's locks): the next one
            continue
        # The unique indexes on send_log make the database itself refuse a second row.
        now = _ts(taker.now)
        sender = box.address if box else taker.campaign.from_address  # the Message-ID's domain
        msg_id = messages.message_id(log_id, campaign_id, sender, _installation(conn))
        claim = taker.claim(log_id, lead_id, letter, 1, msg_id, mailbox_id, step)
        run_sql(conn, _NEW_LOG_ROW, (claim.send_log_id, campaign_id, lead_id, letter, taker.trigger,
                                     taker.worker, taker.epoch, claim.message_id, now, now, mailbox_id, step))
        return claim
    return None


def _installation(conn: Connection) -> str:
    """This database's installation id, made (once) if missing.

    On PostgreSQL the first claims of two campaigns may run at once: the loser of that race
    inserts nothing (ON CONFLICT DO NOTHING, waiting for the winner's commit) and reads the
    winner's id.
    """
    known = conn.connection.info
    if _INSTALLATION_SEEN in known:
        return known[_INSTALLATION_SEEN]
    row = run_sql(conn, _INSTALLATION).fetchone()
    if row is not None:
        # Kept for the pooled connection's life: it is made once and never changes. (A
        # database restored under a running process could bring another; the Message-ID's
        # random part keeps it unique all the same.) Not an id made below: its transaction
        # may yet roll back.
        known[_INSTALLATION_SEEN] = row[0]
        return row[0]
    made = messages.new_installation_id()
    conn.execute(insert_for(conn, _meta).values(key=INSTALLATION_KEY, value=made).on_conflict_do_nothing())
    return run_sql(conn, _INSTALLATION).fetchone()[0]


def _may_still_report(settings: Settings, now: datetime):
    """A condition on send_log: the row's claimer may still be working on it.

    Either its claim is younger than the stale limit (a send ends, or gives up before
    the final dot, well within it: transport.stale_floor), or its process is still
    heartbeating this very claim (still alive: e.g. waiting to store a known outcome).
    """
    heartbeat = select(_beat.c.send_log_id).where(leases.fresh_beat(settings.heartbeat_stale, now))
    return or_(_log.c.claimed_at > now - timedelta(seconds=settings.stale_seconds), heartbeat.exists())


def _finish_if_done(conn: Connection, settings: Settings, campaign_id: int, now: datetime) -> Refusal:
    open_enrollments = conn.execute(
        select(func.count()).select_from(_enrollment).where(
            _enrollment.c.campaign_id == campaign_id,
            _enrollment.c.state.in_([EnrollmentState.PENDING, EnrollmentState.SENDING]))
    ).scalar_one()
    if open_enrollments:
        return Refusal("nothing_due", f"{open_enrollments} in flight or waiting to retry")
    # An `unknown` row whose claimer may still report (a late "not sent" puts the lead
    # back in the queue) keeps the campaign open until that can no longer happen.
    busy = conn.execute(select(func.count()).select_from(_log).where(
        _log.c.campaign_id == campaign_id, _log.c.status == SendStatus.UNKNOWN,
        _may_still_report(settings, now))).scalar_one()
    if busy:
        return Refusal("nothing_due", f"{busy} unknown sends whose process may still report")
    conn.execute(update(_campaign).where(_campaign.c.id == campaign_id)
                 .values(status=CampaignStatus.FINISHED))
    return Refusal("finished")


# --- sending one claim -------------------------------------------------------------


class _Draft(NamedTuple):
    """Everything one message needs, read in one query."""

    email: str
    first_name: str
    last_name: str
    company: str
    tags: str
    fields: str | dict  # JSON text (a dict on PostgreSQL); parsed by _compose, where a bad value pauses
    from_address: str
    from_name: str
    subject: str
    body: str
    signature: str  # the mailbox's ("" without one)
    # A follow-up in the lead's thread (#17): step 1's subject template of the lead's
    # variant, the earlier steps' Message-IDs (oldest first); ("", ()) for step 1 or a new thread.
    first_subject: str = ""
    references: tuple[str, ...] = ()


# From: the claim's mailbox, or for a campaign without mailboxes the campaign's own sender.
# The claim token: this row, claimed by this worker at this attempt. Every write of an
# outcome or a release is conditional on it, so a process that was frozen past the
# sweep, or whose row a person re-queued, cannot overwrite what happened since.
_OURS = "id = :log_id AND worker = :token_worker AND attempts = :token_attempts"
_STATUS_IF_OURS = f"SELECT status FROM send_log WHERE {_OURS}"
# The message's data and, last column, the row's status if the claim is still ours: one
# round trip (a server's, on PostgreSQL) for both. No row: _STATUS_IF_OURS alone.
_DRAFT = (
    "SELECT lead.email, lead.first_name, lead.last_name, lead.company, lead.tags, lead.fields, "
    "coalesce(m.address, campaign.from_address), "
    "CASE WHEN m.id IS NULL THEN campaign.from_name ELSE m.name END, "
    "variant.subject, variant.body, coalesce(m.signature, ''), "
    f"({_STATUS_IF_OURS}) "
    "FROM lead JOIN campaign ON campaign.id = :campaign "
    "JOIN variant ON variant.campaign_id = campaign.id AND variant.step = :step AND variant.letter = :letter "
    "LEFT JOIN mailbox m ON m.id = :mailbox WHERE lead.id = :lead")
# `unknown` is accepted too: the sweep may have judged us dead while we were merely
# slow; a definite answer from the server is better than a guess.
_OUTCOME = (
    "UPDATE send_log SET status = :new_status, smtp_reply = :reply, sent_at = :sent, "
    f"next_attempt_at = :next, message_id = :message_id WHERE {_OURS} "
    f"AND status IN ('{SendStatus.SENDING}', '{SendStatus.UNKNOWN}')")
# Certainly not sent (we never reached SMTP), so back to retry, even from `unknown`.
_PUT_BACK = (
    f"UPDATE send_log SET status = '{SendStatus.RETRY}', next_attempt_at = :now, "
    f"smtp_reply = 'released before sending: claim or lease lost' WHERE {_OURS} "
    f"AND status IN ('{SendStatus.SENDING}', '{SendStatus.UNKNOWN}')")
_ENROLLMENT_STATE = "UPDATE campaign_lead SET state = ? WHERE campaign_id = ? AND lead_id = ?"
# A follow-up's thread: whether its step starts a new one, and the earlier steps' rows.
_NEW_THREAD = "SELECT new_thread FROM campaign_step WHERE campaign_id = ? AND position = ?"
_EARLIER = ("SELECT l.message_id, v.subject FROM send_log l "
            "LEFT JOIN variant v ON v.campaign_id = l.campaign_id "
            "AND v.step = 1 AND v.letter = l.variant_letter AND l.step = 1 "
            "WHERE l.campaign_id = ? AND l.lead_id = ? AND l.step < ? ORDER BY l.step")
# After `sent`: is the lead stopped, and which step (not archived) comes next, with its delay.
_AFTER_SENT = (
    "SELECT e.stopped_at, s.position, s.delay_amount, s.delay_unit, s.business_days, c.window_weekdays, "
    "c.timezone, c.country FROM campaign_lead e JOIN campaign c ON c.id = e.campaign_id "
    "LEFT JOIN campaign_step s ON s.id = (SELECT id FROM campaign_step n WHERE n.campaign_id = e.campaign_id "
    "AND n.position > ? AND n.archived_at IS NULL ORDER BY n.position LIMIT 1) "
    "WHERE e.campaign_id = ? AND e.lead_id = ?")
_NEXT_STEP = "UPDATE campaign_lead SET state = ?, step = ?, due_at = ? WHERE campaign_id = ? AND lead_id = ?"
_WAKE_FINISHED = (f"UPDATE campaign SET status = '{CampaignStatus.ACTIVE}' WHERE id = ? "
                  f"AND status = '{CampaignStatus.FINISHED}'")


def _token(claim: Claim) -> dict[str, Any]:
    return {"log_id": claim.send_log_id, "token_worker": claim.worker, "token_attempts": claim.attempts}


@dataclass(frozen=True)
class Outcome:
    """What one attempt ended in; `stored` False: the caller must still store it."""

    claim: Claim
    result: Result
    at: datetime
    stored: bool


def deliver(engine: Engine, settings: Settings, transport: Transport, claim: Claim,
            lease: leases.Lease | None = None, clock: Callable[[], datetime] = utcnow) -> Result:
    """Render, re-check ownership, talk SMTP and record what happened to one claim."""
    _track(engine, settings, claim)
    try:
        outcome = attempt(engine, settings, transport, claim, lease, clock)
        if not outcome.stored:
            store(engine, settings, outcome)
    finally:
        leases.untrack(claim.send_log_id)
    return outcome.result


def _track(engine: Engine, settings: Settings, claim: Claim) -> None:
    # Vouched for until its outcome is stored: at most the deadline, the reply's wait
    # and the outcome's wait for the database (stale_seconds); past that, a stuck thread
    # must not keep the row from the sweep forever.
    leases.track(leases.InFlight(engine, claim.send_log_id, claim.worker, claim.attempts,
                                 settings.heartbeat_seconds, time.monotonic(),
                                 claim.deadline + settings.stale_seconds))


def attempt(engine: Engine, settings: Settings, transport: Transport, claim: Claim,
            lease: leases.Lease | None = None, clock: Callable[[], datetime] = utcnow,
            conn: Connection | None = None) -> Outcome:
    """Render, re-check ownership and talk SMTP; the server's answer is left to store.

    Until it is stored the row stays `sending`: a crash now leaves it for recover() to
    mark `unknown`, exactly as a crash during SMTP would. `conn`: as for claim_next.
    """
    if conn is None:
        with engine.connect() as fresh:
            return attempt(engine, settings, transport, claim, lease, clock, fresh)
    draft, ours = _read_for_send(conn, claim, lease, clock())
    if not ours:
        # We were frozen between claim and send and someone moved on; we sent nothing.
        _release(engine, settings, claim, clock())
        return Outcome(claim, Result(SendStatus.RETRY, "released before sending: claim or lease lost"),
                       clock(), stored=True)
    try:
        msg = _compose(settings, claim, draft)
    except Exception as exc:  # noqa: BLE001 - a template or data problem, not the lead's fault
        # Certainly not sent: keep the lead for a retry and pause the campaign, so one bad
        # template does not burn through the list while nobody is looking.
        log.exception("cannot build message for send_log %s", claim.send_log_id)
        result = Result(SendStatus.RETRY, f"message not built: {exc}", config_error=True, campaign_fault=True)
        outcome = Outcome(claim, result, clock(), stored=True)
        store(engine, settings, outcome)
        return outcome
    try:
        result = route(transport, claim.mailbox_id).send(msg, draft.from_address, draft.email, claim.deadline)
    except Exception as exc:  # noqa: BLE001 - an unexpected transport error: cannot know
        log.exception("transport failed for send_log %s", claim.send_log_id)
        result = Result(SendStatus.UNKNOWN, f"transport error: {exc!r}")
    return Outcome(claim, result, clock(), stored=False)


def route(transport: Any, mailbox_id: int | None) -> Transport:
    """The transport for a mailbox: a pool's (delivery.transport.MailboxTransports), or the
    one transport given (tests, bench: every mailbox alike)."""
    return transport.for_mailbox(mailbox_id) if hasattr(transport, "for_mailbox") else transport


def _read_for_send(conn: Connection, claim: Claim, lease: leases.Lease | None,
                   now: datetime) -> tuple[_Draft | None, bool]:
    """The message's data and whether the claim (and lease) is still ours (one snapshot on SQLite).

    Checked as late as possible before SMTP: only message building (pure CPU) follows.
    """
    with reading(conn):
        row = run_sql(conn, _DRAFT, {"lead": claim.lead_id, "campaign": claim.campaign_id, "step": claim.step,
                                     "letter": claim.variant_letter, "mailbox": claim.mailbox_id,
                                     **_token(claim)}).fetchone()
        if row is None:
            status = run_sql(conn, _STATUS_IF_OURS, _token(claim)).fetchone()
        else:
            row, status = row[:-1], row[-1:]
        thread = _thread(conn, claim) if row is not None and claim.step > 1 else None
        ours = status is not None and status[0] == SendStatus.SENDING
        ours = ours and (lease is None or leases.is_current(conn, lease, now))
    if row is None:
        return None, ours
    return _Draft(*row, *(thread or ())), ours


def _thread(conn: Connection, claim: Claim) -> tuple[str, tuple[str, ...]] | None:
    """Step 1's subject template and the earlier Message-IDs, for a reply in the lead's thread."""
    new = run_sql(conn, _NEW_THREAD, (claim.campaign_id, claim.step)).fetchone()
    if new is not None and new[0]:
        return None
    earlier = run_sql(conn, _EARLIER, (claim.campaign_id, claim.lead_id, claim.step)).fetchall()
    first = next((subject for _, subject in earlier if subject is not None), None)
    if first is None:  # no step-1 row to reply to (a hand-made history): a thread of its own
        return None
    return first, tuple(message_id for message_id, _ in earlier if message_id)


def _compose(settings: Settings, claim: Claim, draft: _Draft | None):
    if draft is None:
        raise LookupError("the lead, campaign or variant of this send no longer exists")
    # JSON text from SQLite (unreadable text raises here: P18's pause); PostgreSQL's driver
    # hands the json column over parsed.
    fields = json.loads(draft.fields) if isinstance(draft.fields, str) and draft.fields else draft.fields
    draft = draft._replace(fields=fields or {})
    url = unsubscribe_url(settings.base_url, settings.secret_key, draft.email, claim.campaign_id)
    context = templating.lead_context(draft, url, signature=draft.signature)
    subject = templating.render(draft.subject, context)
    if draft.first_subject:  # a reply in the thread step 1 started: "Re: <the subject the lead got>"
        subject = "Re: " + templating.render(draft.first_subject, context)
    return messages.build_message(
        from_address=draft.from_address, from_name=draft.from_name,
        to_address=draft.email, to_name=f"{draft.first_name} {draft.last_name}".strip(),
        subject=subject,
        body=templating.render(draft.body, context),
        msg_id=claim.message_id,
        unsubscribe_url=url,
        in_reply_to=draft.references[-1] if draft.references else "",
        references=draft.references,
    )


def _release(engine: Engine, settings: Settings, claim: Claim, now: datetime) -> None:
    _until_stored(settings, claim, lambda: _put_back(engine, claim, now))


def _put_back(engine: Engine, claim: Claim, now: datetime) -> None:
    with immediate(engine) as conn:
        # Only if the row was still ours: a person may have decided it meanwhile.
        if run_sql(conn, _PUT_BACK, {**_token(claim), "now": _ts(now)}).rowcount == 1:
            _set_enrollment(conn, claim.campaign_id, claim.lead_id, EnrollmentState.SENDING)
            _requeued(conn, claim)


def _requeued(conn: Connection, claim: Claim) -> None:
    """The lead has something to send again (its row back to `retry`, or its next step
    due after a late `sent`): its campaign must be able to send it.

    The sweep may have made the row `unknown` and the campaign `finished` meanwhile (we
    were frozen or slow); a retry or a next step in a finished campaign would never be
    claimed, a lead stranded. So a finished campaign becomes active again; a paused one
    sends it when resumed.
    """
    if run_sql(conn, _WAKE_FINISHED, (claim.campaign_id,)).rowcount:
        log.warning("campaign %s active again: send_log %s had a late answer and its lead has more to send",
                    claim.campaign_id, claim.send_log_id)


def record(engine: Engine, settings: Settings, claim: Claim, result: Result, now: datetime) -> None:
    """Store the outcome of one attempt on its own row, if the row is still ours."""
    store(engine, settings, Outcome(claim, result, now, stored=False))


def store(engine: Engine, settings: Settings, outcome: Outcome) -> None:
    """Store an outcome in a transaction of its own, waiting out busy writers."""

    def write() -> None:
        with immediate(engine, CLAIM) as conn:
            _lock_rows(conn, [], outcome)
            _store_in(conn, settings, outcome)

    _until_stored(settings, outcome.claim, write)


def _store_in(conn: Connection, settings: Settings, outcome: Outcome) -> None:
    """Write an outcome inside the caller's transaction, only if the row is still ours."""
    claim, result, now = outcome.claim, outcome.result, outcome.at
    status = result.status
    if status == SendStatus.RETRY and claim.attempts >= settings.max_attempts:
        status = SendStatus.FAILED
    backoff = timedelta(seconds=settings.retry_base_seconds * 2 ** (claim.attempts - 1))
    values = {
        **_token(claim), "new_status": status, "reply": result.reply[:2000], "message_id": claim.message_id,
        "sent": _ts(now) if status == SendStatus.SENT else None,
        "next": _ts(now + backoff) if status == SendStatus.RETRY else None,
    }
    if run_sql(conn, _OUTCOME, values).rowcount != 1:
        log.warning("send_log %s was resolved elsewhere; outcome %s not stored", claim.send_log_id, status)
        return
    waits = status == SendStatus.RETRY  # the lead waits for this row again
    if status == SendStatus.SENT:
        # A late `sent` (the sweep made the row `unknown` and maybe finished the campaign)
        # moves the lead on to its next step: that step must be claimable too.
        waits = _advance(conn, claim.campaign_id, claim.lead_id, claim.step, now) == EnrollmentState.PENDING
    else:
        _set_enrollment(conn, claim.campaign_id, claim.lead_id, _FINAL_STATE[status])
    if waits:
        _requeued(conn, claim)
    if result.suppress:
        suppress(conn, _email_of(conn, claim.lead_id), "bounce", result.reply, now)
    if claim.mailbox_id is not None and not result.campaign_fault:
        _count_failures(conn, settings, _mailbox, claim.mailbox_id, status, result)
    else:
        _count_failures(conn, settings, _campaign, claim.campaign_id, status, result)


def _until_stored(settings: Settings, claim: Claim, write: Callable[[], None]) -> None:
    """Run an outcome write, waiting out other writers for up to the stale limit.

    The server has already answered: giving up on "database is locked" (a process that
    stalls holding the write lock past busy_timeout) would turn a known outcome into
    `unknown`. Retrying is safe: the write is guarded by the claim token.
    """
    deadline = time.monotonic() + settings.stale_seconds
    delay = 0.05
    while True:
        try:
            return write()
        except OperationalError as exc:
            if not is_busy(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning("send_log %s: database busy, outcome not stored yet; retrying",
                        claim.send_log_id)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def _email_of(conn: Connection, lead_id: int) -> str:
    return conn.execute(select(_lead.c.email).where(_lead.c.id == lead_id)).scalar_one()


def _set_enrollment(conn: Connection, campaign_id: int, lead_id: int, state: EnrollmentState) -> None:
    run_sql(conn, _ENROLLMENT_STATE, (state, campaign_id, lead_id))


def _advance(conn: Connection, campaign_id: int, lead_id: int, step: int,
             sent_at: datetime) -> EnrollmentState:
    """Step `step` was sent (or a person says so): the lead waits for its next step, due after
    that step's delay, or is complete; a stop recorded meanwhile ends it `stopped`.

    In the transaction that stores `sent`: a crash leaves both or neither, so a lead can
    neither skip a step nor wait for one that was never made due.
    """
    row = run_sql(conn, _AFTER_SENT, (step, campaign_id, lead_id)).fetchone()
    if row is None:  # no enrollment (a hand-made row): nothing to move on
        return EnrollmentState.SENT
    stopped_at, position, amount, unit, business_days, weekdays, zone, country = row
    if stopped_at is not None:
        state = EnrollmentState.STOPPED
    elif position is None:
        state = EnrollmentState.SENT
    else:
        due = sequences.due_after(sent_at, amount, unit, bool(business_days), weekdays, zone, country)
        run_sql(conn, _NEXT_STEP, (EnrollmentState.PENDING, position, _ts(due), campaign_id, lead_id))
        return EnrollmentState.PENDING
    _set_enrollment(conn, campaign_id, lead_id, state)
    return state


# Who failures in a row pause: the campaign (a template, or no mailbox: the app's own SMTP)
# or the mailbox (its credentials, its server). The reset after a success is SQL text: it
# runs on every message.
_NO_FAILURES = {name: f"UPDATE {name} SET consecutive_failures = 0 WHERE id = ? AND consecutive_failures != 0"
                for name in ("campaign", "mailbox")}


def _count_failures(conn: Connection, settings: Settings, table: Any, row_id: int,
                    status: SendStatus, result: Result) -> None:
    # Like listmonk's OnError: failures in a row mean the sender is broken (bad
    # credentials, server down), not the leads. A refused recipient does not count. A
    # mailbox pauses alone: its leads wait for it (never moved: their thread would break),
    # other mailboxes go on.
    if status == SendStatus.SENT:
        run_sql(conn, _NO_FAILURES[table.name], (row_id,))
        return
    if result.suppress:
        return
    where = table.c.id == row_id
    values = {"consecutive_failures": table.c.consecutive_failures + 1}
    if "last_error" in table.c:
        values["last_error"] = result.reply[:1000]
    failures = conn.execute(update(table).where(where).values(**values)
                            .returning(table.c.consecutive_failures)).scalar_one()
    if result.config_error or failures >= settings.pause_after_failures:
        reason = (result.reply if result.config_error
                  else f"{failures} failed sends in a row; last: {result.reply}")[:1000]
        # "active" and "paused" are the same words for a campaign and a mailbox.
        conn.execute(update(table).where(where, table.c.status == CampaignStatus.ACTIVE)
                     .values(status=CampaignStatus.PAUSED, pause_reason=reason))
        log.error("%s %s paused: %s", table.name, row_id, reason)


# --- batches, ticks, recovery ------------------------------------------------------


def send_batch(engine: Engine, settings: Settings, transport: Transport, campaign_id: int,
               trigger: Trigger, *, lease: leases.Lease | None = None, limit: int | None = None,
               once_key: str | None = None, clock: Callable[[], datetime] = utcnow,
               mailbox_id: int | None = None) -> BatchResult:
    """Claim and send up to `limit` (default: the campaign's batch size) messages.

    `once_key` (the button's one-time key) is consumed by the batch's first claim.
    `mailbox_id`: only through that mailbox (a sending lane); else any of the campaign's.
    """
    if limit is None:
        with engine.connect() as conn:
            limit = conn.execute(select(_campaign.c.batch_size)
                                 .where(_campaign.c.id == campaign_id)).scalar() or 1
    batch, unsettled = BatchResult(), None
    try:
        with engine.connect() as conn:  # one connection for the batch's claims and reads
            for _ in range(limit):
                # The previous answer is stored by the next claim's transaction: one commit
                # per message instead of two. If that transaction fails, nothing of it
                # happened, and `finally` stores the answer on its own.
                claim = claim_next(engine, settings, campaign_id, trigger, clock(), lease, once_key,
                                   unsettled, conn, mailbox_id)
                if unsettled is not None:
                    leases.untrack(unsettled.claim.send_log_id)
                once_key, unsettled = None, None
                if isinstance(claim, Refusal):
                    batch.stopped_by = claim
                    break
                _track(engine, settings, claim)
                outcome = attempt(engine, settings, transport, claim, lease, clock, conn)
                unsettled = None if outcome.stored else outcome  # first: nothing may drop it
                if outcome.stored:
                    leases.untrack(claim.send_log_id)
                batch.outcomes.append((claim, outcome.result))
    finally:
        if unsettled is not None:
            try:
                store(engine, settings, unsettled)
            finally:
                leases.untrack(unsettled.claim.send_log_id)
    return batch


def tick(engine: Engine, settings: Settings, transport: Transport, lease: leases.Lease,
         trigger: Trigger = Trigger.SCHEDULER, campaign_id: int | None = None,
         clock: Callable[[], datetime] = utcnow) -> dict[int, BatchResult]:
    """One bounded pass for the lease holder: recover, then one batch per due campaign and lane.

    A lane is one mailbox (its own SMTP connection), with the campaigns that send through
    it; lanes run in parallel threads when `transport` is a pool (one transport per
    mailbox), so throughput grows with the mailboxes. Every claim is still fenced by the
    lease and checks the limits in its own transaction: parallel lanes change no guarantee.
    """
    recover(engine, settings, clock())
    plan = _lanes(engine, campaign_id)
    results: dict[int, BatchResult] = {}

    def lane(mailbox_id: int | None, campaign_ids: list[int]) -> list[tuple[int, BatchResult]]:
        done = []
        for cid in campaign_ids:
            done.append((cid, send_batch(engine, settings, transport, cid, trigger, lease=lease,
                                         clock=clock, mailbox_id=mailbox_id)))
            if done[-1][1].stopped_by and done[-1][1].stopped_by.code == "lease_lost":
                break
        return done

    try:
        if len(plan) > 1 and hasattr(transport, "for_mailbox"):
            with ThreadPoolExecutor(max_workers=len(plan), thread_name_prefix="sendonce-lane") as pool:
                finished = [f.result() for f in [pool.submit(lane, m, cids) for m, cids in plan.items()]]
        else:
            finished = [lane(m, cids) for m, cids in plan.items()]
        for cid, batch in (pair for done in finished for pair in done):
            _merge(results.setdefault(cid, BatchResult()), batch)
    finally:
        transport.close()
    return results


def _lanes(engine: Engine, campaign_id: int | None) -> dict[int | None, list[int]]:
    """Active campaigns by the mailbox that sends them: a lane per active mailbox; lane
    None for campaigns without mailboxes (the app's transport) or with every one paused."""
    with engine.connect() as conn:
        query = select(_campaign.c.id).where(_campaign.c.status == CampaignStatus.ACTIVE)
        if campaign_id is not None:
            query = query.where(_campaign.c.id == campaign_id)
        ids = conn.execute(query.order_by(_campaign.c.id)).scalars().all()
        links = conn.execute(select(campaign_mailbox.c.campaign_id, campaign_mailbox.c.mailbox_id)
                             .join(_mailbox, _mailbox.c.id == campaign_mailbox.c.mailbox_id)
                             .where(_mailbox.c.status == MailboxStatus.ACTIVE)
                             .order_by(campaign_mailbox.c.mailbox_id)).all()
    by_campaign: dict[int, list[int]] = {}
    for cid, mid in links:
        by_campaign.setdefault(cid, []).append(mid)
    plan: dict[int | None, list[int]] = {}
    for cid in ids:
        for mid in by_campaign.get(cid, [None]):
            plan.setdefault(mid, []).append(cid)
    return plan


def _merge(into: BatchResult, batch: BatchResult) -> None:
    into.outcomes.extend(batch.outcomes)
    if into.stopped_by is None or (batch.stopped_by and batch.stopped_by.code == "lease_lost"):
        into.stopped_by = batch.stopped_by


def recover(engine: Engine, settings: Settings, now: datetime) -> int:
    """Turn `sending` rows whose worker died or went silent into `unknown`; never re-send.

    Silent: older than the stale limit. Died: its pid is gone from this host. Either way
    only when no fresh heartbeat of the claim says its process is still working on it.
    """
    cutoff = now - timedelta(seconds=settings.stale_seconds)
    with immediate(engine) as conn:
        rows = conn.execute(
            select(_log.c.id, _log.c.worker, _log.c.claimed_at, _log.c.campaign_id, _log.c.lead_id,
                   _beat.c.beat_at)
            .outerjoin(_beat, leases.fresh_beat(settings.heartbeat_stale, now))
            .where(_log.c.status == SendStatus.SENDING)).all()
        stale = [r for r in rows if r.beat_at is None
                 and (r.claimed_at < cutoff or leases.is_dead_here(r.worker))]
        for row in stale:
            why = "worker gone" if leases.is_dead_here(row.worker) else "no outcome in time"
            conn.execute(update(_log).where(_log.c.id == row.id, _log.c.status == SendStatus.SENDING)
                         .values(status=SendStatus.UNKNOWN,
                                 smtp_reply=f"unknown: {why} ({row.worker}); not re-sent"))
            _set_enrollment(conn, row.campaign_id, row.lead_id, EnrollmentState.UNKNOWN)
        leases.prune_beats(conn, cutoff - timedelta(seconds=settings.heartbeat_stale))
    for row in stale:
        log.warning("send_log %s marked unknown (worker %s)", row.id, row.worker)
    return len(stale)


def decidable_at(settings: Settings, claimed_at: datetime, beat_at: datetime | None) -> datetime:
    """When a person may decide an `unknown` row: once its claimer can no longer send it.

    Its claim must be past the stale limit (the transport never sends the final dot
    after the send's deadline, which is well inside it) and its heartbeat, if any, stale.
    """
    at = claimed_at + timedelta(seconds=settings.stale_seconds)
    if beat_at is not None:
        at = max(at, beat_at + timedelta(seconds=settings.heartbeat_stale))
    return at


def resolve_unknown(engine: Engine, settings: Settings, send_log_id: int, action: str, who: str,
                    now: datetime | None = None) -> Refusal | None:
    """A person's decision on an `unknown` send: "mark-sent" or "send-again".

    None when recorded; else a Refusal: `not_unknown` (decided meanwhile, or never
    unknown) or `still_sending` (its process may still deliver it: detail says until when,
    in UTC). Checked in the same BEGIN IMMEDIATE transaction as the decision.
    """
    if action not in ("mark-sent", "send-again"):
        raise ValueError(f"unknown action {action!r}")
    now = now or utcnow()
    sent = action == "mark-sent"
    with immediate(engine) as conn:
        row = conn.execute(select(_log, _beat.c.beat_at)
                           .outerjoin(_beat, leases.fresh_beat(settings.heartbeat_stale, now))
                           .where(_log.c.id == send_log_id, _log.c.status == SendStatus.UNKNOWN)).first()
        if row is None:
            return Refusal("not_unknown", f"send {send_log_id} is not unknown")
        until = decidable_at(settings, row.claimed_at, row.beat_at)
        if until > now:
            return Refusal("still_sending", until.isoformat(sep=" ", timespec="seconds"))
        conn.execute(update(_log).where(_log.c.id == send_log_id).values(
            status=SendStatus.SENT if sent else SendStatus.RETRY, decided_by=who,
            next_attempt_at=None if sent else now, sent_at=now if sent else None))
        if sent:  # as if its outcome had been `sent`: the lead moves on to its next step
            state = _advance(conn, row.campaign_id, row.lead_id, row.step, now)
        else:
            _set_enrollment(conn, row.campaign_id, row.lead_id, EnrollmentState.SENDING)
        if not sent or state == EnrollmentState.PENDING:  # a finished campaign must wake up to send it
            conn.execute(update(_campaign).where(_campaign.c.id == row.campaign_id,
                                                 _campaign.c.status == CampaignStatus.FINISHED)
                         .values(status=CampaignStatus.ACTIVE))
    return None
