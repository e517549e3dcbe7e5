"""The timeline's hourly summary: kept exact by triggers, and the page's figures from it
equal the live computation over send_log (timeline/live.py's live path and timeline/analysis.py).
On both dialects (SQLite's triggers, PostgreSQL's plpgsql ones); the SQL the tests write
themselves is spelled per dialect below."""

from __future__ import annotations

import itertools
import random
import statistics
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.exc import IntegrityError

from conftest import ON_POSTGRES, database_url
from delivery.transport import Result
from helpers import make_campaign
from models import SendLog, SendStatus, Trigger, db
from sender import recover, resolve_unknown, send_batch
from storage import schema
from storage.database import as_datetime, immediate
from timeline import analysis as timeline
from timeline import live as timeline_sql
from timeline.live import Scope

pytestmark = pytest.mark.postgres

T0 = datetime(2026, 3, 2, 8, 0, 0)  # a Monday
# The hour label written independently of storage/schema.py, per dialect.
HOUR = ("to_char(claimed_at, 'YYYY-MM-DD HH24:00')" if ON_POSTGRES
        else "strftime('%Y-%m-%d %H:00', claimed_at)")


def summary(conn) -> dict[tuple, int]:
    rows = conn.exec_driver_sql('SELECT campaign_id, hour, "trigger", sends FROM timeline_hour '
                                "WHERE sends != 0").all()
    return {tuple(r[:3]): r[3] for r in rows}


def recount(conn) -> dict[tuple, int]:
    rows = conn.execute(text(
        f"SELECT campaign_id, {HOUR}, \"trigger\", count(*) FROM send_log "
        "WHERE status IN ('sent', 'unknown') GROUP BY 1, 2, 3")).all()
    return {tuple(r[:3]): r[3] for r in rows}


def events(conn, scope: Scope) -> list[timeline.SendEvent]:
    rows = conn.execute(select(SendLog.__table__).where(*scope.where()))
    return [timeline.SendEvent(r.claimed_at, str(r.campaign_id), str(r.lead_id), r.variant_letter,
                               r.trigger, r.worker) for r in rows]


def assert_same(conn, scope: Scope) -> None:
    """The summary path's Analysis and bars equal the live path's, and timeline.py's."""
    assert schema.summary_usable(conn)
    fast, live = timeline_sql.summary_analyse(conn, scope), timeline_sql.live_analyse(conn, scope)
    assert fast == live, scope
    for minutes in (1, 60, 1440):
        assert timeline_sql.summary_buckets(conn, scope, minutes) == timeline_sql.live_buckets(
            conn, scope, minutes, []), (scope, minutes)
    # And against the pure analysis over every event (all fit in the median's sample).
    every = events(conn, scope)
    assert len(every) < timeline_sql.MEDIAN_SAMPLE
    pure = timeline.analyse(every)
    assert timeline.to_json(fast) == timeline.to_json(pure)
    assert (fast.first_send_at, fast.last_send_at, fast.unique_leads) == (
        pure.first_send_at, pure.last_send_at, pure.unique_leads)
    minutes = timeline_sql.bucket_minutes(fast.first_send_at, fast.last_send_at)
    if minutes < 1440 or len(every) < 2 or (pure.last_send_at - pure.first_send_at).days < 400:
        assert timeline_sql.summary_buckets(conn, scope, minutes) == [
            b for b in timeline.bucket(every, minutes) if b.sends]


def scopes(campaign_ids: list[int], first: datetime, last: datetime, rng: random.Random) -> list[Scope]:
    """Whole and partial ranges: open, on the hour, mid-hour, within one hour, empty, reversed."""
    span = max((last - first).total_seconds(), 1)

    def moment() -> datetime:
        return first + timedelta(seconds=rng.uniform(-600, span + 600), microseconds=rng.randrange(10**6))

    hour = first.replace(minute=0, second=0, microsecond=0)
    result = [Scope(), Scope(campaign_ids[0]), Scope(campaign_ids[-1]), Scope(999),
              Scope(None, hour + timedelta(hours=1)), Scope(None, None, hour + timedelta(hours=2)),
              Scope(campaign_ids[0], hour, hour + timedelta(hours=3)),
              Scope(None, hour + timedelta(minutes=10), hour + timedelta(minutes=50)),
              Scope(None, last, first), Scope(None, first, first)]
    for _ in range(12):
        a, b = sorted((moment(), moment()))
        result.append(Scope(rng.choice([None, *campaign_ids]), a, b))
        result.append(Scope(None, a if rng.random() < 0.5 else None, b if rng.random() < 0.5 else None))
    return result


