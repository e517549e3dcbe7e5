"""Bench (and chaos) data: N leads, C campaigns, M send_log rows in one SQLite file, fast.

`python -m bench.generate out.db --leads 100000 --campaigns 10 --sends 1000000`

The schema comes from models.py and schema.py (so a new index or trigger shows up here by
itself; the triggers keep campaign_state_count while the rows go in); rows are written
with bare sqlite3 executemany in big transactions, synchronous=OFF while generating (the
bench's own connections use FULL). The data keeps every invariant the engine keeps:
- send_log is UNIQUE(campaign_id, lead_id): each campaign sends to at most `leads` leads,
  so 1,000,000 rows need e.g. 10 campaigns x 100,000 leads;
- every send_log row has its enrollment, in the matching state (sent -> sent, retry or
  sending -> sending, ...); leads are claimed in enrollment order, as claim_next does;
- only the last campaign is active: only it has `sending` (in flight) and `retry` rows;
  an earlier campaign with enrollments left unsent is paused, one with none finished;
- a 5xx bounce suppresses its address, as the engine does.
Everything is derived from `seed`: the same arguments give the same file.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import random
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine

from core.leads import pick_variant
from models import Base
from storage import schema

VERSION = 1  # bump when the rows change: cached bench databases are keyed on it
BASE_TIME = datetime(2025, 1, 6, 7, 0, 0)  # fixed, so the same seed gives the same file
CHUNK = 50_000
FIRST = ["Anna", "Piotr", "Katarzyna", "Tomasz", "Agnieszka", "Paweł", "Małgorzata", "Michał",
         "Ewa", "Krzysztof", "Joanna", "Łukasz", "Maria", "Jan", "John", "Emma", "Oliver", "Sophie"]
LAST = ["Nowak", "Kowalski", "Wiśniewska", "Wójcik", "Kowalczyk", "Kamiński", "Lewandowska",
        "Zieliński", "Szymańska", "Woźniak", "Dąbrowski", "Smith", "Brown", "Taylor"]
COMPANY = ["Acme", "Budimex", "Kruk", "Delta", "Orbis", "Polmos", "Nordic", "Vistula", "Tatra"]
SUFFIX = ["Sp. z o.o.", "S.A.", "Ltd", "GmbH", "s.c."]
TAGS = ["", "vip", "warsaw", "krakow", "newsletter", "trial", "partner", "it", "retail"]
CITIES = ["Warszawa", "Kraków", "Łódź", "Wrocław", "Poznań", "Gdańsk", "Berlin", "London"]
DOMAINS = [f"{name.lower()}{n}.example.com" for name in COMPANY for n in range(6)]
TRIGGERS = (("scheduler", 0.9), ("button", 0.08), ("cli", 0.02))
FINISHED_STATUSES = (("sent", 0.955), ("failed", 0.03), ("unknown", 0.015))
ACTIVE_STATUSES = (("sent", 0.95), ("failed", 0.025), ("unknown", 0.01), ("retry", 0.015))
ENROLLMENT_STATE = {"sent": "sent", "failed": "failed", "unknown": "unknown",
                    "retry": "sending", "sending": "sending"}
IN_FLIGHT = 2  # `sending` rows at the end of the active campaign (claimed, not yet recorded)


@dataclass
class Spec:
    leads: int = 100_000
    campaigns: int = 10
    sends: int = 1_000_000
    enroll: int | None = None  # enrollments per campaign; default every lead
    seed: int = 1
    interval: int = 5  # seconds between two sends of one campaign


@dataclass
class Generated:
    path: Path
    spec: Spec
    campaign_ids: list[int]
    active_campaign: int | None
    statuses: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def ts(at: datetime) -> str:
    """A datetime the way SQLAlchemy's SQLite DATETIME stores it."""
    return at.isoformat(" ", "microseconds")


