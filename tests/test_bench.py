"""The bench's own checks (bench/run.py): a run that mails a lead twice must say so.

Speed is reported by `make bench`, never asserted here: these run tiny sizes against the
real sink process and only look at the verdict of the bench's checks.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from bench import pgdata, run
from core import replies
from tests.conftest import ON_POSTGRES


@pytest.fixture
def ctx(tmp_path, monkeypatch) -> run.Context:
    monkeypatch.setattr(run, "RESULTS", tmp_path)  # databases and key file out of the repo
    return run.Context(run.QUICK, profile=False, fresh=False)


def test_the_mailboxes_bench_counts_each_lead_once_at_the_sink(ctx):
    run.lane_row(ctx, 0.0, 2, 3, target=0.8)
    (row,) = ctx.rows
    assert "CHECK FAILED" not in row.notes
    assert "6 leads, each received once at the sink (6 messages, 6 recipients, 0 duplicates)" in row.notes


def test_the_mailboxes_bench_reports_a_lead_mailed_twice_as_check_failed(ctx, monkeypatch):
    send = run.Recording.send

    def twice(self, msg, sender, recipient, deadline=float("inf")):
        send(self, msg, sender, recipient, deadline)
        return send(self, msg, sender, recipient, deadline)

    monkeypatch.setattr(run.Recording, "send", twice)
    run.lane_row(ctx, 0.0, 2, 3, target=0.8)
    (row,) = ctx.rows
    assert "CHECK FAILED" in row.notes and "6 duplicates" in row.notes
    assert row.met is False


def test_the_replies_bench_records_each_message_once(ctx):
    run.section_replies(replace(ctx, sizes=replace(run.QUICK, reply_messages=14)))
    first, idle = ctx.rows
    assert first.met and idle.met and "CHECK FAILED" not in first.notes
    assert "recorded once each (14 rows, 14 distinct UIDs; 14 matched to a send)" in first.notes


def test_the_replies_bench_reports_a_message_not_recorded_as_check_failed(ctx, monkeypatch):
    real = replies.record

    def drops_the_fifth(conn, mailbox, folder, uidvalidity, fetched, reading, now):
        if fetched.uid == 5:  # lost: no row, and the next message moves the cursor past it
            return None
        return real(conn, mailbox, folder, uidvalidity, fetched, reading, now)

    monkeypatch.setattr(replies, "record", drops_the_fifth)
    run.section_replies(replace(ctx, sizes=replace(run.QUICK, reply_messages=7)))
    first, _idle = ctx.rows
    assert "CHECK FAILED" in first.notes and first.met is False


# --- section postgres (#19): its own throwaway cluster, so it runs on the SQLite run --------
# (the bench's SQLite side reads SQLite files, which the PostgreSQL test run replaces).

postgres_bench = pytest.mark.skipif(ON_POSTGRES, reason="the bench section starts its own PostgreSQL "
                                                        "cluster; its SQLite side needs SQLite files")


@pytest.fixture(scope="module")
def cluster():
    with run.postgres_cluster() as started:
        yield started


@postgres_bench
def test_the_postgres_bench_claims_each_lead_once_over_eight_campaigns(ctx, cluster):
    sizes = replace(run.QUICK, procs=(2,), claim_seconds=0, claim_leads=48, pg_campaigns=(8,),
                    pg_parts=("claims",))
    run.section_postgres(replace(ctx, sizes=sizes))
    (row,) = ctx.rows
    assert row.section == "postgres" and row.measure == "PostgreSQL claims/s, 2 processes, 8 campaigns"
    assert "CHECK FAILED" not in row.notes and "48 of 48 leads claimed once each, 0 duplicates" in row.notes
    assert "**SQLite** engine, same layout" in row.notes


@postgres_bench
def test_the_postgres_bench_check_reports_a_lost_or_doubled_claim(ctx, cluster):
    template, leads = run.claims_template(replace(ctx, sizes=replace(run.QUICK, claim_leads=16)), 1)
    url = pgdata.recreate(cluster, "bench_claims_run")
    pgdata.copy_from_sqlite(template, url)
    assert run.check_claims_pg(url, leads, 0, to_the_end=False) == (True, "0 of 16 leads claimed once each, "
                                                                          "0 duplicates")
    ok, note = run.check_claims_pg(url, leads, 1, to_the_end=False)  # a process counted a claim never stored
    assert not ok and "CHECK FAILED" in note


@postgres_bench
def test_the_postgres_bench_renders_the_pages_on_postgresql(ctx, cluster):
    sizes = replace(run.QUICK, page_leads=200, page_campaigns=2, page_sends=300, page_repeats=1,
                    page_min_repeats=1, pg_parts=("pages",))
    run.section_postgres(replace(ctx, sizes=sizes))
    rendered = {row.measure.split(":")[0]: row for row in ctx.rows}
    assert set(rendered) == {"floor", "dashboard", "campaign", "leads, page 1", "leads, search",
                             "send log, failed", "timeline"}
    assert all(row.value not in ("failed", "not ported") for row in ctx.rows), ctx.rows
    assert "PostgreSQL" in rendered["dashboard"].notes


def test_a_page_failing_on_postgresql_for_a_missing_function_is_not_ported():
    failure = {"url": "/timeline", "failed": "HTTP 500 (ProgrammingError: (psycopg.errors.UndefinedFunction) "
                                             "function strftime(unknown, timestamp) does not exist)"}
    row = run.failed_page_row("postgres", "timeline", failure)
    assert row.value == "not ported" and row.met is None and run.PG_PAGES_AGAIN in row.notes
    other = run.failed_page_row("postgres", "timeline", dict(failure, failed="HTTP 500 (KeyError: 'x')"))
    assert other.value == "failed" and other.met is False and "CHECK FAILED" in other.notes
