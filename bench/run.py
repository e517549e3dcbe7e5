"""`make bench`: SendOnce against its ceilings, each measured beside it in the same run.

Numbers on a shared machine drift, so every figure is a ratio against a ceiling measured
moments before or after it, on the same file settings (WAL, synchronous=FULL):
1. claims: send_batch (claim + deliver) with a null transport vs a bare-sqlite3 claim loop, for
   1, 2, 4, 8 processes over 20,000 enrolled leads, 0 duplicates checked after each run;
2. smtp: the engine sending N messages to a local aiosmtpd sink vs a bare smtplib loop over
   one reused connection sending the same rendered messages to the same sink;
3. import: importer.run_import of a 100,000-row CSV vs csv.reader + executemany;
4. pages: median and p95 server time at 100,000 leads / 1,000,000 send_log rows vs the
   page's own SQL run bare (see pages_worker.py), the timeline page when it exists. Targets:
   p95 ≤ 50 ms, and ≤ 2× the bare SQL only for pages whose own SQL costs more than the empty
   page's floor (below the floor, the fixed cost of any admin page is what it measures);
5. memory: peak RSS of an engine process in 1 and of the page-rendering process in 4;
6. legacy: upload+analysis time of a 1,000,000-row legacy send log, and the time of each view
   of it (page 1, a deep page, another zone, English, a Since/Until period), target ≤ 150 ms;
7. mailboxes: sender.tick sending through 1, 4 and 8 mailboxes (a lane, a thread and a
   connection each) to a sink that answers each message after 100 ms, vs as many parallel
   bare smtplib connections to the same sink, target ≥ 0.8; and against a sink answering at
   once (1 and 8), reported. Every lead must reach the sink exactly once;
8. replies: core.replies.read_all over N messages (replies, out-of-office, delivery reports
   answering real send_log Message-IDs) delivered over LMTP into a throwaway Dovecot
   (tests/imap_server.py), and a second pass with nothing new, vs a bare IMAPClient
   FETCH BODY.PEEK[] + email parsing of the same; every message recorded exactly once;
9. postgres (#19): claims/s on PostgreSQL (a throwaway cluster, tests/pg_server.py) with
   1, 2, 4, 8 processes on 1 campaign and on 8 (taken in turn) vs a bare psycopg claim loop
   (campaign row FOR UPDATE, enrollment FOR UPDATE SKIP LOCKED, nextval), target ≥ 0.5,
   0 duplicates checked after each run, SQLite's engine figure beside; and section 4's pages
   on the same 1,000,000 rows copied into PostgreSQL (bench/pgdata.py) vs their SQL run with
   bare psycopg ("not ported" for a page whose SQL PostgreSQL cannot run yet).
One markdown table is printed and appended to BENCHMARKS.md with the date, nproc, the CPU
model and the load average (other work on the machine shows up there, not in the ratios).

    make bench                              # default sizes, ~10 minutes on 2 cores
    .venv/bin/python -m bench.run --quick   # small sizes, a smoke run of every section
    .venv/bin/python -m bench.run --only claims,pages
    .venv/bin/python -m bench.run --only mailboxes --mailboxes 1,4,8,16 --mailbox-delay 0.05
    .venv/bin/python -m bench.run --full    # claims run every lead to the end, bigger N
    .venv/bin/python -m bench.run --profile # also cProfile the engine and each page
    .venv/bin/python -m bench.run --only postgres --pg-parts pages   # PostgreSQL's pages only

Files go to bench/results/ (git-ignored); the 1,000,000-row pages database is generated
once per (sizes, schema, generator) fingerprint and reused by later runs (--fresh: anew).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import shutil
import smtplib
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import generate, legacy_bench
from tests.conftest import app_config, env_for

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"

SECTIONS = ("claims", "smtp", "import", "pages", "memory", "legacy", "mailboxes", "replies", "postgres")
PG_PARTS = ("claims", "pages")
PY = sys.executable


@dataclass(frozen=True)
class Sizes:
    claim_leads: int = 20_000
    procs: tuple[int, ...] = (1, 2, 4, 8)
    claim_seconds: float = 15.0  # per run; 0 = every lead, to the end
    smtp_messages: int = 500
    import_rows: int = 100_000
    page_leads: int = 100_000
    page_campaigns: int = 10
    page_sends: int = 1_000_000
    page_repeats: int = 25
    page_min_repeats: int = 7
    page_seconds: float = 20.0  # per page: stop repeating after this (min_repeats still run)
    legacy_rows: int = 1_000_000
    mailbox_counts: tuple[int, ...] = (1, 4, 8)  # against a sink answering after mailbox_delay
    mailbox_counts_at_once: tuple[int, ...] = (1, 8)  # against a sink answering at once
    mailbox_messages: int = 100  # per mailbox (lane)
    mailbox_delay: float = 0.1  # seconds before the sink answers the final dot
    reply_messages: int = 1000  # delivered into one Dovecot mailbox, read by core.replies
    pg_parts: tuple[str, ...] = ("claims", "pages")  # what section postgres measures
    pg_campaigns: tuple[int, ...] = (1, 8)  # the claim_leads enrollments spread over this many campaigns


DEFAULT = Sizes()
QUICK = Sizes(claim_leads=600, procs=(1, 2), claim_seconds=4, smtp_messages=60, import_rows=5_000,
              page_leads=5_000, page_campaigns=4, page_sends=20_000, page_repeats=5, page_min_repeats=3,
              page_seconds=5, legacy_rows=20_000, mailbox_messages=15, reply_messages=150)
FULL = replace(DEFAULT, claim_seconds=0, smtp_messages=2_000, page_repeats=50, page_min_repeats=20,
               page_seconds=60, mailbox_messages=300, reply_messages=5000)


@dataclass
class Row:
    section: str
    measure: str
    value: str
    ceiling: str = "—"
    ratio: float | None = None
    target: str = "—"
    met: bool | None = None
    notes: str = ""


@dataclass
class Context:
    sizes: Sizes
    profile: bool
    fresh: bool
    rows: list[Row] = field(default_factory=list)
    rss: dict[str, int] = field(default_factory=dict)  # kB, for the memory section
    # SQLite's figures from this run, shown beside PostgreSQL's: (processes, campaigns) ->
    # engine claims/s (section 1); page name -> its result (section 4).
    sqlite_claims: dict[tuple[int, int], float] = field(default_factory=dict)
    sqlite_pages: dict[str, dict] = field(default_factory=dict)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def config_for(db: Path, smtp_port: int = 0) -> dict:
    """The tests' configuration, as a production process would run it (not TESTING)."""
    return app_config(db, smtp_port, TESTING=False, SCHEDULER_ENABLED=False, LOG_LEVEL="WARNING")