class Scripted:
    """A transport whose answers follow a script: sent, retry, failed, unknown or an exception."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def send(self, msg, sender: str, recipient: str, deadline: float = float("inf")) -> Result:
        pick = self.rng.random()
        if pick < 0.08:
            raise ConnectionResetError("connection dropped mid-DATA")  # stored as unknown
        for limit, status in ((0.7, SendStatus.SENT), (0.8, SendStatus.RETRY), (0.88, SendStatus.FAILED)):
            if pick < limit:
                return Result(status, f"{status} scripted")
        return Result(SendStatus.UNKNOWN, "timeout after DATA")

    def close(self) -> None:
        pass


def test_engine_sends_keep_the_summary_exact_and_the_page_equal_to_live(engine, settings):
    # The real claim/deliver/retry/recover/resolve paths, over ~2 days of logical time,
    # three campaigns and every trigger.
    rng = random.Random(7)
    settings = replace(settings, pause_after_failures=10_000, retry_base_seconds=0, max_attempts=3)
    ids = [make_campaign(engine, 40, name=f"c{i}", interval=0, batch_size=3) for i in range(3)]
    transport, now = Scripted(rng), [T0]

    def clock() -> datetime:
        now[0] += timedelta(seconds=rng.choice([1, 7, 40, 300, 1800]), microseconds=rng.randrange(10**6))
        return now[0]

    for step in range(70):
        cid = rng.choice(ids)
        send_batch(engine, settings, transport, cid, rng.choice(list(Trigger)), clock=clock)
        if step % 10 == 9:
            recover(engine, settings, now[0] + timedelta(hours=1))
    with engine.connect() as conn:
        unknown = conn.exec_driver_sql("SELECT id FROM send_log WHERE status = 'unknown'").scalars().all()
    for i, log_id in enumerate(unknown[:6]):  # a person decides some of them
        assert resolve_unknown(engine, settings, log_id, "mark-sent" if i % 2 else "send-again",
                               "admin@example.com", now[0] + timedelta(hours=1)) is None
    for _ in range(5):
        send_batch(engine, settings, transport, rng.choice(ids), Trigger.CLI, clock=clock)
    with engine.connect() as conn:
        statuses = dict(conn.exec_driver_sql("SELECT status, count(*) FROM send_log GROUP BY 1").all())
        assert statuses["sent"] > 20 and statuses["unknown"] > 0 and statuses["failed"] > 0
        assert summary(conn) == recount(conn)
        first, last = conn.exec_driver_sql("SELECT min(claimed_at), max(claimed_at) FROM send_log").one()
        first, last = as_datetime(first), as_datetime(last)
        assert last - first > timedelta(hours=6)  # hour (or day) bars come from the summary
        for scope in scopes(ids, first, last, rng):
            assert_same(conn, scope)


def test_cli_sends_through_smtp_appear_in_the_summary(engine, runner, smtp):
    cid = make_campaign(engine, 3)
    for _ in range(3):
        assert runner.invoke(args=["send-due"]).exit_code == 0
    with engine.connect() as conn:
        assert sum(summary(conn).values()) == 3 == sum(recount(conn).values())
        assert_same(conn, Scope(cid))


def bare_engine(path):
    """An engine on a schema-only database without foreign keys on send_log (SQLite does not
    enforce them on a bare engine; PostgreSQL's are dropped), to write its rows directly."""
    engine = create_engine(database_url(path))
    db.metadata.create_all(engine)  # the create_all hook installs table and triggers
    drop_send_log_foreign_keys(engine)
    return engine


def drop_send_log_foreign_keys(engine) -> None:
    if ON_POSTGRES:
        with engine.begin() as conn:
            for fk in inspect(conn).get_foreign_keys("send_log"):
                conn.exec_driver_sql(f"ALTER TABLE send_log DROP CONSTRAINT {fk['name']}")


@pytest.fixture
def bare(tmp_path):
    engine = bare_engine(tmp_path / "bare.db")
    yield engine
    engine.dispose()


def drop_trigger(conn, name: str) -> None:
    conn.exec_driver_sql(f"DROP TRIGGER {name}" + (" ON send_log" if ON_POSTGRES else ""))


INSERT = text(('INSERT INTO' if ON_POSTGRES else 'INSERT OR IGNORE INTO') +
              ' send_log (campaign_id, lead_id, variant_letter, status, attempts, '
              '"trigger", worker, message_id, created_at, claimed_at) '
              "VALUES (:c, :lead, 'A', :status, 1, :trigger, 'w:1', '', :at, :at)" +
              (" ON CONFLICT DO NOTHING" if ON_POSTGRES else ""))
STATUSES = [s.value for s in SendStatus]
TRIGGERS = ["scheduler", "button", "cli", ""]


def moment(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat(" ", "microseconds")


operation = st.one_of(
    st.tuples(st.just("insert"), st.integers(1, 3), st.integers(1, 25), st.sampled_from(STATUSES),
              st.sampled_from(TRIGGERS), st.floats(0, 4000)),
    st.tuples(st.just("status"), st.integers(1, 25), st.sampled_from(STATUSES)),
    st.tuples(st.just("claimed_at"), st.integers(1, 25), st.floats(0, 4000)),
    st.tuples(st.just("trigger"), st.integers(1, 25), st.sampled_from(TRIGGERS)),
    st.tuples(st.just("campaign"), st.integers(1, 25), st.integers(1, 4)),
    st.tuples(st.just("delete"), st.integers(1, 25)),
    st.tuples(st.just("rollback"), st.integers(1, 25), st.sampled_from(STATUSES)),
)


def apply(conn, op) -> None:
    kind, *args = op
    if kind == "insert":
        c, lead, status, trigger, minutes = args
        conn.execute(INSERT, {"c": c, "lead": lead, "status": status, "trigger": trigger,
                              "at": moment(minutes)})
    elif kind == "delete":
        conn.execute(text("DELETE FROM send_log WHERE id = :id"), {"id": args[0]})
    elif kind == "claimed_at":
        conn.execute(text("UPDATE send_log SET claimed_at = :v WHERE id = :id"),
                     {"v": moment(args[1]), "id": args[0]})
    else:
        column = {"status": "status", "trigger": '"trigger"', "campaign": "campaign_id", "rollback": "status"}
        # OR IGNORE: moving a row onto another's (campaign, lead) is refused, not an error
        # (PostgreSQL refuses with an IntegrityError: the caller rolls the one statement back).
        ignore = "" if ON_POSTGRES else " OR IGNORE"
        conn.execute(text(f"UPDATE{ignore} send_log SET {column[kind]} = :v WHERE id = :id"),
                     {"v": args[1], "id": args[0]})


@hyp_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(operation, max_size=60))
def test_any_insert_update_or_delete_keeps_the_summary_exact(bare, ops):
    with bare.begin() as conn:
        conn.exec_driver_sql("DELETE FROM send_log")
    for op in ops:
        try:
            with bare.begin() as conn:
                apply(conn, op)
                if op[0] == "rollback":  # a writer that fails after its write: both roll back
                    raise RuntimeError("rolled back")
        except (RuntimeError, IntegrityError):
            pass
        with bare.connect() as conn:
            assert summary(conn) == recount(conn), op


def test_direct_writes_over_weeks_read_the_same_as_live(bare):
    rng = random.Random(3)
    with bare.begin() as conn:
        for lead in range(1, 1500):
            at = moment(rng.uniform(0, 60 * 24 * 40))
            conn.execute(INSERT, {"c": rng.randint(1, 4), "lead": lead, "status": rng.choice(STATUSES),
                                  "trigger": rng.choice(TRIGGERS), "at": at})
        conn.execute(text("UPDATE send_log SET status = 'sent' WHERE id % 7 = 0"))
        later = "claimed_at + interval '90 minutes'" if ON_POSTGRES else "datetime(claimed_at, '+90 minutes')"
        conn.execute(text(f"UPDATE send_log SET claimed_at = {later} WHERE id % 5 = 0"))
        conn.execute(text("DELETE FROM send_log WHERE id % 11 = 0"))
    with bare.connect() as conn:
        assert summary(conn) == recount(conn)
        first, last = (as_datetime(t) for t in conn.exec_driver_sql(
            "SELECT min(claimed_at), max(claimed_at) FROM send_log").one())
        for scope in scopes([1, 2, 3, 4], first, last, rng):
            assert_same(conn, scope)
        days = timeline_sql.overview(conn, Scope())
        assert days[1] == 1440 and len(days[2]) > 30


def schema_without_summary(engine) -> None:
    """A database as an earlier SendOnce made it: no timeline_hour, no triggers."""
    tables = [t for t in db.metadata.sorted_tables if t.name != schema.SUMMARY]
    db.metadata.create_all(engine, tables=tables)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS timeline_hour")
        for name in schema.SUMMARY_TRIGGERS:
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}" + (" ON send_log" if ON_POSTGRES else ""))