def _weighted(rng: random.Random, table: tuple[tuple[str, float], ...]) -> str:
    point = rng.random()
    for value, weight in table:
        if point < weight:
            return value
        point -= weight
    return table[-1][0]


def _plan(spec: Spec) -> list[tuple[int, int]]:
    """(enrollments, sends) per campaign; sends spread evenly, never more than enrollments."""
    enroll = spec.leads if spec.enroll is None else min(spec.enroll, spec.leads)
    base, extra = divmod(spec.sends, spec.campaigns) if spec.campaigns else (0, 0)
    plan = [(enroll, base + (1 if c < extra else 0)) for c in range(spec.campaigns)]
    too_many = [s for e, s in plan if s > e]
    if too_many:
        raise ValueError(f"{max(too_many)} sends in one campaign but only {enroll} enrolled leads: "
                         "UNIQUE(campaign_id, lead_id) allows one row per lead; add campaigns or leads")
    return plan


def create_schema(path: Path) -> None:
    """An empty database with models.py's schema and schema.py's triggers, in WAL mode."""
    engine = create_engine(f"sqlite:///{path}")
    schema.install(engine, Base.metadata)
    engine.dispose()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")  # setup only: the bench's connections use FULL
    conn.execute("PRAGMA foreign_keys=OFF")  # consistent by construction; checks cost a lookup a row
    conn.execute("PRAGMA cache_size=-200000")
    return conn


def _insert(conn: sqlite3.Connection, sql: str, rows) -> int:
    """executemany in chunks inside the caller's transaction; returns rows written."""
    written, chunk = 0, []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= CHUNK:
            conn.executemany(sql, chunk)
            written, chunk = written + len(chunk), []
    if chunk:
        conn.executemany(sql, chunk)
        written += len(chunk)
    return written


def _without_indexes(conn: sqlite3.Connection, tables: tuple[str, ...]) -> list[str]:
    """Drop the tables' declared indexes (bulk load then sort once); returns their DDL."""
    marks = ",".join("?" * len(tables))
    ddl = [sql for (sql,) in conn.execute(
        f"SELECT sql FROM sqlite_master WHERE type='index' AND sql IS NOT NULL AND tbl_name IN ({marks})",
        tables)]
    names = [name for (name,) in conn.execute(
        f"SELECT name FROM sqlite_master WHERE type='index' AND sql IS NOT NULL AND tbl_name IN ({marks})",
        tables)]
    for name in names:
        conn.execute(f'DROP INDEX "{name}"')
    return ddl


def _lead_rows(spec: Spec, emails: list[str]):
    rng = random.Random(spec.seed)
    for i, email in enumerate(emails, start=1):
        tags = ",".join(sorted({rng.choice(TAGS), rng.choice(TAGS)} - {""}))
        fields = {"city": rng.choice(CITIES), "title": rng.choice(["CEO", "CTO", "Head of Sales", "Owner"])}
        yield (i, email, rng.choice(FIRST), rng.choice(LAST),
               f"{rng.choice(COMPANY)} {rng.choice(SUFFIX)}", json.dumps(fields, ensure_ascii=False),
               tags, ts(BASE_TIME - timedelta(days=30, seconds=i)))


def _emails(spec: Spec) -> list[str]:
    rng = random.Random(spec.seed + 1)
    return [f"{rng.choice(FIRST[-4:]).lower()}.{i}@{DOMAINS[i % len(DOMAINS)]}"
            for i in range(1, spec.leads + 1)]


def _campaign_rows(spec: Spec, plan: list[tuple[int, int]]):
    for c, (enroll, sends) in enumerate(plan, start=1):
        status = "active" if c == len(plan) else "paused" if sends < enroll else "finished"
        start = BASE_TIME + timedelta(days=7 * (c - 1))
        last = start + timedelta(seconds=spec.interval * sends) if sends else None
        yield (c, f"Kampania {c}: oferta Q{(c - 1) % 4 + 1}", status,
               f"team@{DOMAINS[c % len(DOMAINS)]}", "Zespół SendOnce", spec.interval, 1, None,
               "0,1,2,3,4", 8, 18, "Europe/Warsaw", ts(last) if last else None, 0, None,
               ts(start - timedelta(days=1)))


