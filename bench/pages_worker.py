"""Render the admin pages at scale in a fresh process: `python -m bench.pages_worker SPEC.json`.

The app is built by create_app() from FLASK_* variables, as a gunicorn worker builds it,
with a logged-in Flask test client (the login form, CSRF token included). Server time is
the time of client.get() around the WSGI app: no socket, no browser. Each page's "bare"
figure is its SQL without SQLAlchemy, Flask or Jinja: every distinct statement the page
executed (captured once, by text, with its first parameters; a lazy load repeated per row
counts once) re-run with plain sqlite3 on the same file (on PostgreSQL, SPEC's "pg_url":
with plain psycopg on the same database). Page and bare runs alternate, so drift on a
shared machine hits both. A page that does not answer 200 is recorded as failed, with the
exception it raised (e.g. SQL not ported to PostgreSQL yet), and the others still run.
Prints one JSON line; peak RSS included.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import statistics
import sys
import time
from pathlib import Path

from bench.rss import peak_rss_kb

SKIP_SQL = re.compile(r"^\s*(BEGIN|COMMIT|ROLLBACK|PRAGMA|SAVEPOINT|RELEASE)\b", re.IGNORECASE)
USER, PASSWORD = "bench@example.com", "bench-password-not-secret"


def _login(app, client) -> None:
    from models import User, db
    from storage.database import write_session

    with app.app_context():
        with write_session(db.engine) as session:
            if session.query(User).filter_by(email=USER).first() is None:
                user = User(email=USER, language="pl")
                user.set_password(PASSWORD)
                session.add(user)
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    reply = client.post("/login", data={"email": USER, "password": PASSWORD,
                                        "csrf_token": token.group(1) if token else ""})
    if reply.status_code != 302:
        raise SystemExit(f"login failed: {reply.status_code}")


FLOOR_URL = "/_bench/floor"


def _add_floor_page(app) -> None:
    """An empty admin page (login, base.html, language form, no query of its own): the
    fixed cost every page pays, so the others can be read against it. Added to this
    process's app object only (its template from a dict), before its first request."""
    from flask import render_template
    from flask_login import login_required
    from jinja2 import ChoiceLoader, DictLoader

    app.jinja_env.loader = ChoiceLoader([
        DictLoader({"_bench_floor.html": '{% extends "base.html" %}{% block content %}{% endblock %}'}),
        app.jinja_env.loader])

    @login_required
    def floor():
        return render_template("_bench_floor.html")

    app.add_url_rule(FLOOR_URL, "bench_floor", floor)


class PageFailed(Exception):
    """A page answered other than 200; the message says how, and what it raised."""


def _capture(app, client, url: str) -> list[tuple[str, tuple | dict]]:
    """Every statement one request executes, in order (transaction control left out)."""
    from flask import got_request_exception
    from sqlalchemy import event

    from models import db

    seen: list[tuple[str, tuple | dict]] = []
    raised: list[BaseException] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if not SKIP_SQL.match(statement):  # psycopg's named parameters stay a dict
            seen.append((statement, parameters if isinstance(parameters, dict) else tuple(parameters or ())))

    def failed(sender, exception, **extra):
        raised.append(exception)

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", record)
    got_request_exception.connect(failed, app)
    try:
        reply = client.get(url)
    finally:
        event.remove(engine, "before_cursor_execute", record)
        got_request_exception.disconnect(failed, app)
    if reply.status_code != 200:
        why = f"{type(raised[0]).__name__}: {str(raised[0]).splitlines()[0]}" if raised else "no exception"
        raise PageFailed(f"HTTP {reply.status_code} ({why})")
    return seen


def _distinct(statements: list[tuple[str, tuple | dict]]) -> list[tuple[str, tuple | dict]]:
    first: dict[str, tuple | dict] = {}
    for sql, params in statements:
        first.setdefault(sql, params)
    return list(first.items())