def fresh_copy(template: Path, target: Path) -> Path:
    """A private copy of a checkpointed template database (its -wal/-shm files removed)."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(template, target)
    return target


def template_db(name: str, spec: generate.Spec, fresh: bool = False) -> Path:
    """Generated once per fingerprint (spec + schema + generator), then reused."""
    path = RESULTS / f"{name}-{generate.fingerprint(spec)}.db"
    if fresh or not path.exists():
        for old in RESULTS.glob(f"{name}-*.db*"):
            old.unlink()
        log(f"generating {path.name}: {spec.leads} leads, {spec.campaigns} campaigns, {spec.sends} sends")
        made = generate.generate(path.with_suffix(".tmp"), spec, force=True)
        for suffix in ("-wal", "-shm"):
            Path(f"{made.path}{suffix}").unlink(missing_ok=True)
        made.path.rename(path)
        log(f"generated in {made.seconds:.0f} s")
    return path


def bare_connect(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db, isolation_level=None)
    for pragma in ("journal_mode=WAL", "busy_timeout=10000", "synchronous=FULL", "foreign_keys=ON"):
        conn.execute(f"PRAGMA {pragma}")
    return conn


# --- 1. claims ------------------------------------------------------------------------


def run_claimers(mode: str, db: Path | str, n: int, seconds: float, profile_to: Path | None = None,
                 script: Path | None = None, campaigns: str = "1", config: dict | None = None) -> dict:
    """Start n claimer processes at one instant; their summed rate and what each reported.

    `script` may be a wrapper that patches a proposed fix in before claim_worker runs
    (default: bench/claim_worker.py itself, run as a module). `campaigns`: the ids each
    process takes in turn (claim_worker.Turns), process i beginning with the i-th.
    `config`: the app's (default: config_for(db)); a PostgreSQL run's names its database.
    """
    env = env_for(config or config_for(db))
    command = [PY, str(script)] if script else [PY, "-m", "bench.claim_worker"]
    procs = []
    try:
        for i in range(n):
            worker_env = dict(env, BENCH_PROFILE=str(profile_to)) if profile_to and i == 0 else env
            procs.append(subprocess.Popen([*command, mode, str(db), campaigns, str(i)], cwd=ROOT,
                                          env=worker_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          text=True))
        for proc in procs:
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"{mode} claimer {proc.pid} failed to start")
        start = time.time() + 0.3
        stop = start + seconds if seconds else 0
        for proc in procs:
            proc.stdin.write(f"{start} {stop}\n")
            proc.stdin.flush()
        reports = []
        for proc in procs:
            out = proc.communicate(timeout=3600)[0]
            if proc.returncode != 0:
                raise RuntimeError(f"{mode} claimer {proc.pid} exited {proc.returncode}")
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    claims = sum(r["claims"] for r in reports)
    elapsed = max(r["finished"] for r in reports) - min(r["began"] for r in reports)
    return {"claims": claims, "rate": claims / elapsed, "elapsed": elapsed, "reports": reports,
            "errors": sum(r["errors"] for r in reports),
            "maxrss_kb": max(r["maxrss_kb"] for r in reports)}


def check_claims(db: Path, leads: int, claimed: int, to_the_end: bool) -> tuple[bool, str]:
    """Duplicates and losses after a run: the database and the processes must agree."""
    conn = bare_connect(db)
    try:
        return claim_verdict(conn, leads, claimed, to_the_end)
    finally:
        conn.close()


def check_claims_pg(url: str, leads: int, claimed: int, to_the_end: bool) -> tuple[bool, str]:
    """check_claims on a PostgreSQL database (psycopg, its SQLAlchemy URL)."""
    import psycopg

    from bench.claim_worker import pg_conninfo

    with psycopg.connect(pg_conninfo(url), autocommit=True) as conn:
        return claim_verdict(conn, leads, claimed, to_the_end)


def claim_verdict(conn, leads: int, claimed: int, to_the_end: bool) -> tuple[bool, str]:
    """The checks of a claim run on an open sqlite3 or psycopg connection (the SQL reads the same)."""
    rows = conn.execute("SELECT count(*) FROM send_log").fetchone()[0]
    distinct = conn.execute("SELECT count(*) FROM (SELECT DISTINCT campaign_id, lead_id FROM send_log) AS d"
                            ).fetchone()[0]
    states = dict(conn.execute("SELECT state, count(*) FROM campaign_lead GROUP BY state").fetchall())
    not_sent = conn.execute("SELECT count(*) FROM send_log WHERE status != 'sent'").fetchone()[0]
    duplicates = rows - distinct + max(claimed - rows, 0)
    ok = (duplicates == 0 and rows == claimed == states.get("sent", 0) and not_sent == 0
          and states.get("pending", 0) == leads - rows and (rows == leads or not to_the_end))
    note = f"{rows:,} of {leads:,} leads claimed once each, {duplicates} duplicates"
    if not ok:
        note += f" — CHECK FAILED: send_log {rows}, distinct {distinct}, counted {claimed}, states {states}"
    return ok, note


def section_claims(ctx: Context) -> None:
    sizes = ctx.sizes
    template = template_db("claims", generate.Spec(leads=sizes.claim_leads, campaigns=1, sends=0),
                           ctx.fresh)
    run_db = RESULTS / "claims-run.db"
    how = "to the end" if not sizes.claim_seconds else f"{sizes.claim_seconds:.0f} s a run"
    for n in sizes.procs:
        result = {}
        for mode in ("bare", "engine", "bare-grouped"):
            fresh_copy(template, run_db)
            profiled = ctx.profile and mode == "engine" and n == 1
            profile_to = RESULTS / "profile-claims-engine.prof" if profiled else None
            log(f"claims: {n} {mode} process(es), {how}")
            result[mode] = run_claimers(mode, run_db, n, sizes.claim_seconds, profile_to)
            to_the_end = not sizes.claim_seconds
            ok, note = check_claims(run_db, sizes.claim_leads, result[mode]["claims"], to_the_end)
            result[mode]["ok"], result[mode]["note"] = ok and result[mode]["errors"] == 0, note
            if profile_to:
                write_profile_text(profile_to, RESULTS / "profile-claims-engine.txt")
        bare, engine, grouped = result["bare"], result["engine"], result["bare-grouped"]
        ratio = engine["rate"] / bare["rate"]
        checked = bare["ok"] and engine["ok"] and grouped["ok"]
        ctx.rows.append(Row("claims", f"claims/s, {n} process{'es' if n > 1 else ''}",
                            f"{engine['rate']:,.1f}/s", f"{bare['rate']:,.1f}/s", ratio, "≥ 0.5, 0 dup",
                            ratio >= 0.5 and checked,
                            f"engine: {engine['note']}; bare: {bare['note'].split(' leads')[0]} claimed; "
                            f"a bare loop committing once per message as the engine does: "
                            f"{grouped['rate']:,.1f}/s, ratio {engine['rate'] / grouped['rate']:.2f}"))
        ctx.rss[f"engine-{n}"] = engine["maxrss_kb"]
        ctx.sqlite_claims[(n, 1)] = engine["rate"]
        ctx.rss[f"bare-{n}"] = bare["maxrss_kb"]


def write_profile_text(prof: Path, text: Path, limit: int = 45) -> None:
    import pstats

    out = io.StringIO()
    stats = pstats.Stats(str(prof), stream=out)
    stats.sort_stats("cumulative").print_stats(limit)
    stats.sort_stats("tottime").print_stats(25)
    text.write_text(out.getvalue())
    log(f"profile: {text.relative_to(ROOT)}")


# --- 2. SMTP --------------------------------------------------------------------------


class Sink:
    """bench/sink.py in its own process; `delay`: seconds before it answers each final dot."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.proc = subprocess.Popen([PY, "-m", "bench.sink", "--delay", str(delay)], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())

    def _ask(self, command: str) -> str:
        self.proc.stdin.write(f"{command}\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def count(self) -> int:
        return int(self._ask("count"))

    def stats(self) -> dict:
        """Messages received since the last reset: total, distinct recipients, duplicates."""
        return json.loads(self._ask("stats"))

    def reset(self) -> None:
        self._ask("reset")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()


class RecordingTransport:
    """Wraps the app's SmtpTransport; keeps each message it sends (a reference, no copy)."""

    def __init__(self, inner) -> None:
        self.inner, self.sent = inner, []

    def send(self, msg, sender: str, recipient: str, deadline: float = float("inf")):
        result = self.inner.send(msg, sender, recipient)
        self.sent.append((msg, sender, recipient))
        return result

    def close(self) -> None:
        self.inner.close()


def bare_smtp(port: int, messages: list) -> float:
    """smtplib over one connection: the same message objects, serialized as the engine does."""
    from delivery.messages import MAIL_POLICY

    began = time.perf_counter()
    conn = smtplib.SMTP("127.0.0.1", port, timeout=30)
    conn.ehlo()
    for msg, sender, recipient in messages:
        conn.sendmail(sender, [recipient], msg.as_bytes(policy=MAIL_POLICY))
    conn.quit()
    return time.perf_counter() - began


def section_smtp(ctx: Context) -> None:
    from app import create_app
    from delivery.transport import make_transport
    from models import Trigger, db
    from sender import Settings, send_batch

    n = ctx.sizes.smtp_messages
    template = template_db("smtp", generate.Spec(leads=n, campaigns=1, sends=0), ctx.fresh)
    db_path = fresh_copy(template, RESULTS / "smtp-run.db")
    sink = Sink()
    try:
        warm = [(_warmup_message(i), "warm@sendonce.test", f"warm{i}@example.com") for i in range(10)]
        bare_smtp(sink.port, warm)
        app = create_app(config_for(db_path, sink.port))
        with app.app_context():
            transport = RecordingTransport(make_transport(app.config))
            log(f"smtp: engine, {n} messages")
            before = sink.count()
            began = time.perf_counter()
            try:
                batch = send_batch(db.engine, Settings.from_config(app.config), transport, 1,
                                   Trigger.BUTTON, limit=n)
            finally:
                transport.close()
            engine_s = time.perf_counter() - began
            engine_received = sink.count() - before
            db.engine.dispose()
        log(f"smtp: bare smtplib, {n} messages")
        before = sink.count()
        bare_s = bare_smtp(sink.port, transport.sent)
        bare_received = sink.count() - before
    finally:
        sink.close()
    ok = batch.sent == n == engine_received == bare_received
    engine_rate, bare_rate = n / engine_s, n / bare_s
    ratio = engine_rate / bare_rate
    note = f"{n} messages each way; the sink received {engine_received} + {bare_received}"
    if not ok:
        note += f" — CHECK FAILED: engine reported {batch.sent} sent ({batch.stopped_by})"
    ctx.rows.append(Row("smtp", "messages/s via SMTP", f"{engine_rate:,.1f}/s", f"{bare_rate:,.1f}/s",
                        ratio, "≥ 0.8", ratio >= 0.8 and ok, note))


def _warmup_message(i: int):
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "warm@sendonce.test", f"warm{i}@example.com", "warm-up"
    msg.set_content("warm-up")
    return msg


# --- 3. import ------------------------------------------------------------------------


def bare_import(db: Path, data: bytes) -> float:
    """csv.reader + one executemany in one BEGIN IMMEDIATE: parse and insert, nothing else."""
    conn = bare_connect(db)
    now = datetime.now(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
    began = time.perf_counter()
    reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
    next(reader)
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("INSERT OR IGNORE INTO lead (email, first_name, last_name, company, tags, fields, "
                     "created_at) VALUES (?, ?, ?, ?, ?, '{}', ?)",
                     ((r[0], r[1], r[2], r[3], r[4], now) for r in reader))
    conn.execute("COMMIT")
    seconds = time.perf_counter() - began
    conn.close()
    return seconds


def section_import(ctx: Context) -> None:
    from app import create_app
    from core.importer import run_import
    from models import db

    rows = ctx.sizes.import_rows
    data = generate.lead_csv(rows)
    empty = template_db("empty", generate.Spec(leads=0, campaigns=0, sends=0), ctx.fresh)
    log(f"import: bare csv + executemany, {rows:,} rows")
    bare_s = bare_import(fresh_copy(empty, RESULTS / "import-bare.db"), data)
    db_path = fresh_copy(empty, RESULTS / "import-run.db")
    app = create_app(config_for(db_path))
    log(f"import: importer.run_import, {rows:,} rows")
    with app.app_context():
        if ctx.profile:
            import cProfile

            profiler = cProfile.Profile()
            began = time.perf_counter()
            report = profiler.runcall(run_import, db.engine, data)
            engine_s = time.perf_counter() - began
            profiler.dump_stats(RESULTS / "profile-import.prof")
            write_profile_text(RESULTS / "profile-import.prof", RESULTS / "profile-import.txt")
        else:
            began = time.perf_counter()
            report = run_import(db.engine, data)
            engine_s = time.perf_counter() - began
        with db.engine.connect() as conn:
            stored = conn.exec_driver_sql("SELECT count(*) FROM lead").scalar_one()
        db.engine.dispose()
    accounted = report.imported + report.merged + len(report.rejected) == rows
    ok = accounted and stored == report.imported
    ratio = bare_s / engine_s
    note = (f"{report.imported:,} new, {report.merged:,} merged, {len(report.rejected):,} rejected; "
            f"bare {bare_s:.1f} s")
    if not ok:
        note += f" — CHECK FAILED: {stored} rows stored"
    ctx.rows.append(Row("import", f"{rows:,}-row CSV, seconds", f"{engine_s:.1f} s", f"{bare_s:.1f} s",
                        ratio, "≥ 0.3", ratio >= 0.3 and ok, note))


# --- 6. legacy logs ---------------------------------------------------------------------

def section_legacy(ctx: Context) -> None:
    rows = ctx.sizes.legacy_rows
    db_path = RESULTS / "legacy-run.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    log(f"legacy: upload and view a {rows:,}-row send log")
    r = legacy_bench.run(rows, db_path, config_for(db_path))
    ok = r["stored"] > 0.9 * rows * 0.9  # ~90% SENT rows are stored; the rest left out
    ctx.rows.append(Row("legacy", f"{rows:,}-row log ({r['bytes'] / 2**20:.0f} MB): upload + analysis",
                        f"{r['upload_s']:.1f} s", notes=f"{r['stored']:,} sends stored (parse, analyse, "
                                                        "store; FAILED/OPENED rows left out)"
                                                        + ("" if ok else " — CHECK FAILED")))
    for name, v in r["views"].items():
        ctx.rows.append(Row("legacy", f"view: {name}, median / p95",
                            f"{v['median_ms']:.1f} / {v['p95_ms']:.1f} ms", target="≤ 150 ms",
                            met=v["median_ms"] <= 150,
                            notes=f"first view {v['first_ms']:.0f} ms"))
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)


# --- 4. pages -------------------------------------------------------------------------


def page_list(campaign: int) -> list[dict]:
    return [
        {"name": "floor (empty admin page)", "url": "/_bench/floor"},
        {"name": "dashboard", "url": "/"},
        {"name": "campaign", "url": f"/campaigns/{campaign}"},
        {"name": "leads, page 1", "url": "/leads"},
        {"name": "leads, search", "url": "/leads?q=kowalski"},
        {"name": "send log, failed", "url": f"/campaigns/{campaign}/log?status=failed"},
        # The timeline page is being built: measured once its route exists, skipped till then.
        {"name": "timeline", "url": "/timeline", "requires_rule": "/timeline"},
    ]


def run_pages(ctx: Context, repeats: int | None = None) -> dict:
    sizes = ctx.sizes
    template = template_db("pages", pages_spec(sizes), ctx.fresh)
    db_path = fresh_copy(template, RESULTS / "pages-run.db")
    result = render_pages(ctx, {"db": str(db_path)}, config_for(db_path), repeats)
    for suffix in ("", "-wal", "-shm"):  # ~0.5 GB at default sizes; the template stays
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    return result


def pages_spec(sizes: Sizes) -> generate.Spec:
    return generate.Spec(leads=sizes.page_leads, campaigns=sizes.page_campaigns, sends=sizes.page_sends)


def render_pages(ctx: Context, database: dict, config: dict, repeats: int | None = None) -> dict:
    """bench/pages_worker.py in a fresh process on one database (`database`: its job keys,
    "db" and on PostgreSQL "pg_url"); what it measured, its peak RSS kept in ctx.rss."""
    sizes = ctx.sizes
    repeats = repeats or sizes.page_repeats
    job = {**database, "pages": page_list(sizes.page_campaigns), "repeats": repeats,
           "min_repeats": min(sizes.page_min_repeats, repeats), "seconds_per_page": sizes.page_seconds,
           "profile_dir": str(RESULTS) if ctx.profile else None}
    job_path = RESULTS / "pages-job.json"
    job_path.write_text(json.dumps(job))
    log(f"pages: {len(job['pages'])} pages, up to {job['repeats']} times each")
    out = subprocess.run([PY, "-m", "bench.pages_worker", str(job_path)], cwd=ROOT,
                         env=env_for(config), stdout=subprocess.PIPE, text=True, check=True,
                         timeout=3600).stdout
    result = json.loads(out.strip().splitlines()[-1])
    ctx.rss["pages-pg" if "pg_url" in database else "pages"] = result.pop("_process")["maxrss_kb"]
    return result


def section_pages(ctx: Context) -> None:
    sizes = ctx.sizes
    results = run_pages(ctx)
    ctx.sqlite_pages.update(results)
    scale = f"{sizes.page_leads:,} leads, {sizes.page_sends:,} send_log rows"
    ctx.rows.extend(page_rows("pages", results, scale))


def page_rows(section: str, results: dict, scale: str, beside: dict | None = None) -> list[Row]:
    """The table's rows for one pages run: the floor, then each page against its bare SQL.
    `beside`: another run's results (SQLite's, for PostgreSQL's rows), quoted in the notes."""
    results = dict(results)
    floor = results.pop("floor (empty admin page)")
    other = _beside(beside or {}, "floor (empty admin page)")
    rows = [Row(section, "floor: empty admin page, median / p95",
                f"{floor['page']['median_ms']:.1f} / {floor['page']['p95_ms']:.1f} ms",
                notes="login check, base.html, language form, no query of its own: what every "
                      "page below pays before its own work (added by the bench, not an app route)" + other)]
    for name, r in results.items():
        if "skipped" in r:
            rows.append(Row(section, f"{name}: median / p95", "skipped", notes=r["skipped"]))
            continue
        if "failed" in r:
            rows.append(failed_page_row(section, name, r))
            continue
        page, bare = r["page"], r["bare"]
        ratio = page["median_ms"] / bare["median_ms"]
        # The targets: p95 ≤ 50 ms at this scale; and ≤ 2× its bare SQL only where that SQL
        # costs more than the empty page's floor (below it, the floor is the page's cost).
        sql_bound = bare["median_ms"] > floor["page"]["median_ms"]
        met = page["p95_ms"] <= 50 and (ratio <= 2 or not sql_bound)
        target = "p95 ≤ 50 ms, ≤ 2×" if sql_bound else "p95 ≤ 50 ms (SQL < floor: no ratio)"
        rows.append(Row(section, f"{name}: median / p95",
                        f"{page['median_ms']:.1f} / {page['p95_ms']:.1f} ms",
                        f"{bare['median_ms']:.1f} ms", ratio, target, met,
                        f"`{r['url']}`: {r['statements']} SQL statements ({r['distinct']} distinct), "
                        f"{page['n']} runs, {r['bytes'] // 1024} KiB; {scale}{_slowest(r, bare)}"
                        f"{_beside(beside or {}, name)}"))
    return rows


def _slowest(r: dict, bare: dict) -> str:
    """The statement costing the most of the page's bare SQL time (a quarter or more), shortened."""
    slowest = r.get("slowest")
    if not slowest or slowest["ms"] < bare["median_ms"] / 4 or slowest["ms"] < 1:
        return ""
    sql = slowest["sql"] if len(slowest["sql"]) <= 90 else slowest["sql"][:90] + "…"
    return f"; its slowest statement {slowest['ms']:.1f} ms: `{sql}`"


def _beside(results: dict, name: str) -> str:
    r = results.get(name)
    if not r or "page" not in r:
        return ""
    return f"; SQLite in this run: {r['page']['median_ms']:.1f} / {r['page']['p95_ms']:.1f} ms"


# Re-run only the PostgreSQL pages (e.g. once a page's SQL is ported), with the cached data.
PG_PAGES_AGAIN = "python -m bench.run --only postgres --pg-parts pages"


def failed_page_row(section: str, name: str, r: dict) -> Row:
    """A page that did not answer 200. On PostgreSQL a function SQLite has and PostgreSQL
    lacks (strftime, group_concat: UndefinedFunction) means its SQL is not ported yet."""
    not_ported = section == "postgres" and "UndefinedFunction" in r["failed"]
    if not_ported:
        return Row(section, f"{name}: median / p95", "not ported", target="p95 ≤ 50 ms",
                   notes=f"`{r['url']}` fails on PostgreSQL: {r['failed']}; its SQL is not ported yet "
                         f"(re-run: `{PG_PAGES_AGAIN}`)")
    return Row(section, f"{name}: median / p95", "failed", target="p95 ≤ 50 ms", met=False,
               notes=f"`{r['url']}`: {r['failed']} — CHECK FAILED")


# --- 5. memory ------------------------------------------------------------------------


def section_memory(ctx: Context) -> None:
    if not any(key.startswith("engine-") for key in ctx.rss):
        quick = replace(ctx.sizes, procs=(1,), claim_seconds=min(ctx.sizes.claim_seconds or 10, 10))
        section_claims(replace(ctx, sizes=quick, rows=[]))  # only for its peak RSS (shares ctx.rss)
    if "pages" not in ctx.rss:
        run_pages(ctx, repeats=3)
    engine = max(v for k, v in ctx.rss.items() if k.startswith("engine-"))
    bare = max(v for k, v in ctx.rss.items() if k.startswith("bare-"))
    ctx.rows.append(Row("memory", "peak RSS, engine claimer process", f"{engine / 1024:.0f} MiB",
                        f"{bare / 1024:.0f} MiB", engine / bare, "report",
                        notes="max over the claim runs' processes; ceiling: a bare-sqlite3 claimer"))
    ctx.rows.append(Row("memory", "peak RSS, page-rendering process", f"{ctx.rss['pages'] / 1024:.0f} MiB",
                        notes="create_app + test client rendering every page of section 4 at scale"))


# --- 7. mailboxes: parallel lanes against a server that takes 100 ms a message ----------


class Recording:
    """One lane's SmtpTransport; keeps each message it sends (a reference, no copy)."""

    def __init__(self, inner, sent: list) -> None:
        self.inner, self.sent = inner, sent

    def send(self, msg, sender: str, recipient: str, deadline: float = float("inf")):
        result = self.inner.send(msg, sender, recipient, deadline)
        self.sent.append((msg, sender, recipient))  # list.append: safe across lane threads
        return result

    def close(self) -> None:
        self.inner.close()


class LanePool:
    """The app's own pool (delivery.transport.MailboxTransports: one transport per mailbox,
    built from its row) with every message recorded, so the ceiling resends the very same."""

    def __init__(self, engine, config) -> None:
        from delivery.transport import MailboxTransports

        self.inner, self.sent = MailboxTransports(engine, config), []
        self.lanes: dict[int | None, Recording] = {}
        self.lock = threading.Lock()

    def for_mailbox(self, mailbox_id: int | None) -> Recording:
        transport = self.inner.for_mailbox(mailbox_id)
        with self.lock:
            lane = self.lanes.get(mailbox_id)
            if lane is None or lane.inner is not transport:
                lane = self.lanes[mailbox_id] = Recording(transport, self.sent)
            return lane

    def close(self) -> None:
        self.inner.close()


def bare_parallel(port: int, lanes: list[list]) -> float:
    """One smtplib connection per lane, all started at one instant, each sending its
    messages back to back (serialized inside the loop, as the engine does): seconds until
    the last lane said QUIT."""
    from delivery.messages import MAIL_POLICY

    start, failures = threading.Barrier(len(lanes) + 1), []

    def lane(messages: list) -> None:
        start.wait()
        try:
            conn = smtplib.SMTP("127.0.0.1", port, timeout=30)
            conn.ehlo()
            for msg, sender, recipient in messages:
                conn.sendmail(sender, [recipient], msg.as_bytes(policy=MAIL_POLICY))
            conn.quit()
        except (smtplib.SMTPException, OSError) as exc:
            failures.append(repr(exc))

    threads = [threading.Thread(target=lane, args=(messages,)) for messages in lanes]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"bare smtplib lane failed: {failures[0]}")
    return time.perf_counter() - began