def fill(engine, n: int, offset: int = 0) -> None:
    with engine.begin() as conn:
        for lead in range(offset + 1, offset + n + 1):
            status = ("sent", "unknown", "failed")[lead % 3]
            conn.execute(INSERT, {"c": 1 + lead % 2, "lead": lead, "status": status, "trigger": "cli",
                                  "at": moment(lead * 3.5)})


@pytest.fixture
def old_engine(tmp_path):
    engine = create_engine(database_url(tmp_path / "old.db"))
    yield engine
    engine.dispose()


def test_install_backfills_an_older_database_and_is_idempotent(old_engine):
    engine = old_engine
    schema_without_summary(engine)
    drop_send_log_foreign_keys(engine)
    fill(engine, 300)
    with engine.connect() as conn:
        assert not schema.summary_usable(conn)
        assert timeline_sql.analyse(conn, Scope()) == timeline_sql.live_analyse(conn, Scope())
    assert schema.install_summary(engine, db.metadata) is True
    assert schema.install_summary(engine, db.metadata) is False  # nothing to do the second time
    db.metadata.create_all(engine)  # the hook: also nothing to do
    with engine.connect() as conn:
        assert schema.summary_usable(conn)
        assert summary(conn) == recount(conn) and sum(summary(conn).values()) == 200
    fill(engine, 50, offset=300)  # from now on the triggers keep it
    with engine.connect() as conn:
        assert summary(conn) == recount(conn)
        assert_same(conn, Scope())