def _bare(conn, statements: list[tuple[str, tuple | dict]]) -> float:
    """The statements run on a plain sqlite3 or psycopg connection (no parameters passed
    when there are none, so psycopg leaves a literal % alone)."""
    began = time.perf_counter()
    for sql, params in statements:
        (conn.execute(sql, params) if params else conn.execute(sql)).fetchall()
    return time.perf_counter() - began


def _slowest(conn, statements: list[tuple[str, tuple | dict]]) -> dict:
    """The distinct statement that costs the most bare (best of 3): where a page's SQL time goes."""
    timed = [(min(_bare(conn, [one]) for _ in range(3)), one[0]) for one in statements]
    seconds, sql = max(timed, default=(0.0, ""))
    return {"ms": seconds * 1e3, "sql": " ".join(sql.split())}


def _bare_connect(spec: dict):
    if spec.get("pg_url"):
        import psycopg

        from bench.claim_worker import pg_conninfo

        # Never prepared, as the page's own statements: psycopg prepares a statement run 5
        # times, but drops them all at a ROLLBACK, which ends every read-only request (the
        # pool's reset). A prepared statement may get PostgreSQL's generic plan after 5 more
        # runs, and that plan can differ from the page's (the timeline's median interval:
        # ~10 ms generic vs ~200 ms custom at 1,000,000 rows).
        return psycopg.connect(pg_conninfo(spec["pg_url"]), autocommit=True, prepare_threshold=None)
    bare = sqlite3.connect(spec["db"], isolation_level=None)
    for pragma in ("journal_mode=WAL", "busy_timeout=10000", "synchronous=FULL", "foreign_keys=ON"):
        bare.execute(f"PRAGMA {pragma}")
    return bare


def _summary(seconds: list[float]) -> dict:
    ordered = sorted(seconds)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"median_ms": statistics.median(ordered) * 1e3, "p95_ms": p95 * 1e3, "n": len(ordered)}


def _profile(client, url: str, path: Path) -> None:
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.runcall(client.get, url)
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(40)
    path.write_text(out.getvalue())


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    from app import create_app

    app = create_app()
    _add_floor_page(app)
    client = app.test_client()
    _login(app, client)
    rules = {rule.rule for rule in app.url_map.iter_rules()}
    bare = _bare_connect(spec)
    results = {}
    for page in spec["pages"]:
        if page.get("requires_rule") and page["requires_rule"] not in rules:
            results[page["name"]] = {"skipped": f"no route {page['requires_rule']} yet"}
            continue
        url = page["url"]
        try:
            statements = _capture(app, client, url)
        except PageFailed as failed:
            results[page["name"]] = {"url": url, "failed": str(failed)}
            continue
        distinct = _distinct(statements)
        client.get(url), _bare(bare, distinct)  # warm the caches: both sides start hot
        page_s, bare_s = [], []
        budget = time.perf_counter() + spec["seconds_per_page"]
        while len(page_s) < spec["repeats"] and (len(page_s) < spec["min_repeats"]
                                                  or time.perf_counter() < budget):
            began = time.perf_counter()
            reply = client.get(url)
            page_s.append(time.perf_counter() - began)
            if reply.status_code != 200:
                raise SystemExit(f"{url}: HTTP {reply.status_code}")
            bare_s.append(_bare(bare, distinct))
        results[page["name"]] = {"url": url, "page": _summary(page_s), "bare": _summary(bare_s),
                                 "statements": len(statements), "distinct": len(distinct),
                                 "bytes": len(reply.get_data()), "slowest": _slowest(bare, distinct)}
        if spec.get("profile_dir"):
            slug = re.sub(r"[^a-z0-9]+", "-", page["name"].lower()).strip("-")
            _profile(client, url, Path(spec["profile_dir"]) / f"profile-page-{slug}.txt")
    bare.close()
    results["_process"] = {"maxrss_kb": peak_rss_kb(),
                           "pid": os.getpid()}
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