@contextmanager
def watch_lanes(stops: list[tuple[int | None, Any]], profile_to: Path | None) -> Iterator[None]:
    """Each lane's batch, seen from outside: why it stopped (appended to `stops`: tick's
    result merges a campaign's lanes into one stop reason), and with `profile_to` a
    cProfile of every lane (a thread each, one profiler per send_batch call) merged into
    one file. sender.tick looks send_batch up at call time; nothing else changes."""
    import cProfile
    import pstats

    import sender

    original, profiles = sender.send_batch, []

    def watched(*args, **kwargs):
        if profile_to is None:
            batch = original(*args, **kwargs)
        else:
            profiler = cProfile.Profile()
            profiles.append(profiler)
            batch = profiler.runcall(original, *args, **kwargs)
        stops.append((kwargs.get("mailbox_id"), batch.stopped_by))
        return batch

    sender.send_batch = watched
    try:
        yield
    finally:
        sender.send_batch = original
        if profiles:
            stats = pstats.Stats(profiles[0])
            for profiler in profiles[1:]:
                stats.add(profiler)
            stats.dump_stats(profile_to)


def prepare_lanes(engine, key_file: Path, port: int, n: int, total: int) -> list[int]:
    """n mailboxes (sink, no auth, no cap or gap to speak of) on campaign 1, sending now."""
    from sqlalchemy import update

    from core import mailboxes
    from models import Campaign
    from storage.database import immediate
    from storage.secrets import Vault

    vault = Vault(key_file)
    ids = [mailboxes.create(engine, vault, name=f"Lane {i}", address=f"lane{i}@sendonce-bench.pl",
                            backend="smtp", smtp_host="127.0.0.1", smtp_port=port, smtp_security="none",
                            daily_cap=10_000_000, min_gap_seconds=0) for i in range(1, n + 1)]
    mailboxes.link(engine, 1, ids)
    # Every day, every hour, no interval: only the lanes pace it. batch_size bounds each
    # lane's batch in a tick (1,000: the most the campaign form accepts).
    with immediate(engine) as conn:
        conn.execute(update(Campaign.__table__).where(Campaign.id == 1).values(
            interval_seconds=0, batch_size=min(total, 1000), daily_cap=None, window_weekdays="0,1,2,3,4,5,6",
            window_start_hour=0, window_end_hour=24))
    return ids