def test_install_repairs_a_dropped_or_outdated_trigger(bare):
    fill(bare, 100)
    with bare.begin() as conn:
        drop_trigger(conn, "timeline_hour_update")
        conn.exec_driver_sql("UPDATE send_log SET status = 'failed' WHERE status = 'sent'")  # unaccounted
        assert summary(conn) != recount(conn) and not schema.summary_usable(conn)
    assert schema.install_summary(bare, db.metadata) is True
    with bare.begin() as conn:
        assert summary(conn) == recount(conn) and schema.summary_usable(conn)
        # An older definition under the same name is replaced, and the summary rebuilt.
        drop_trigger(conn, "timeline_hour_delete")
        if ON_POSTGRES:
            conn.exec_driver_sql("CREATE OR REPLACE FUNCTION timeline_hour_delete() RETURNS trigger "
                                 "LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$")
            conn.exec_driver_sql("CREATE TRIGGER timeline_hour_delete AFTER DELETE ON send_log "
                                 "FOR EACH ROW EXECUTE FUNCTION timeline_hour_delete()")
        else:
            conn.exec_driver_sql("CREATE TRIGGER timeline_hour_delete AFTER DELETE ON send_log "
                                 "BEGIN SELECT 1; END")
        assert not schema.summary_usable(conn)
        conn.execute(text("DELETE FROM send_log WHERE id % 2 = 0"))
    db.metadata.create_all(bare)  # create_all runs the same repair
    with bare.connect() as conn:
        assert summary(conn) == recount(conn) and schema.summary_usable(conn)


