"""campaign_state_count equals a live GROUP BY of campaign_lead by counted state, whoever
changes the rows (step advances included).
On both dialects: SQLite's triggers, PostgreSQL's plpgsql ones (storage/schema.py)."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import delete, insert, select, text, update

from app import create_app
from conftest import ON_POSTGRES, database_url
from core import campaigns, importer, leads, sequences, stats
from delivery.transport import make_transport
from helpers import lead_csv, make_campaign
from models import Campaign, CampaignLead, CampaignStateCount, DelayUnit, EnrollmentState, Trigger, db
from sender import Claim, Settings, claim_next, send_batch
from storage import backup, schema
from storage.database import immediate, is_busy
from storage.timeutil import utcnow
from test_sequences import NOW, at, deliver_at, make_sequence, send_at

pytestmark = pytest.mark.postgres

LIVE = schema.RECOUNT  # by counted state: `waiting` for a pending enrollment at a later step


def live(engine) -> dict[tuple[int, str], int]:
    with engine.connect() as conn:
        return {(c, s): n for c, s, n in conn.execute(text(LIVE))}


def kept(engine) -> dict[tuple[int, str], int]:
    """The counter table, zero rows left out (a state a campaign has left keeps its row)."""
    with engine.connect() as conn:
        rows = conn.execute(select(CampaignStateCount.campaign_id, CampaignStateCount.state,
                                   CampaignStateCount.n)).all()
    assert all(n >= 0 for _, _, n in rows), rows
    return {(c, s): n for c, s, n in rows if n}


def broken_rules(engine) -> list[str]:
    """The backup's consistency checks (storage/backup.py) that fail on this database."""
    with engine.connect() as conn:
        return [name for name, sql in backup.checks(conn).items() if conn.execute(text(sql)).scalar()]


def run_batch(app, campaign_id: int, limit: int = 10) -> None:
    with app.app_context():
        transport = make_transport(app.config)
        try:
            send_batch(db.engine, Settings.from_config(app.config), transport, campaign_id,
                       Trigger.BUTTON, limit=limit)
        finally:
            transport.close()


def drop_trigger(conn, name: str, table: str = "campaign_lead") -> None:
    conn.execute(text(f"DROP TRIGGER {name}" + (f" ON {table}" if ON_POSTGRES else "")))


def forget_counters(engine) -> None:
    """What a database made before the counters looks like: no triggers, no table."""
    with immediate(engine) as conn:
        for name in schema.TRIGGERS:
            drop_trigger(conn, name)
        conn.execute(text(f"DROP TABLE {schema.COUNTS}"))


def counting_nothing(conn, name: str) -> None:
    """Replace a trigger by an older definition under the same name, one that counts nothing."""
    drop_trigger(conn, name)
    if ON_POSTGRES:
        conn.execute(text(f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql "
                          "AS $$ BEGIN RETURN NULL; END $$"))
        conn.execute(text(f"CREATE TRIGGER {name} AFTER INSERT ON campaign_lead "
                          f"FOR EACH ROW EXECUTE FUNCTION {name}()"))
    else:
        conn.execute(text(f"CREATE TRIGGER {name} AFTER INSERT ON campaign_lead BEGIN SELECT 1; END"))


def triggers_in_place(engine) -> bool:
    with engine.connect() as conn:
        installed = schema.installed_triggers(conn, f"{schema.COUNTS}_")
        return installed == schema.wanted_triggers(conn, schema.COUNTS)