def run_lanes(ctx: Context, sink: Sink, n: int, per_lane: int, profile_to: Path | None = None) -> dict:
    """The engine: sender.tick with n mailboxes (one lane, one connection each) until every
    lead is sent; the database and the sink checked after."""
    from app import create_app
    from delivery import lease as leases
    from models import db
    from sender import Settings, tick
    from storage.timeutil import utcnow

    total = n * per_lane
    template = template_db(f"mailboxes{total}", generate.Spec(leads=total, campaigns=1, sends=0), ctx.fresh)
    db_path = fresh_copy(template, RESULTS / "mailboxes-run.db")
    key_file = RESULTS / "mailboxes.keys"
    app = create_app(dict(config_for(db_path, sink.port), MAILBOX_KEY_FILE=str(key_file)))
    with app.app_context():
        engine = db.engine
        pool = LanePool(engine, app.config)
        ids = prepare_lanes(engine, key_file, sink.port, n, total)
        settings = Settings.from_config(app.config)
        lease = leases.acquire(engine, leases.new_holder_id(), utcnow(), settings.lease_seconds)
        sink.reset()
        sent, ticks, stops = 0, 0, []
        with watch_lanes(stops, profile_to):
            began = time.perf_counter()
            while sent < total and ticks < 5:  # one tick sends it all; more only if a lane stopped early
                ticks += 1
                results = tick(engine, settings, pool, lease)
                sent += sum(batch.sent for batch in results.values())
            seconds = time.perf_counter() - began
        received = sink.stats()
        db_check = check_lanes(engine, total, ids)
        engine.dispose()
    if profile_to:
        write_profile_text(profile_to, profile_to.with_suffix(".txt"))
    return {"seconds": seconds, "rate": total / seconds, "sent": sent, "ticks": ticks, "received": received,
            "stopped": early_stops(stops, ids), "lanes": [pool.sent[i::n] for i in range(n)], **db_check}


