"""The bench's own checks (bench/run.py): a run that mails a lead twice must say so.

Speed is reported by `make bench`, never asserted here: these run tiny sizes against the
real sink process and only look at the verdict of the bench's checks.
"""

from __future__ import annotations

import pytest

from bench import run


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