def test_counts_follow_enrollment_sends_failures_skips_and_deletes(app, engine, smtp):
    smtp.recorder.rcpt_replies["lead0001@example.com"] = ["550 5.1.1 no such user"]
    smtp.recorder.rcpt_replies["lead0002@example.com"] = ["451 4.3.0 busy"] * 2
    cid = make_campaign(engine, 8)
    assert kept(engine) == live(engine) == {(cid, "pending"): 8}
    other = make_campaign(engine, 3, start=False)  # the same leads, in a second campaign
    with immediate(engine) as conn:  # suppressed before its turn: the engine skips it
        conn.execute(text("INSERT INTO suppression (email, reason, detail, created_at) "
                          "VALUES ('lead0003@example.com', 'manual', '', :now)"), {"now": utcnow()})
    run_batch(app, cid, limit=3)  # stops with lead0002 claimed, waiting for its retry
    assert kept(engine) == live(engine)
    assert live(engine)[(cid, "sending")] == 1
    run_batch(app, cid, limit=30)
    states = live(engine)
    assert {s for c, s in states if c == cid} >= {"sent", "failed", "skipped"}, states
    assert kept(engine) == states
    third = make_campaign(engine, 1, start=False)
    with immediate(engine) as conn:  # writers the engine never uses: raw SQL, other columns
        conn.execute(update(CampaignLead).where(CampaignLead.campaign_id == other,
                                                CampaignLead.lead_id == 2).values(campaign_id=third))
        conn.execute(update(CampaignLead).values(variant_letter=CampaignLead.variant_letter))
        gone = conn.execute(delete(CampaignLead).where(CampaignLead.campaign_id == other)).rowcount
    assert gone == 2
    assert kept(engine) == live(engine)
    report = importer.import_leads(engine, lead_csv(12))
    assert leads.enroll(engine, cid, report.lead_ids) > 0  # re-enrolled ones are no-ops
    assert kept(engine) == live(engine)


def test_a_failed_statement_leaves_the_counts_as_they_were(app, engine):
    cid = make_campaign(engine, 2, start=False)
    before = kept(engine)
    try:
        with immediate(engine) as conn:
            conn.execute(update(CampaignLead).values(state=EnrollmentState.SENT))
            raise RuntimeError("the write fails after the update")
    except RuntimeError:
        pass
    assert kept(engine) == before == live(engine) == {(cid, "pending"): 2}


def test_install_backfills_a_database_made_before_the_counters(app, engine, smtp):
    cid = make_campaign(engine, 5)
    forget_counters(engine)
    run_batch(app, cid, limit=2)  # the old version keeps sending and enrolling, no counts
    report = importer.import_leads(engine, lead_csv(9))
    leads.enroll(engine, cid, report.lead_ids)
    schema.install(engine, db.metadata)
    assert kept(engine) == live(engine) == {(cid, "sent"): 2, (cid, "pending"): 7}
    run_batch(app, cid, limit=1)  # and from now on the triggers keep it
    assert kept(engine) == live(engine) == {(cid, "sent"): 3, (cid, "pending"): 6}


def test_install_replaces_an_outdated_trigger_and_recounts(app, engine):
    cid = make_campaign(engine, 4, start=False)
    name = f"{schema.COUNTS}_insert"
    with immediate(engine) as conn:  # an older definition that counted nothing
        counting_nothing(conn, name)
    assert not triggers_in_place(engine)
    report = importer.import_leads(engine, lead_csv(6))
    leads.enroll(engine, cid, report.lead_ids)
    assert kept(engine) != live(engine)
    schema.install(engine, db.metadata)
    assert kept(engine) == live(engine) == {(cid, "pending"): 6}
    assert triggers_in_place(engine)
    if not ON_POSTGRES:
        with engine.connect() as conn:
            assert dict(conn.execute(text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' "
                                          f"AND name LIKE '{schema.COUNTS}%'")).all()) == schema.TRIGGERS


def test_install_on_an_installed_database_changes_nothing(app, engine):
    make_campaign(engine, 3, start=False)
    with immediate(engine) as conn:  # a marker no recount would keep
        conn.execute(text(f"INSERT INTO {schema.COUNTS} VALUES (999, 'pending', 7)"))
    schema.install(engine, db.metadata)
    schema.install(engine, db.metadata)
    assert kept(engine)[(999, "pending")] == 7