def early_stops(stops: list[tuple[int | None, Any]], ids: list[int]) -> list[str]:
    """Lanes that stopped for another reason than running out of leads, with the reason.

    A lane's normal ends are "nothing_due: nothing for mailbox n" and a full batch (no
    refusal); any other stop leaves its share to the other lanes (fewer connections in
    parallel than the ceiling has).
    """
    lane = {mailbox_id: i for i, mailbox_id in enumerate(ids, start=1)}
    return [f"lane {lane.get(m, m)}: {why}" for m, why in stops
            if why is not None and why.code != "nothing_due"]


def check_lanes(engine, total: int, ids: list[int]) -> dict:
    """One send_log row per lead, all sent, every enrollment sent; messages per mailbox."""
    with engine.connect() as conn:
        sql = conn.exec_driver_sql
        rows = sql("SELECT count(*) FROM send_log").scalar_one()
        distinct = sql("SELECT count(*) FROM (SELECT DISTINCT campaign_id, lead_id FROM send_log)"
                       ).scalar_one()
        sent = sql("SELECT count(*) FROM send_log WHERE status = 'sent'").scalar_one()
        enrolled_sent = sql("SELECT count(*) FROM campaign_lead WHERE state = 'sent'").scalar_one()
        by_box = dict(sql("SELECT mailbox_id, count(*) FROM send_log GROUP BY mailbox_id").all())
    ok = rows == distinct == sent == enrolled_sent == total and set(by_box) <= set(ids)
    return {"db_ok": ok, "per_mailbox": [by_box.get(i, 0) for i in ids],
            "db_note": f"send_log {rows}, distinct {distinct}, sent {sent}, enrollments sent {enrolled_sent}"}


def lane_row(ctx: Context, delay: float, n: int, per_lane: int, target: float | None) -> None:
    """The engine and then the bare ceiling, n connections each, against one sink."""
    total = n * per_lane
    sink = Sink(delay)
    try:
        bare_parallel(sink.port, [[(_warmup_message(i), "warm@sendonce.test", f"warm{i}@example.com")]
                                  for i in range(n)])
        log(f"mailboxes: engine, {n} lane(s) x {per_lane} messages, "
            f"sink answering after {delay * 1000:.0f} ms")
        engine = run_lanes(ctx, sink, n, per_lane)
        log(f"mailboxes: bare smtplib, {n} connection(s) x {per_lane} messages")
        sink.reset()
        bare_s = bare_parallel(sink.port, engine["lanes"])
        bare_received = sink.stats()
    finally:
        sink.close()
    got = engine["received"]
    ok = (engine["db_ok"] and engine["sent"] == total and got["total"] == got["distinct"] == total
          and got["duplicates"] == 0 and bare_received["total"] == total)
    bare_rate = total / bare_s
    ratio = engine["rate"] / bare_rate
    spread = "/".join(str(c) for c in engine["per_mailbox"])
    note = (f"{total} leads, each received once at the sink ({got['total']} messages, {got['distinct']} "
            f"recipients, {got['duplicates']} duplicates); per mailbox {spread}; {engine['ticks']} tick(s), "
            f"{engine['seconds']:.1f} s vs {bare_s:.1f} s")
    if engine["stopped"]:
        more = len(engine["stopped"]) - 4
        note += f"; stopped early: {'; '.join(engine['stopped'][:4])}{f'; {more} more' if more > 0 else ''}"
    if not ok:
        note += (f" — CHECK FAILED: engine reported {engine['sent']} sent, {engine['db_note']}, "
                 f"bare received {bare_received}")
    plural = "es" if n > 1 else ""
    if target is None:
        ctx.rows.append(Row("mailboxes", f"messages/s, {n} mailbox{plural}, sink answering at once",
                            f"{engine['rate']:,.1f}/s", f"{bare_rate:,.1f}/s", ratio, "report, 0 dup", ok,
                            note))
    else:
        ctx.rows.append(Row("mailboxes", f"messages/s, {n} mailbox{plural}, sink answering after "
                                         f"{delay * 1000:.0f} ms", f"{engine['rate']:,.1f}/s",
                            f"{bare_rate:,.1f}/s", ratio, f"≥ {target}, 0 dup", ratio >= target and ok, note))