def _variant_rows(plan: list[tuple[int, int]]):
    body = ("Dzień dobry {{ first_name }},\n\n{{ company }} może wysyłać mniej i lepiej.\n\n"
            "{{ unsubscribe_url }}\n")
    for c in range(1, len(plan) + 1):
        yield (2 * c - 1, c, "A", "{{ first_name }}, krótkie pytanie", body, 1)
        yield (2 * c, c, "B", "Pytanie do {{ company }}", body, 1)


class _Workers:
    """host:pid of the process that claimed a row; a restart gives a new pid and lease epoch."""

    def __init__(self, rng: random.Random) -> None:
        self.rng, self.pid, self.epoch, self.left = rng, 4000, 1, 0

    def next(self) -> tuple[str, int]:
        if self.left <= 0:
            self.pid += self.rng.randint(1, 900)
            self.epoch += 1
            self.left = self.rng.randint(2_000, 20_000)
        self.left -= 1
        return f"mail-1:{self.pid}", self.epoch


def _send_rows(spec: Spec, plan: list[tuple[int, int]], emails: list[str], letters: dict[int, list[str]],
               counts: dict[str, int],
               bounced: list[tuple[str, str]], enrollment_state: dict[tuple[int, int], str]):
    rng = random.Random(spec.seed + 2)
    workers = _Workers(rng)
    log_id = 0
    for c, (_, sends) in enumerate(plan, start=1):
        active = c == len(plan)
        statuses = ACTIVE_STATUSES if active else FINISHED_STATUSES
        start = BASE_TIME + timedelta(days=7 * (c - 1))
        domain = DOMAINS[c % len(DOMAINS)]
        for i in range(sends):
            lead_id = i + 1
            log_id += 1
            in_flight = active and i >= sends - IN_FLIGHT
            status = "sending" if in_flight else _weighted(rng, statuses)
            trigger = _weighted(rng, TRIGGERS)
            worker, epoch = workers.next()
            created = start + timedelta(seconds=spec.interval * i + rng.random())
            attempts = 1 if status in ("sending", "unknown") else _attempts(rng.random())
            claimed = created + timedelta(seconds=(attempts - 1) * 90)
            sent_at = claimed + timedelta(seconds=0.2 + rng.random() / 2) if status == "sent" else None
            next_at = claimed + timedelta(seconds=60 * 2 ** (attempts - 1)) if status == "retry" else None
            reply = _reply(rng, status, emails[lead_id - 1], worker)
            if status == "failed" and reply.startswith("550"):
                bounced.append((emails[lead_id - 1], reply))
            counts[status] = counts.get(status, 0) + 1
            if ENROLLMENT_STATE[status] != "sent":
                enrollment_state[(c, lead_id)] = ENROLLMENT_STATE[status]
            yield (log_id, c, lead_id, letters[c][lead_id - 1], status, attempts,
                   ts(next_at) if next_at else None, trigger, worker,
                   epoch if trigger == "scheduler" else None, f"<sendonce.{c}.{log_id}@{domain}>",
                   ts(created), ts(claimed), ts(sent_at) if sent_at else None, reply,
                   _decided_by(rng, status, attempts))


def _decided_by(rng: random.Random, status: str, attempts: int) -> str | None:
    """A few `unknown` sends a person later marked as sent."""
    return "admin@example.com" if status == "sent" and attempts == 1 and rng.random() < 0.001 else None


def _attempts(point: float) -> int:
    return 1 if point < 0.9 else 2 if point < 0.98 else 3