def test_plain_create_all_installs_the_triggers_too(config, tmp_path):
    # Code that calls db.create_all() directly (older tests, scripts) gets them as well.
    app = create_app({**config, "SQLALCHEMY_DATABASE_URI": database_url(tmp_path / "plain.db")})
    with app.app_context():
        db.create_all()
        cid = make_campaign(db.engine, 3, start=False)
        assert kept(db.engine) == live(db.engine) == {(cid, "pending"): 3}
        db.engine.dispose()


def test_progress_reads_the_counts(app, engine, smtp):
    cid = make_campaign(engine, 4)
    run_batch(app, cid, limit=3)
    with app.app_context():
        campaign = db.session.get(Campaign, cid)
        figures = stats.progress(db.session, [campaign])[cid]
    assert (figures.total, figures.sent, figures.pending) == (4, 3, 1)
    assert figures.last_sent_at is not None


def test_a_lead_waiting_for_its_next_step_is_counted_apart_through_every_advance(app, engine, settings, smtp):
    cid = make_sequence(engine, 3, steps=((2, DelayUnit.DAYS),))
    assert kept(engine) == live(engine) == {(cid, "pending"): 3}
    assert send_at(app, engine, settings, cid, NOW).sent == 3  # step 1 out: all wait for step 2
    assert kept(engine) == live(engine) == {(cid, "waiting"): 3}
    claim = claim_next(engine, settings, cid, Trigger.CLI, at(days=2))  # step 2 due and claimed
    assert isinstance(claim, Claim) and claim.step == 2
    assert kept(engine) == live(engine) == {(cid, "waiting"): 2, (cid, "sending"): 1}
    waiting = min({1, 2, 3} - {claim.lead_id})
    assert sequences.stop(engine, cid, waiting, "person", at(days=2)) == 1
    assert kept(engine) == live(engine) == {(cid, "waiting"): 1, (cid, "sending"): 1, (cid, "stopped"): 1}
    deliver_at(app, engine, settings, claim, at(days=2))  # the last step: the lead is complete
    assert kept(engine) == live(engine) == {(cid, "waiting"): 1, (cid, "sent"): 1, (cid, "stopped"): 1}
    with immediate(engine) as conn:  # a write of `step` alone moves the lead between counts too
        moved = conn.execute(update(CampaignLead).where(CampaignLead.campaign_id == cid,
                                                        CampaignLead.state == "pending").values(step=1))
    assert moved.rowcount == 1
    assert kept(engine) == live(engine) == {(cid, "pending"): 1, (cid, "sent"): 1, (cid, "stopped"): 1}
    assert broken_rules(engine) == []


def test_progress_counts_waiting_leads_as_open_not_finished(app, engine, settings, smtp):
    cid = make_sequence(engine, 4, steps=((2, DelayUnit.DAYS),))
    send_at(app, engine, settings, cid, NOW)
    with app.app_context():
        figures = stats.progress(db.session, [db.session.get(Campaign, cid)])[cid]
    assert (figures.total, figures.pending, figures.waiting, figures.sent) == (4, 0, 4, 0)
    assert figures.unfinished == 4 and figures.done_percent == 0


@pytest.mark.skipif(ON_POSTGRES, reason="the bench generator writes an SQLite file with sqlite3")
def test_the_bench_generator_leaves_exact_counts(tmp_path):
    # The bench and chaos databases are bulk-loaded with bare sqlite3: the triggers count them.
    import sqlite3

    from bench import generate

    made = generate.generate(tmp_path / "bench.db", generate.Spec(leads=300, campaigns=3, sends=500))
    with sqlite3.connect(made.path) as conn:
        counts = conn.execute(f"SELECT campaign_id, state, n FROM {schema.COUNTS} WHERE n != 0").fetchall()
        assert sorted(counts) == sorted(conn.execute(LIVE).fetchall())
    assert sum(n for _, _, n in counts) == 900