def section_mailboxes(ctx: Context) -> None:
    sizes = ctx.sizes
    for n in sizes.mailbox_counts:
        lane_row(ctx, sizes.mailbox_delay, n, sizes.mailbox_messages, target=0.8)
    for n in sizes.mailbox_counts_at_once:
        lane_row(ctx, 0.0, n, sizes.mailbox_messages, target=None)
    if ctx.profile:
        n = max(sizes.mailbox_counts)
        log(f"mailboxes: profiling the engine's {n} lanes (a run of its own, not measured)")
        sink = Sink(sizes.mailbox_delay)
        try:
            run_lanes(ctx, sink, n, sizes.mailbox_messages, RESULTS / "profile-mailboxes-engine.prof")
        finally:
            sink.close()


# --- 8. replies: reading a mailbox over IMAP (a real Dovecot) and classifying -------------

REPLY_SAMPLES = ROOT / "tests" / "data" / "replies"
# The mix delivered, in turn: human replies (Polish plain, English HTML), out-of-office
# (Polish with a return date, English), delivery reports (a hard RFC 3464 DSN, a soft one, a
# qmail-style bounce); each names the lead the sample was written for, replaced by the row's.
REPLY_MIX = (("reply_pl_gmail.eml", "lead0001@example.com"),
             ("reply_en_outlook_html.eml", "lead0002@example.com"),
             ("ooo_pl.eml", "lead0004@example.com"), ("ooo_en.eml", "lead0005@example.com"),
             ("dsn_hard_postfix.eml", "lead0009@example.com"),
             ("dsn_soft_headers.eml", "lead0010@example.com"),
             ("bounce_qmail.eml", "lead0011@example.com"))


def reply_messages(sends: list[tuple[str, str]]) -> list[bytes]:
    """One message per (Message-ID, lead address) of send_log, the samples in turn, each its own
    Message-ID, answering that send and naming that lead."""
    import re

    texts = [((REPLY_SAMPLES / name).read_text(encoding="utf-8"), lead) for name, lead in REPLY_MIX]
    built = []
    for i, (message_id, email) in enumerate(sends):
        text, lead = texts[i % len(texts)]
        text = text.replace("<ORIGINAL-MESSAGE-ID>", message_id)
        text = re.sub(re.escape(lead), email, text, flags=re.IGNORECASE)
        text = re.sub(r"^Message-ID: <", f"Message-ID: <bench{i}.", text, count=1, flags=re.MULTILINE)
        built.append(text.replace("\r\n", "\n").replace("\n", "\r\n").encode())
    return built


def deliver_all(dovecot, user: str, messages: list[bytes]) -> float:
    """Deliver as an MTA does (LMTP), over one connection; seconds taken."""
    began = time.perf_counter()
    with smtplib.LMTP("127.0.0.1", dovecot.lmtp_port) as lmtp:
        for raw in messages:
            lmtp.sendmail("mta@example.net", [user], raw)
    return time.perf_counter() - began


def bare_read(dovecot, user: str, last_uid: int = 0) -> tuple[float, int]:
    """The ceiling: IMAPClient, log in, EXAMINE, the UIDs above last_uid, FETCH BODY.PEEK[] as many at
    a time as the reader does, each parsed (headers and its text body); seconds and messages."""
    from email import message_from_bytes, policy

    from imapclient import IMAPClient

    from delivery.imap import FETCH_CHUNK

    began, parsed = time.perf_counter(), 0
    with IMAPClient("127.0.0.1", port=dovecot.imap_port, ssl=False, timeout=30) as client:
        client.login(user, dovecot.users[user])
        client.select_folder("INBOX", readonly=True)
        uids = sorted(uid for uid in client.search(["UID", f"{last_uid + 1}:*"]) if uid > last_uid)
        for start in range(0, len(uids), FETCH_CHUNK):
            data = client.fetch(uids[start:start + FETCH_CHUNK], ["BODY.PEEK[]", "INTERNALDATE"])
            for item in data.values():
                msg = message_from_bytes(item[b"BODY[]"], policy=policy.default)
                _headers = (msg["Message-ID"], msg["In-Reply-To"], msg["From"], msg["Subject"])
                body = msg.get_body(("plain", "html"))
                _text = body.get_content() if body is not None else ""
                parsed += 1
    return time.perf_counter() - began, parsed


def check_replies(engine, mailbox_id: int, total: int) -> dict:
    """Every delivered message recorded exactly once; kinds and matches for the notes."""
    with engine.connect() as conn:
        sql = conn.exec_driver_sql
        rows = sql("SELECT count(*) FROM inbound_message WHERE mailbox_id = ?", (mailbox_id,)).scalar_one()
        distinct = sql("SELECT count(*) FROM (SELECT DISTINCT folder, uidvalidity, uid FROM inbound_message "
                       "WHERE mailbox_id = ?)", (mailbox_id,)).scalar_one()
        matched = sql("SELECT count(*) FROM inbound_message WHERE mailbox_id = ? AND send_log_id IS NOT NULL",
                      (mailbox_id,)).scalar_one()
        kinds = dict(sql("SELECT kind, count(*) FROM inbound_message WHERE mailbox_id = ? GROUP BY kind",
                         (mailbox_id,)).all())
    return {"ok": rows == distinct == total, "rows": rows, "distinct": distinct, "matched": matched,
            "kinds": kinds}


