"""The bench's own checks (bench/run.py): a run that mails a lead twice must say so.

Speed is reported by `make bench`, never asserted here: these run tiny sizes against the
real sink process and only look at the verdict of the bench's checks.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from bench import run
from core import replies


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