def test_a_recreated_empty_table_is_refilled(bare):
    fill(bare, 60)
    with bare.begin() as conn:
        conn.exec_driver_sql("DROP TABLE timeline_hour")
    assert schema.install_summary(bare, db.metadata) is True
    with bare.connect() as conn:
        assert summary(conn) == recount(conn) != {}


@pytest.mark.skipif(ON_POSTGRES, reason="traces SQLite's BEGIN IMMEDIATE with sqlite3's trace callback")
def test_install_holds_the_write_lock(app, engine):
    # One BEGIN IMMEDIATE: nobody can write between the rebuild and the triggers.
    statements = []
    with immediate(engine) as conn:
        conn.connection.driver_connection.set_trace_callback(statements.append)
        schema.install_summary_on(conn, db.metadata)
        conn.connection.driver_connection.set_trace_callback(None)
    assert not any(s.startswith("BEGIN") for s in statements)  # it joined ours
    with engine.begin() as conn:
        drop_trigger(conn, "timeline_hour_insert")
    traced = []
    engine.dispose()

    def trace(dbapi_connection, _record):
        dbapi_connection.set_trace_callback(traced.append)

    from sqlalchemy import event

    event.listen(engine, "connect", trace)
    try:
        assert schema.install_summary(engine, db.metadata) is True
    finally:
        event.remove(engine, "connect", trace)
        engine.dispose()
    assert traced[0] == "BEGIN IMMEDIATE" and traced[-1] == "COMMIT"
    assert any(s.startswith("CREATE TRIGGER timeline_hour_insert") for s in traced)


@pytest.mark.skipif(ON_POSTGRES, reason="rebuilds send_log SQLite's way; PostgreSQL's own test follows")
def test_the_summary_is_not_used_without_a_unique_index_on_campaign_and_lead(bare):
    fill(bare, 40)
    with bare.connect() as conn:
        assert schema.summary_usable(conn)
    with bare.begin() as conn:  # rebuild send_log as a legacy table: same columns, no unique index
        conn.exec_driver_sql("CREATE TABLE old_log AS SELECT * FROM send_log")
        conn.exec_driver_sql("DROP TABLE send_log")
        conn.exec_driver_sql("ALTER TABLE old_log RENAME TO send_log")
        conn.exec_driver_sql("INSERT INTO send_log SELECT * FROM send_log WHERE id < 5")  # duplicates
        assert not schema.summary_usable(conn)
    with bare.connect() as conn:
        analysis = timeline_sql.analyse(conn, Scope())  # the live path, which finds them
        assert analysis.duplicate_sends == 3 and len(analysis.duplicate_groups) == 3


@pytest.mark.skipif(not ON_POSTGRES, reason="PostgreSQL's unique index check (pg_index)")
def test_the_summary_is_not_used_on_postgres_without_a_unique_index_on_campaign_and_lead(bare):
    fill(bare, 40)
    with bare.begin() as conn:
        assert schema.summary_usable(conn)
        for uq in inspect(conn).get_unique_constraints("send_log"):  # triggers stay in place
            conn.exec_driver_sql(f"ALTER TABLE send_log DROP CONSTRAINT {uq['name']}")
        assert not schema.stale_triggers(conn) and not schema.summary_usable(conn)
        # A partial or wider unique index does not rule duplicates out either; one within
        # (campaign_id, lead_id, step) does.
        conn.exec_driver_sql("CREATE UNIQUE INDEX p ON send_log (campaign_id, lead_id) WHERE status = 'sent'")
        conn.exec_driver_sql("CREATE UNIQUE INDEX w ON send_log (campaign_id, lead_id, variant_letter, step)")
        assert not schema.summary_usable(conn)
        conn.exec_driver_sql("CREATE UNIQUE INDEX k ON send_log (campaign_id, lead_id, step)")
        assert schema.summary_usable(conn)