def section_replies(ctx: Context) -> None:
    """core.replies.read_all over N delivered messages, then a pass with nothing new, each
    against a bare IMAPClient read of the same; every message recorded exactly once."""
    from app import create_app
    from core import mailboxes, replies
    from models import db
    from storage.secrets import Vault
    from tests.imap_server import Dovecot

    total = ctx.sizes.reply_messages
    template = template_db(f"replies{total}", generate.Spec(leads=total, campaigns=1, sends=total), ctx.fresh)
    db_path = fresh_copy(template, RESULTS / "replies-run.db")
    key_file = RESULTS / "replies.keys"
    dovecot = Dovecot().start()
    try:
        user, password = dovecot.new_user()
        app = create_app(dict(config_for(db_path), MAILBOX_KEY_FILE=str(key_file)))
        with app.app_context():
            engine, vault = db.engine, Vault(key_file)
            mailbox_id = mailboxes.create(
                engine, vault, address=user, backend="smtp", smtp_host="127.0.0.1", smtp_security="none",
                daily_cap=1000, min_gap_seconds=0, imap_host="127.0.0.1", imap_port=dovecot.imap_port,
                imap_security="none", imap_username=user, imap_password=password)
            with engine.begin() as conn:
                # Every send went out through this mailbox: the reader's fallback (the sender's
                # address among the mailbox's leads) can match what rewrote the headers.
                conn.exec_driver_sql("UPDATE send_log SET mailbox_id = ?", (mailbox_id,))
                sends = [tuple(r) for r in conn.exec_driver_sql(
                    "SELECT message_id, lead.email FROM send_log JOIN lead ON lead.id = send_log.lead_id "
                    "ORDER BY send_log.id LIMIT ?", (total,)).all()]
            log(f"replies: delivering {len(sends)} messages over LMTP")
            delivered = deliver_all(dovecot, user, reply_messages(sends))
            bare_read(dovecot, user)  # warm Dovecot's index and the page cache for both
            options = replies.ReaderOptions.from_config(app.config)
            log(f"replies: the reader over {len(sends)} messages")
            began = time.perf_counter()
            [first] = replies.read_all(engine, vault, options, None, mailbox_id)
            engine_s = time.perf_counter() - began
            began = time.perf_counter()
            [again] = replies.read_all(engine, vault, options, None, mailbox_id)
            idle_s = time.perf_counter() - began
            checked = check_replies(engine, mailbox_id, len(sends))
            engine.dispose()
        log("replies: bare IMAPClient fetch + parse of the same messages")
        bare_s, bare_n = bare_read(dovecot, user)
        bare_idle_s, _none = bare_read(dovecot, user, last_uid=10 ** 9)
    finally:
        dovecot.cleanup()
    n = len(sends)
    ok = (checked["ok"] and first.error is None and again.error is None and first.read == n
          and again.read == 0 and bare_n == n)
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(checked["kinds"].items()))
    note = (f"{n} messages delivered over LMTP in {delivered:.1f} s, recorded once each "
            f"({checked['rows']} rows, {checked['distinct']} distinct UIDs; "
            f"{checked['matched']} matched to a send): {kinds}; "
            f"{engine_s:.1f} s vs {bare_s:.1f} s")
    if not ok:
        note += (f" — CHECK FAILED: first pass read {first.read} ({first.error}), second {again.read} "
                 f"({again.error}), bare read {bare_n}")
    ctx.rows.append(Row("replies", f"messages read and classified/s, {n} in one mailbox",
                        f"{n / engine_s:,.1f}/s", f"{n / bare_s:,.1f}/s", bare_s / engine_s,
                        "report, each once", ok, note))
    ctx.rows.append(Row("replies", "a pass with nothing new (log in, EXAMINE, search)",
                        f"{idle_s * 1000:.1f} ms", f"{bare_idle_s * 1000:.1f} ms", bare_idle_s / idle_s,
                        "report", ok,
                        "the reader's pass also writes its cursor's read time (one commit)"))


# --- 9. PostgreSQL: the same claims and pages on the other engine (#19) ------------------


@contextmanager
def postgres_cluster() -> Iterator[Any]:
    """A throwaway PostgreSQL cluster (tests/pg_server.py; `make bench` installs Debian's
    postgresql), or the one SENDONCE_PG_CLUSTER_DIR names (the tests' own): left running."""
    from tests.pg_server import CLUSTER_DIR_ENV, start_or_attach

    named = os.environ.get(CLUSTER_DIR_ENV)
    cluster = start_or_attach()
    try:
        yield cluster
    finally:
        if named is None:  # ours: stopped and removed
            cluster.stop()
            os.environ.pop(CLUSTER_DIR_ENV, None)
        else:
            for name in BENCH_DATABASES:
                cluster.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


BENCH_DATABASES = ("bench_claims1", "bench_claims8", "bench_claims_run", "bench_pages")


def pg_config(url: str) -> dict:
    """config_for's settings on a PostgreSQL database."""
    return dict(config_for(RESULTS / "postgres.db"), SQLALCHEMY_DATABASE_URI=url)


def claims_template(ctx: Context, campaigns: int) -> tuple[Path, int]:
    """The SQLite claims database spread over `campaigns` campaigns, all of them active (the
    generator leaves only the last one active); and the enrollments it holds."""
    per = ctx.sizes.claim_leads // campaigns
    name = "claims" if campaigns == 1 else f"claims{campaigns}"
    template = template_db(name, generate.Spec(leads=per, campaigns=campaigns, sends=0), ctx.fresh)
    return template, per * campaigns


def activate_all(conn) -> None:
    """Every campaign active (an sqlite3 or psycopg connection, autocommitting)."""
    conn.execute("UPDATE campaign SET status = 'active', pause_reason = NULL")


def section_postgres(ctx: Context) -> None:
    """Claims and pages on PostgreSQL, each beside a bare psycopg ceiling and SQLite's figure."""
    with postgres_cluster() as cluster:
        if "claims" in ctx.sizes.pg_parts:
            for campaigns in ctx.sizes.pg_campaigns:
                postgres_claims(ctx, cluster, campaigns)
        if "pages" in ctx.sizes.pg_parts:
            postgres_pages(ctx, cluster)


def postgres_claims(ctx: Context, cluster, campaigns: int) -> None:
    """claims/s with 1..8 processes over `campaigns` campaigns: the engine (send_batch, as in
    section 1) against the bare psycopg loop and the same loop committing once per message,
    each on a fresh copy (CREATE DATABASE ... TEMPLATE) checked after the run; SQLite's
    engine figure for the same layout beside it (section 1's when it ran, else run here)."""
    import psycopg

    from bench import pgdata
    from bench.claim_worker import pg_conninfo
    from delivery.messages import new_installation_id
    from sender import INSTALLATION_KEY

    sizes = ctx.sizes
    sqlite_template, leads = claims_template(ctx, campaigns)
    template = f"bench_claims{campaigns}"
    url = pgdata.recreate(cluster, template)
    log(f"postgres: copying {sqlite_template.name} into {template}")
    pgdata.copy_from_sqlite(sqlite_template, url)
    with psycopg.connect(pg_conninfo(url), autocommit=True) as conn:
        activate_all(conn)
        # Made by the very first claim if missing (sender._installation). On PostgreSQL the
        # first claims of different campaigns run in parallel and may both insert it (a
        # unique violation: reported on #19); made here once, as a claim before the run would.
        conn.execute("INSERT INTO app_meta (key, value) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                     (INSTALLATION_KEY, new_installation_id()))
    ids = ",".join(str(c) for c in range(1, campaigns + 1))
    how = "to the end" if not sizes.claim_seconds else f"{sizes.claim_seconds:.0f} s a run"
    to_the_end = not sizes.claim_seconds
    for n in sizes.procs:
        result = {}
        for mode in ("pg-bare", "engine", "pg-bare-grouped"):
            run_url = pgdata.recreate(cluster, "bench_claims_run", template)
            log(f"postgres claims: {n} {mode} process(es), {campaigns} campaign(s), {how}")
            profiled = ctx.profile and mode == "engine" and n == 1
            profile_to = RESULTS / f"profile-pg-claims{campaigns}-engine.prof" if profiled else None
            result[mode] = run_claimers(mode, run_url, n, sizes.claim_seconds, profile_to, campaigns=ids,
                                        config=pg_config(run_url))
            ok, note = check_claims_pg(run_url, leads, result[mode]["claims"], to_the_end)
            result[mode]["ok"], result[mode]["note"] = ok and result[mode]["errors"] == 0, note
            if profile_to:
                write_profile_text(profile_to, profile_to.with_suffix(".txt"))
        sqlite_rate = ctx.sqlite_claims.get((n, campaigns))
        if sqlite_rate is None:
            sqlite_rate = sqlite_claims(ctx, sqlite_template, n, campaigns, ids, leads)
        bare, engine, grouped = result["pg-bare"], result["engine"], result["pg-bare-grouped"]
        ratio = engine["rate"] / bare["rate"]
        checked = bare["ok"] and engine["ok"] and grouped["ok"]
        spread = ("" if campaigns == 1 else
                  f"each process takes the {campaigns} campaigns in turn, 20 claims each, process i "
                  f"beginning with campaign i; ")
        ctx.rows.append(Row(
            "postgres", f"PostgreSQL claims/s, {n} process{'es' if n > 1 else ''}, {campaigns} "
                        f"campaign{'s' if campaigns > 1 else ''}",
            f"{engine['rate']:,.1f}/s", f"{bare['rate']:,.1f}/s", ratio, "≥ 0.5, 0 dup",
            ratio >= 0.5 and checked,
            f"{spread}engine: {engine['note']}; bare: {bare['note'].split(' leads')[0]} claimed; "
            f"the bare loop committing once per message as the engine does: {grouped['rate']:,.1f}/s, "
            f"ratio {engine['rate'] / grouped['rate']:.2f}; **SQLite** engine, same layout: "
            f"{sqlite_rate:,.1f}/s (PostgreSQL/SQLite {engine['rate'] / sqlite_rate:.2f})"))
        ctx.rss[f"pg-engine-{n}"] = engine["maxrss_kb"]  # not "engine-": section 5 reads SQLite's


def sqlite_claims(ctx: Context, template: Path, n: int, campaigns: int, ids: str, leads: int) -> float:
    """SQLite's engine claims/s for one layout (section 1's run, on `campaigns` campaigns)."""
    run_db = fresh_copy(template, RESULTS / "claims-run.db")
    conn = bare_connect(run_db)
    try:
        activate_all(conn)
    finally:
        conn.close()
    log(f"postgres claims: beside it, SQLite: {n} engine process(es), {campaigns} campaign(s)")
    engine = run_claimers("engine", run_db, n, ctx.sizes.claim_seconds, campaigns=ids)
    ok, note = check_claims(run_db, leads, engine["claims"], not ctx.sizes.claim_seconds)
    if not ok or engine["errors"]:
        raise RuntimeError(f"SQLite claims beside PostgreSQL's: {note}")
    ctx.sqlite_claims[(n, campaigns)] = engine["rate"]
    return engine["rate"]


def postgres_pages(ctx: Context, cluster) -> None:
    """Section 4's pages on the same rows in PostgreSQL (copied from the generator's SQLite
    file once, then restored from a pg_dump cache), against their SQL run with bare psycopg."""
    from bench import pgdata

    sizes = ctx.sizes
    spec = pages_spec(sizes)
    template = template_db("pages", spec, ctx.fresh)
    url = pgdata.cached(cluster, "bench_pages", template, spec, RESULTS, ctx.fresh, log)
    results = render_pages(ctx, {"db": url, "pg_url": url}, pg_config(url))
    scale = f"{sizes.page_leads:,} leads, {sizes.page_sends:,} send_log rows, PostgreSQL"
    ctx.rows.extend(page_rows("postgres", results, scale, ctx.sqlite_pages))


# --- the table ------------------------------------------------------------------------


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": str(os.cpu_count()), "cpu": model, "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version, "load": " ".join(f"{x:.1f}" for x in os.getloadavg())}


