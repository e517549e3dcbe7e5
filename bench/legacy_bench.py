"""Bench section "legacy": upload+analysis time and per-view time of a large legacy send log (#15).

The log is uploaded once through the real page (parse, analyse, store), then each view is
requested several times through the app (Flask's test client, the same process): the first
view of a log rebuilds its stored analysis, the others are served as they would be to a
person paging through it. Reported, never asserted (speed depends on the machine).
"""

from __future__ import annotations

import csv
import io
import random
import statistics
import time
from datetime import datetime, timedelta
from pathlib import Path

from tests.helpers import csrf_token, logged_in_client

CAMPAIGNS = [str(c) for c in range(1, 11)]
STATUSES = ["SENT"] * 18 + ["FAILED", "OPENED"]


def legacy_csv(rows: int, seed: int = 15) -> bytes:
    """A 30-day export of `rows` rows in ten campaigns, with statuses, workers and four bursts."""
    rnd, start = random.Random(seed), datetime(2026, 2, 1)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["sentAt", "campaignId", "leadId", "variantLetter", "status", "worker"])
    bursts = 0
    for b, day in enumerate((3, 9, 20, 27)):
        at = start + timedelta(days=day, hours=10, minutes=40, seconds=1)
        for i in range(min(200, rows // 100)):
            for copy in range(2):
                writer.writerow([(at + timedelta(minutes=5 * i)).isoformat() + ".000Z", CAMPAIGNS[b],
                                 f"burst{b}-{i}", "A", "SENT", f"worker-{copy}"])
                bursts += 1
    for i in range(rows - bursts):
        at = start + timedelta(seconds=rnd.randrange(30 * 86400), milliseconds=rnd.randrange(1000))
        writer.writerow([at.isoformat() + "Z", rnd.choice(CAMPAIGNS), f"lead{i}", rnd.choice("AB"),
                         rnd.choice(STATUSES), "worker-0"])
    return out.getvalue().encode()


def _timed(client, url: str, repeats: int) -> dict:
    """Median and p95 milliseconds of GET url (the first, cold request reported apart)."""
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - began) * 1000)
        assert response.status_code == 200, (url, response.status_code)
    warm = sorted(times[1:]) or times
    return {"first_ms": times[0], "median_ms": statistics.median(warm),
            "p95_ms": warm[min(len(warm) - 1, round(0.95 * (len(warm) - 1)))]}


def run(rows: int, db_path: Path, config: dict, repeats: int = 15) -> dict:
    """Upload a `rows`-row log into a fresh database and time the upload and its views."""
    from app import create_app
    from models import LegacyEvent, db
    from storage import schema

    data = legacy_csv(rows)
    app = create_app(config | {"LEGACY_LOG_MAX_BYTES": 1 << 30})
    with app.app_context():
        schema.install(db.engine, db.metadata)
    client = logged_in_client(app, "bench@example.com", "bench password")
    token = csrf_token(client.get("/timeline").data)
    began = time.perf_counter()
    response = client.post("/timeline/legacy", data={"csrf_token": token, "tz": "UTC", "name": "bench",
                                                     "view": "recipient",
                                                     "file": (io.BytesIO(data), "bench.csv")})
    upload_s = time.perf_counter() - began
    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    base = response.location.split("?")[0]
    with app.app_context():
        stored = db.session.query(LegacyEvent).count()
    views = {
        "page 1": f"{base}?tz=UTC",
        "page 1, Europe/Warsaw": f"{base}?tz=Europe/Warsaw",
        "a deep page (10,000)": f"{base}?tz=UTC&page={max(1, min(10_000, stored // 50))}",
        "timeline with the list of logs": "/timeline?tz=UTC",
        "one day (Since/Until: re-analysed)": f"{base}?tz=UTC&from=2026-02-03T00:00&to=2026-02-04T00:00",
    }
    result = {"rows": rows, "bytes": len(data), "stored": stored, "upload_s": upload_s,
              "views": {name: _timed(client, url, repeats) for name, url in views.items()}}
    client.post("/language", data={"csrf_token": token, "language": "en"})
    result["views"]["page 1, English"] = _timed(client, f"{base}?tz=UTC", repeats)
    with app.app_context():
        db.engine.dispose()
    return result