@pytest.mark.parametrize("change", [
    "ALTER TABLE send_log DISABLE TRIGGER timeline_hour_insert",
    "COMMENT ON TRIGGER timeline_hour_update ON send_log IS 'edited by hand'",
    "CREATE OR REPLACE FUNCTION timeline_hour_delete() RETURNS trigger LANGUAGE plpgsql "
    "AS $$ BEGIN RETURN NULL; END $$",
    "DROP TRIGGER timeline_hour_insert ON send_log",
    "ALTER TABLE send_log DROP CONSTRAINT uq_send_log_campaign_lead_step",
])
@pytest.mark.skipif(not ON_POSTGRES, reason="PostgreSQL's triggers: function, source, enabled flag, comment")
def test_the_postgres_summary_check_sees_every_change(bare, change):
    # Any trigger change stale_triggers sees makes the summary unusable, and so does losing
    # the unique key; a rollback of the change makes it usable again.
    fill(bare, 10)
    with bare.connect() as conn:
        assert schema.summary_usable(conn)
        if "uq_send_log_campaign_lead_step" in change:  # and the wider one, which does not count
            conn.exec_driver_sql("ALTER TABLE send_log DROP CONSTRAINT "
                                 "uq_send_log_campaign_lead_step_variant")
        conn.exec_driver_sql(change)
        assert not schema.summary_usable(conn)
        assert bool(schema.stale_triggers(conn)) is ("CONSTRAINT" not in change)
        conn.rollback()
        assert schema.summary_usable(conn)


def test_median_interval_takes_the_most_recent_sends_ties_broken_by_id(bare, monkeypatch):
    fill(bare, 120)
    with bare.begin() as conn:  # ties: several sends in the same microsecond
        conn.execute(text("UPDATE send_log SET claimed_at = (SELECT max(claimed_at) FROM send_log) "
                          "WHERE id % 9 = 0"))
    monkeypatch.setattr(timeline_sql, "MEDIAN_SAMPLE", 17)
    with bare.connect() as conn:
        rows = conn.exec_driver_sql("SELECT campaign_id, claimed_at FROM send_log WHERE status IN "
                                    "('sent', 'unknown') ORDER BY claimed_at DESC, id DESC LIMIT 17").all()
        per_campaign: dict[int, list[datetime]] = {}
        for campaign_id, at in rows:
            per_campaign.setdefault(campaign_id, []).append(as_datetime(at))
        gaps = [(a - b).total_seconds() for times in per_campaign.values()
                for a, b in itertools.pairwise(times)]
        assert timeline_sql.median_interval(conn, Scope()) == statistics.median(gaps)


@pytest.mark.parametrize("sample", [1, 2, 3, 4, 5, 16, 17, 1000])
def test_median_interval_is_the_median_of_the_gaps_for_any_count(bare, monkeypatch, sample):
    # PostgreSQL finds the middle gap(s) in SQL, SQLite in Python: the float statistics.median
    # gives either way, for none, one, an odd and an even number of gaps of days, hours and
    # microseconds, two campaigns interleaved.
    fill(bare, 90)
    with bare.begin() as conn:
        conn.execute(text(SPREAD))
    monkeypatch.setattr(timeline_sql, "MEDIAN_SAMPLE", sample)
    with bare.connect() as conn:
        rows = conn.execute(text("SELECT campaign_id, claimed_at FROM send_log WHERE status IN "
                                 "('sent', 'unknown') ORDER BY claimed_at DESC, id DESC LIMIT :n"),
                            {"n": sample}).all()
        per_campaign: dict[int, list[datetime]] = {}
        for campaign_id, at in rows:
            per_campaign.setdefault(campaign_id, []).append(as_datetime(at))
        gaps = [(a - b).total_seconds() for times in per_campaign.values()
                for a, b in itertools.pairwise(sorted(times, reverse=True))]
        assert timeline_sql.median_interval(conn, Scope()) == (statistics.median(gaps) if gaps else None)


# Sends spread over days, hours and minutes, with microseconds.
SPREAD = ("UPDATE send_log SET claimed_at = timestamp '2026-03-02 08:00:00' "
          "+ (id * id * 3731 % 200000) * interval '1 second' "
          "+ (id * 7919 % 1000000) * interval '1 microsecond'"
          if ON_POSTGRES else
          "UPDATE send_log SET claimed_at = datetime('2026-03-02 08:00:00', "
          "'+' || (id * id * 3731 % 200000) || ' seconds') || '.' || printf('%06d', id * 7919 % 1000000)")


