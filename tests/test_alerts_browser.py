"""The dashboard's alert box in real headless Chromium: shown, readable on a phone, dismissed."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from core import alerts
from models import db
from storage.timeutil import utcnow
from test_alerts import add_mailbox, open_alerts, set_mailbox
from test_browser import admin, log_in  # noqa: F401 - the fixture and the log-in steps

pytestmark = pytest.mark.slow


def test_the_dashboard_alert_box_on_a_desktop_and_a_phone_and_dismissed(page: Page, live_server, app, engine,
                                                                         admin, screenshot):  # noqa: F811
    set_mailbox(engine, add_mailbox(engine, "ala.nowak@firma-handlowa.test"), "paused",
                "535 5.7.8 Username and Password not accepted <b>x</b>")
    alerts.backup_result(engine, "backup failed, nothing kept: [Errno 28] No space left on device", utcnow())
    with app.app_context():
        alerts.check(db.engine, alerts.Watch.from_config(app.config), utcnow())
    page.set_viewport_size({"width": 1366, "height": 768})
    log_in(page, live_server)
    box = page.locator("section.alerts")
    expect(box).to_contain_text("Skrzynka wstrzymana")
    expect(box).to_contain_text("Kopia zapasowa nieudana")
    expect(box).to_contain_text("<b>x</b>")  # shown as text, not markup
    screenshot("alerts-dashboard-1366x768")
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
    screenshot("alerts-dashboard-390x844")
    page.set_viewport_size({"width": 1366, "height": 768})
    page.locator("li.alert[data-kind=backup_failed] button", has_text="Zamknij").click()
    expect(page.locator("p.flash")).to_contain_text("Alert zamknięty")
    expect(page.locator("li.alert")).to_have_count(1)
    assert [a.kind for a in open_alerts(engine)] == ["mailbox_paused"]