def git_state() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}{' + uncommitted changes' if dirty else ''}"


def table(rows: list[Row]) -> str:
    lines = ["| # | measure | value | ceiling | ratio | target | result | notes |",
             "|---|---|---|---|---|---|---|---|"]
    numbers = {name: i for i, name in enumerate(SECTIONS, start=1)}
    for row in rows:
        ratio = "—" if row.ratio is None else f"{row.ratio:.2f}"
        result = "—" if row.met is None else ("met" if row.met else "**missed**")
        lines.append(f"| {numbers[row.section]} | {row.measure} | {row.value} | {row.ceiling} | {ratio} | "
                     f"{row.target} | {result} | {row.notes} |")
    return "\n".join(lines)


def report(ctx: Context, sections: list[str], started: float, load_before: str, label: str) -> str:
    info = machine()
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    head = (f"## {when} · nproc {info['nproc']} · {info['cpu']}\n\n"
            f"`{label}` · sections: {', '.join(sections)} · code: {git_state()} · Python {info['python']}, "
            f"SQLite {info['sqlite']} · load average {load_before} at start, {info['load']} at end · "
            f"{time.perf_counter() - started:.0f} s in all\n")
    return f"{head}\n{table(ctx.rows)}\n"


BENCHMARKS_HEAD = """# Benchmarks

Appended by `make bench` (bench/run.py): every figure beside a ceiling measured in the
same run on the same machine, as a ratio. Compare ratios across runs, not raw numbers:
the machine is shared, and the load average says how busy it was.
"""


def append(text: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    existing = path.read_text() if path.exists() else BENCHMARKS_HEAD
    path.write_text(existing.rstrip("\n") + "\n\n" + text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="SendOnce against its ceilings (make bench).")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes: a smoke run of every section")
    size.add_argument("--full", action="store_true",
                      help="claims run every lead to the end; more SMTP messages and page repeats")
    parser.add_argument("--only", default="", help=f"comma-separated sections: {','.join(SECTIONS)}")
    parser.add_argument("--procs", default="", help="claim process counts, e.g. 1,2,4,8,16")
    parser.add_argument("--claim-seconds", type=float, help="seconds per claim run (0: to the end)")
    parser.add_argument("--claim-leads", type=int, help="leads enrolled for the claim runs")
    parser.add_argument("--smtp-messages", type=int, help="messages per SMTP run")
    parser.add_argument("--page-sends", type=int, help="send_log rows for the pages (with --page-campaigns)")
    parser.add_argument("--page-campaigns", type=int)
    parser.add_argument("--page-leads", type=int)
    parser.add_argument("--mailboxes", default="", help="mailbox counts against the slow sink, e.g. 1,4,8,16")
    parser.add_argument("--mailbox-messages", type=int, help="messages per mailbox in the mailboxes section")
    parser.add_argument("--mailbox-delay", type=float,
                        help="seconds the slow sink waits before answering the final dot (default 0.1)")
    parser.add_argument("--pg-parts", default="", help="what section postgres measures: claims,pages "
                                                       "(both by default)")
    parser.add_argument("--pg-campaigns", default="",
                        help="campaign counts for the PostgreSQL claims, e.g. 1,8")
    parser.add_argument("--reply-messages", type=int,
                        help="messages delivered and read in the replies section (default 1000)")
    parser.add_argument("--profile", action="store_true", help="cProfile the engine, import and pages "
                                                               "into bench/results/profile-*.txt")
    parser.add_argument("--fresh", action="store_true", help="regenerate the cached databases")
    parser.add_argument("--no-append", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)

    sizes = QUICK if args.quick else FULL if args.full else DEFAULT
    overrides = {"procs": tuple(int(p) for p in args.procs.split(",")) if args.procs else None,
                 "claim_seconds": args.claim_seconds, "claim_leads": args.claim_leads,
                 "smtp_messages": args.smtp_messages, "page_sends": args.page_sends,
                 "page_campaigns": args.page_campaigns, "page_leads": args.page_leads,
                 "mailbox_counts": tuple(int(m) for m in args.mailboxes.split(",") if m.strip()) or None,
                 "mailbox_messages": args.mailbox_messages, "mailbox_delay": args.mailbox_delay,
                 "reply_messages": args.reply_messages,
                 "pg_parts": tuple(p.strip() for p in args.pg_parts.split(",") if p.strip()) or None,
                 "pg_campaigns": tuple(int(c) for c in args.pg_campaigns.split(",") if c.strip()) or None}
    sizes = replace(sizes, **{k: v for k, v in overrides.items() if v is not None})
    sections = [s.strip() for s in args.only.split(",") if s.strip()] or list(SECTIONS)
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    if set(sizes.pg_parts) - set(PG_PARTS):
        parser.error(f"--pg-parts: choose from {', '.join(PG_PARTS)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    ctx = Context(sizes, args.profile, args.fresh)
    started, load_before = time.perf_counter(), machine()["load"]
    runners = {"claims": section_claims, "smtp": section_smtp, "import": section_import,
               "pages": section_pages, "memory": section_memory, "legacy": section_legacy,
               "mailboxes": section_mailboxes, "replies": section_replies, "postgres": section_postgres}
    for name in SECTIONS:
        if name in sections:
            runners[name](ctx)
    label = "make bench" if not argv and len(sys.argv) == 1 else "python -m bench.run " + " ".join(
        argv if argv is not None else sys.argv[1:])
    text = report(ctx, sections, started, load_before, label)
    print(text)
    if not args.no_append:
        append(text)
        log("appended to BENCHMARKS.md")


if __name__ == "__main__":
    main()