@pytest.mark.skipif(not ON_POSTGRES, reason="PostgreSQL's own ways to lose a trigger")
@pytest.mark.parametrize("damage", ["drop", "disable", "replace the function", "re-create by hand"])
def test_a_damaged_postgres_trigger_is_detected_and_reinstalled_with_a_recount(app, engine, damage):
    cid = make_campaign(engine, 3, start=False)
    name = f"{schema.COUNTS}_update"
    with immediate(engine) as conn:
        if damage == "drop":
            drop_trigger(conn, name)
        elif damage == "disable":
            conn.execute(text(f"ALTER TABLE campaign_lead DISABLE TRIGGER {name}"))
        elif damage == "replace the function":
            conn.execute(text(f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql "
                              "AS $$ BEGIN RETURN NULL; END $$"))
        else:  # the same function, but without the WHEN clause and our comment
            drop_trigger(conn, name)
            conn.execute(text(f"CREATE TRIGGER {name} AFTER UPDATE ON campaign_lead "
                              f"FOR EACH ROW EXECUTE FUNCTION {name}()"))
    assert not triggers_in_place(engine)
    skip = update(CampaignLead).values(state=EnrollmentState.SKIPPED)
    with immediate(engine) as conn:  # a write the damaged trigger does not count (or counts twice)
        conn.execute(skip.where(CampaignLead.lead_id == 1))
    if damage != "re-create by hand":
        assert kept(engine) != live(engine)
        assert broken_rules(engine) == [f"{schema.COUNTS} equals a recount of campaign_lead"]
    schema.install(engine, db.metadata)
    assert triggers_in_place(engine) and broken_rules(engine) == []
    assert kept(engine) == live(engine) == {(cid, "pending"): 2, (cid, "skipped"): 1}
    with immediate(engine) as conn:  # and from now on the triggers keep it
        conn.execute(skip.where(CampaignLead.lead_id == 2))
    assert kept(engine) == live(engine) == {(cid, "pending"): 1, (cid, "skipped"): 2}


def test_counts_stay_exact_under_concurrent_writers(app, engine):
    # Threads, each with its own connection and no write lock of ours (plain transactions,
    # as a person's psql session writes): the triggers' upserts meet on the same counter
    # rows, the first (campaign, state) row included. On SQLite they queue (busy_timeout).
    cid = campaigns.create(engine, name="race", from_address="team@sendonce.test", from_name="Team")
    ids, threads, errors = importer.import_leads(engine, lead_csv(240)).lead_ids, 6, []
    enrollment = CampaignLead.__table__

    def retried(write) -> None:
        for _ in range(50):
            try:
                with engine.begin() as conn:
                    write(conn)
                return
            except Exception as exc:  # deadlock or lock timeout: try again, as the engine does
                if not is_busy(exc):
                    raise

    def writer(mine: list[int]) -> None:
        try:
            for lead_id in mine:
                retried(lambda conn, lead_id=lead_id: conn.execute(insert(enrollment).values(
                    campaign_id=cid, lead_id=lead_id, variant_letter="A", state="pending",
                    enrolled_at=utcnow())))
            for i, lead_id in enumerate(mine):
                state = ("sent", "failed", "skipped")[i % 3]
                retried(lambda conn, lead_id=lead_id, state=state: conn.execute(
                    update(CampaignLead).where(CampaignLead.lead_id == lead_id).values(state=state)))
            for lead_id in mine[::5]:
                retried(lambda conn, lead_id=lead_id: conn.execute(
                    delete(CampaignLead).where(CampaignLead.lead_id == lead_id)))
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    workers = [threading.Thread(target=writer, args=(ids[i::threads],)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    assert kept(engine) == live(engine)
    assert sum(live(engine).values()) == 240 - len([i for k in range(threads) for i in ids[k::threads][::5]])