def _reply(rng: random.Random, status: str, email: str, worker: str) -> str | None:
    if status == "sent":
        return f"250 2.0.0 Ok: queued as {rng.getrandbits(40):010X}"
    if status == "failed":
        return rng.choice((f"550 5.1.1 <{email}>: Recipient address rejected: User unknown",
                           "554 5.7.1 Message rejected as spam", "552 5.2.2 Mailbox full"))
    if status == "retry":
        return "451 4.7.1 Greylisted, please try again later"
    if status == "unknown":
        return f"unknown: worker gone ({worker}); not re-sent"
    return None


_VARIANT_WEIGHTS = [("A", 1), ("B", 1)]


def _letters(plan: list[tuple[int, int]], emails: list[str]) -> dict[int, list[str]]:
    """Each enrollment's variant, by the engine's rule (leads.pick_variant) for weights A=1, B=1.

    Inlined (pick_variant costs ~6 us, a million times); a sample is checked against it.
    """
    sha256 = hashlib.sha256
    letters = {c: ["AB"[int.from_bytes(sha256(f"{c}:{email}".encode()).digest()[:8], "big") % 2]
                   for email in emails[:enroll]] for c, (enroll, _) in enumerate(plan, start=1)}
    for c, chosen in letters.items():
        for i in range(0, len(chosen), max(len(chosen) // 50, 1)):
            assert chosen[i] == pick_variant(_VARIANT_WEIGHTS, c, emails[i]), "variant rule changed"
    return letters


def _enrollment_rows(plan: list[tuple[int, int]], letters: dict[int, list[str]],
                     sends_state: dict[tuple[int, int], str]):
    row_id = 0
    for c, (enroll, sends) in enumerate(plan, start=1):
        enrolled_at = ts(BASE_TIME + timedelta(days=7 * (c - 1)) - timedelta(hours=20))
        for i in range(enroll):
            row_id += 1
            lead_id = i + 1
            state = sends_state.get((c, lead_id), "sent") if i < sends else "pending"
            yield row_id, c, lead_id, letters[c][i], state, enrolled_at


def generate(path: str | Path, spec: Spec | None = None, *, force: bool = False) -> Generated:
    """Write a fresh database at `path` filled as `spec` says; returns what it holds."""
    spec = spec or Spec()
    path = Path(path)
    plan = _plan(spec)
    if path.exists():
        if not force:
            raise FileExistsError(f"{path} exists (pass force=True / --force to replace it)")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    create_schema(path)
    emails = _emails(spec)
    letters = _letters(plan, emails)
    counts: dict[str, int] = {}
    bounced: list[tuple[str, str]] = []
    not_sent: dict[tuple[int, int], str] = {}
    conn = _connect(path)
    try:
        conn.execute("BEGIN")
        _insert(conn, "INSERT INTO lead (id, email, first_name, last_name, company, fields, tags, "
                      "created_at) VALUES (?,?,?,?,?,?,?,?)", _lead_rows(spec, emails))
        _insert(conn, "INSERT INTO campaign (id, name, status, from_address, from_name, interval_seconds, "
                      "batch_size, daily_cap, window_weekdays, window_start_hour, window_end_hour, timezone, "
                      "last_claim_at, consecutive_failures, pause_reason, created_at) "
                      "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", _campaign_rows(spec, plan))
        _insert(conn, "INSERT INTO variant (id, campaign_id, letter, subject, body, weight) "
                      "VALUES (?,?,?,?,?,?)", _variant_rows(plan))
        conn.execute("COMMIT")
        conn.execute("BEGIN")
        # UNIQUE constraints stay (their autoindexes cannot be dropped, and rows arrive in
        # their order anyway); the plain indexes are rebuilt once, sorted, after the load.
        indexes = _without_indexes(conn, ("send_log", "campaign_lead"))
        _insert(conn, 'INSERT INTO send_log (id, campaign_id, lead_id, variant_letter, status, attempts, '
                      'next_attempt_at, "trigger", worker, lease_epoch, message_id, created_at, claimed_at, '
                      'sent_at, smtp_reply, decided_by) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)',
                _send_rows(spec, plan, emails, letters, counts, bounced, not_sent))
        conn.execute("COMMIT")
        conn.execute("BEGIN")
        _insert(conn, "INSERT INTO campaign_lead (id, campaign_id, lead_id, variant_letter, state, "
                      "enrolled_at) VALUES (?,?,?,?,?,?)", _enrollment_rows(plan, letters, not_sent))
        seen: set[str] = set()
        _insert(conn, "INSERT INTO suppression (email, reason, detail, created_at) VALUES (?,?,?,?)",
                ((email, "bounce", reply, ts(BASE_TIME)) for email, reply in bounced
                 if not (email in seen or seen.add(email))))
        for sql in indexes:
            conn.execute(sql)
        conn.execute("INSERT INTO scheduler_lease (name, holder, epoch, heartbeat_at, expires_at) "
                     "VALUES ('scheduler', '', ?, ?, ?)", (len(plan) + 1, ts(BASE_TIME), ts(BASE_TIME)))
        conn.execute("COMMIT")
        conn.execute("ANALYZE")  # what `PRAGMA optimize` would leave behind in a long-lived file
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return Generated(path, spec, list(range(1, len(plan) + 1)), len(plan) or None, counts,
                     time.perf_counter() - began)


def lead_csv(rows: int, seed: int = 1) -> bytes:
    """A CSV export as people bring them: ~1% repeated addresses (other case, spaces),
    ~0.5% invalid ones, Polish letters in names, a custom column; header included."""
    rng = random.Random(seed)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["Email", "First name", "Last name", "Company", "Tags", "City"])
    seen: list[str] = []
    for i in range(1, rows + 1):
        point = rng.random()
        if point < 0.005:
            email = f"broken.{i}@@{rng.choice(DOMAINS)}"
        elif point < 0.015 and seen:
            email = f"  {rng.choice(seen).upper()} "  # the same lead again, as typed elsewhere
        else:
            email = f"{rng.choice(FIRST[-4:]).lower()}.{i}@{rng.choice(DOMAINS)}"
            seen.append(email)
        company = f"{rng.choice(COMPANY)} {rng.choice(SUFFIX)}"
        tags = ";".join(sorted({rng.choice(TAGS), rng.choice(TAGS)} - {""}))
        writer.writerow([email, rng.choice(FIRST), rng.choice(LAST), company, tags, rng.choice(CITIES)])
    return out.getvalue().encode("utf-8")


def fingerprint(spec: Spec) -> str:
    """A short hash of the spec, the schema (tables, indexes, triggers) and VERSION: same
    fingerprint, same file."""
    from sqlalchemy.schema import CreateIndex, CreateTable

    engine = create_engine("sqlite://")
    ddl = [str(CreateTable(t).compile(engine)) for t in Base.metadata.sorted_tables]
    ddl += sorted(str(CreateIndex(i).compile(engine)) for t in Base.metadata.sorted_tables for i in t.indexes)
    ddl += sorted(schema.TRIGGERS.values())  # a changed trigger changes the file, too
    text = json.dumps([spec.__dict__, ddl, VERSION], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--leads", type=int, default=Spec.leads)
    parser.add_argument("--campaigns", type=int, default=Spec.campaigns)
    parser.add_argument("--sends", type=int, default=Spec.sends, help="send_log rows in all")
    parser.add_argument("--enroll", type=int, default=None, help="enrollments per campaign (default: all)")
    parser.add_argument("--seed", type=int, default=Spec.seed)
    parser.add_argument("--force", action="store_true", help="replace an existing file")
    args = parser.parse_args(argv)
    spec = Spec(args.leads, args.campaigns, args.sends, args.enroll, args.seed)
    made = generate(args.path, spec, force=args.force)
    print(f"{made.path}: {spec.leads} leads, {spec.campaigns} campaigns, {sum(made.statuses.values())} "
          f"send_log rows {made.statuses} in {made.seconds:.1f} s")


if __name__ == "__main__":
    main()