def page_html(client, url: str) -> str:
    html = client.get(url).get_data(as_text=True)
    return html.replace(csrf_value(html), "") if csrf_value(html) else html


def csrf_value(html: str) -> str | None:
    import re

    found = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html)
    return found.group(1) if found else None


def test_the_page_from_the_summary_is_the_page_from_send_log(engine, runner, smtp, client, login):  # noqa: F811
    cid = make_campaign(engine, 8)
    other = make_campaign(engine, 4, name="other")
    for _ in range(8):
        runner.invoke(args=["send-due"])
    with immediate(engine) as conn:  # spread the sends over days, hours and minutes
        conn.execute(text(SPREAD))
        conn.execute(text("UPDATE send_log SET \"trigger\" = 'button' WHERE id % 3 = 0"))
    login()
    urls = ["/timeline", f"/campaigns/{cid}/timeline", f"/campaigns/{other}/timeline?fragment=1",
            "/timeline?from=2026-03-02T09:30:10&to=2026-03-03T14:00&tz=Europe/Warsaw",
            "/timeline?from=2026-03-02T10:05&to=2026-03-02T10:55", "/timeline?to=2026-03-03T00:00:00"]
    with engine.connect() as conn:
        assert schema.summary_usable(conn)
    fast = [page_html(client, url) for url in urls]
    with engine.begin() as conn:  # without a trigger the summary cannot stand in: the live path
        drop_trigger(conn, "timeline_hour_delete")
        assert not schema.summary_usable(conn)
    assert [page_html(client, url) for url in urls] == fast
    assert "<rect " in fast[0] and "0 duplikatów" in fast[0]
    assert fast[0].count('<span class="status sent">') == 12  # every row's badge, one macro call


from test_web import login  # noqa: E402, F401 - the login fixture


@pytest.mark.skipif(ON_POSTGRES, reason="SQLite's query planner without ANALYZE statistics")
def test_page_queries_walk_the_claimed_at_indexes_without_statistics(bare):
    # A database init-db made has no ANALYZE statistics; there SQLite would serve
    # `status IN (...)` from ix_send_log_status and sort or filter every send (5 s at a
    # million rows). Every send_log access of the page must go through a claimed_at index.
    from sqlalchemy import event

    fill(bare, 30)
    seen: list[tuple[str, tuple]] = []

    def record(conn, cursor, sql, params, context, many) -> None:
        seen.append((sql, params))

    event.listen(bare, "before_cursor_execute", record)
    hour = T0.replace(minute=0)
    with bare.connect() as conn:
        assert not conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE name = 'sqlite_stat1'").all()
        for scope in (Scope(), Scope(1), Scope(None, hour + timedelta(minutes=5), hour + timedelta(hours=30)),
                      Scope(2, hour + timedelta(minutes=5), hour + timedelta(minutes=50))):
            timeline_sql.overview(conn, scope)
            timeline_sql.events_page(conn, scope, 2, 10)
            list(timeline_sql.all_events(conn, scope))
        event.remove(bare, "before_cursor_execute", record)
        plans = {sql: [row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params)]
                 for sql, params in seen if "FROM send_log" in sql}
    assert len(plans) >= 6
    for sql, plan in plans.items():
        reads = [step for step in plan if " send_log" in step]
        by_time = ("ix_send_log_claimed", "ix_send_log_campaign_claimed")
        assert reads and all(any(index in step for index in by_time) for step in reads), (sql, plan)


def test_the_hour_label_is_the_pages_own_on_both_dialects(bare):
    # The triggers' and the rebuild's SQL label an hour as timeline/live.py's Python does.
    at = datetime(2026, 3, 2, 8, 59, 59, 999999)
    with bare.begin() as conn:
        conn.execute(INSERT, {"c": 1, "lead": 1, "status": "sent", "trigger": "cli", "at": str(at)})
        assert at.strftime(schema.HOUR_FORMAT) == "2026-03-02 08:00"
        assert summary(conn) == {(1, "2026-03-02 08:00", "cli"): 1}
        schema.rebuild_summary(conn)
        assert summary(conn) == {(1, "2026-03-02 08:00", "cli"): 1}
