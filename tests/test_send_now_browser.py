""""Send now" in real headless Chromium with a real scheduler thread in the serving process:
the click records a request, the scheduler's job carries it out, the page follows it live."""

from __future__ import annotations

import threading

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import func, select

from conftest import app_config
from helpers import make_campaign
from models import SendLog, User, db
from storage.database import write_session
from test_browser import _no_sideways_scroll, log_in
from test_send_requests import closed_window

pytestmark = pytest.mark.slow
SIZES = ((1366, 768, "desktop"), (390, 844, "phone"))


@pytest.fixture
def config(tmp_path, smtp) -> dict:
    # This module's app runs its scheduler (APScheduler threads), as `make run` does.
    return app_config(tmp_path / "sendonce.db", smtp.port, SCHEDULER_ENABLED=True, TICK_SECONDS=1,
                      REQUEST_POLL_SECONDS=0.3)


@pytest.fixture
def running(app):
    """The app's scheduler, stopped (and its lease released) when the test ends."""
    yield app.extensions["sendonce_scheduler"]
    app.extensions["sendonce_scheduler"].shutdown()
    app.extensions["sendonce_ticker"].release()


@pytest.fixture
def admin(app):
    with app.app_context(), write_session(db.engine) as session:
        user = User(email="admin@example.com")
        user.set_password("correct horse")
        session.add(user)


def test_the_send_button_shows_the_scheduler_carrying_out_the_request(page: Page, app, running, live_server,
                                                                      admin, engine, smtp, screenshot):
    held = "lead0002@example.com"
    arrived, release = threading.Event(), threading.Event()
    smtp.recorder.hold[held] = (arrived, release)
    # Outside its window: the scheduler's own ticks send nothing; only the button's request does.
    cid = make_campaign(engine, 6, batch_size=4, interval=3600, name="Jesień <b>2026</b>", **closed_window())
    log_in(page, live_server)
    page.goto(f"{live_server}/campaigns/{cid}")
    page.click("#send-now")
    box = page.locator("#send-request")
    assert arrived.wait(30), "the scheduler never carried out the request"
    expect(box).to_contain_text("Wysyłanie: 2 z 4")  # live, without a reload
    expect(box.locator("tbody tr")).to_have_count(3)
    expect(box.locator("tbody tr").nth(2)).to_contain_text(held)
    for width, height, name in SIZES:
        page.set_viewport_size({"width": width, "height": height})
        _no_sideways_scroll(page)
        screenshot(f"17-send-request-sending-{name}")
    release.set()
    expect(box).to_contain_text("Zakończono: wysłano 4", timeout=30_000)
    expect(box.locator(".status.sent")).to_have_count(4)
    expect(page.locator("#campaign-live .sent-count")).to_have_text("Wysłano 4 z 6")  # the counts follow
    for width, height, name in SIZES:
        page.set_viewport_size({"width": width, "height": height})
        _no_sideways_scroll(page)
        screenshot(f"18-send-request-done-{name}")
    assert sum(smtp.recorder.received.values()) == 4 and max(smtp.recorder.received.values()) == 1
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(SendLog)).scalar() == 4
