"""Alerts (#16): each kind opens one alert while its condition lasts, is mailed once to the
admins through a real SMTP server (rate-limited), is cleared when the condition ends, and can
be dismissed on the dashboard."""

from __future__ import annotations

from datetime import timedelta
from email.header import decode_header, make_header

import pytest
from sqlalchemy import func, insert, select, update

import scheduler
from core import alerts, campaigns
from delivery.transport import make_transport
from helpers import csrf_token, log_in, make_campaign, make_unknown
from models import Alert, AppMeta, Campaign, Mailbox, SchedulerLease, SendLog, Trigger, User, db
from sender import Settings, send_batch
from storage.database import immediate
from storage.timeutil import utcnow

ADMIN = "admin@example.com"


@pytest.fixture
def config(config):
    return {**config, "ALERT_MIN_INTERVAL_SECONDS": 0}  # the rate limit has its own tests


def add_user(engine, email: str, language: str = "pl", disabled: bool = False) -> None:
    with immediate(engine) as conn:
        conn.execute(insert(User.__table__).values(email=email, password_hash="x", language=language,
                                                   disabled=disabled))


@pytest.fixture
def admin(engine):
    add_user(engine, ADMIN)


def add_mailbox(engine, address: str = "ala@firma.test", **values) -> int:
    with immediate(engine) as conn:
        result = conn.execute(insert(Mailbox.__table__).values(address=address, **values))
        return result.inserted_primary_key[0]


def set_mailbox(engine, mailbox_id: int, status: str, reason: str | None = None) -> None:
    with immediate(engine) as conn:  # what sender.py does when it pauses a mailbox
        conn.execute(update(Mailbox.__table__).where(Mailbox.id == mailbox_id)
                     .values(status=status, pause_reason=reason))


def open_alerts(engine) -> list:
    with engine.connect() as conn:
        return alerts.open_alerts(conn)


def mails_to(smtp, address: str) -> list:
    return [m for m in smtp.recorder.messages if m["To"] == address]


def subject(msg) -> str:
    return str(make_header(decode_header(msg["Subject"])))


def body(msg) -> str:
    return msg.get_payload(decode=True).decode()


def check_and_mail(app, now=None) -> int:
    """What the lease holder does after its tick."""
    now = now or utcnow()
    with app.app_context():
        alerts.check(db.engine, alerts.Watch.from_config(app.config), now)
        return scheduler.mail_alerts(app, now)


def tick(app) -> None:
    app.extensions["sendonce_ticker"].safe_tick()


# --- mailbox paused ---------------------------------------------------------------------------

def test_a_paused_mailbox_raises_one_alert_mailed_once_and_cleared_when_resumed(app, engine, smtp, admin):
    box = add_mailbox(engine)
    tick(app)
    assert open_alerts(engine) == [] and smtp.recorder.messages == []
    set_mailbox(engine, box, "paused", "535 5.7.8 authentication failed")
    for _ in range(3):  # the condition lasts three ticks: one alert, one mail
        tick(app)
    (alert,) = open_alerts(engine)
    assert (alert.kind, alert.key) == ("mailbox_paused", str(box)) and alert.emailed_at is not None
    (mail,) = mails_to(smtp, ADMIN)
    assert subject(mail) == "SendOnce: Skrzynka wstrzymana"
    assert "ala@firma.test" in body(mail) and "535 5.7.8 authentication failed" in body(mail)
    assert mail["List-Unsubscribe"] is None  # mail to the team, not a list
    set_mailbox(engine, box, "active")
    tick(app)
    assert open_alerts(engine) == []
    with engine.connect() as conn:
        assert conn.execute(select(Alert.cleared_at).where(Alert.id == alert.id)).scalar() is not None
    set_mailbox(engine, box, "paused", "5 failures in a row")  # a new pause: a new alert, a new mail
    tick(app)
    assert len(open_alerts(engine)) == 1 and len(mails_to(smtp, ADMIN)) == 2


def test_every_admin_gets_it_in_their_language_and_a_disabled_user_none(app, engine, smtp, admin):
    add_user(engine, "en@example.com", language="en")
    add_user(engine, "gone@example.com", disabled=True)
    set_mailbox(engine, add_mailbox(engine), "paused", "bad password")
    check_and_mail(app)
    (pl,), (en,) = mails_to(smtp, ADMIN), mails_to(smtp, "en@example.com")
    assert mails_to(smtp, "gone@example.com") == []
    assert subject(en) == "SendOnce: Mailbox paused" and "is paused and sends nothing" in body(en)
    assert "jest wstrzymana" in body(pl)
    assert "http://sendonce.test/" in body(en)  # the dashboard, from BASE_URL


# --- unknown sends ----------------------------------------------------------------------------

def send_one(app, engine, campaign_id: int) -> None:
    with app.app_context():
        transport = make_transport(app.config)
        send_batch(engine, Settings.from_config(app.config), transport, campaign_id, Trigger.BUTTON, limit=1)
        transport.close()


@pytest.fixture
def scheduler_running(engine):
    """Another process holds the lease (for the tests of other kinds with active campaigns)."""
    set_lease(engine, "elsewhere:1:alive", utcnow() + timedelta(hours=1))


def test_new_unknown_sends_are_alerted_once_each_time_more_appear_and_cleared_when_decided(
        app, engine, smtp, admin, scheduler_running):
    cid = make_campaign(engine, 3)
    send_one(app, engine, cid)
    make_unknown(engine)
    with engine.connect() as conn:
        sends_before = conn.execute(select(func.count()).select_from(SendLog)).scalar()
    check_and_mail(app)
    check_and_mail(app)  # nothing new: no second alert, no second mail
    (alert,) = open_alerts(engine)
    assert alert.kind == "unknown_sends"
    (mail,) = mails_to(smtp, ADMIN)
    assert f"/campaigns/{cid}/log?status=unknown" in body(mail)
    send_one(app, engine, cid)
    make_unknown(engine)  # a second unknown send: news, mailed again
    check_and_mail(app)
    (again,) = open_alerts(engine)
    assert again.id != alert.id and len(mails_to(smtp, ADMIN)) == 2
    assert "2 wysyłki" in body(mails_to(smtp, ADMIN)[1])
    with engine.connect() as conn:  # alert mail is not campaign mail
        assert conn.execute(select(func.count()).select_from(SendLog)).scalar() == sends_before + 1
    with immediate(engine) as conn:  # a person decided them all
        conn.execute(update(SendLog.__table__).values(status="sent"))
    check_and_mail(app)
    assert open_alerts(engine) == [] and len(mails_to(smtp, ADMIN)) == 2


def test_a_dismissed_unknown_alert_stays_quiet_until_another_send_becomes_unknown(app, engine, smtp, admin,
                                                                                 scheduler_running):
    cid = make_campaign(engine, 3)
    send_one(app, engine, cid)
    make_unknown(engine)
    check_and_mail(app)
    (alert,) = open_alerts(engine)
    assert alerts.dismiss(engine, alert.id, ADMIN, utcnow())
    check_and_mail(app)
    assert open_alerts(engine) == []
    send_one(app, engine, cid)
    make_unknown(engine)
    check_and_mail(app)
    assert len(open_alerts(engine)) == 1 and len(mails_to(smtp, ADMIN)) == 2


# --- the scheduler lease ----------------------------------------------------------------------

def set_lease(engine, holder: str, expires_at) -> None:
    with immediate(engine) as conn:
        conn.execute(insert(SchedulerLease.__table__).values(name="scheduler", holder=holder, epoch=1,
                                                             heartbeat_at=expires_at, expires_at=expires_at))


def test_the_lease_unheld_for_three_ticks_is_alerted_by_a_process_that_does_not_hold_it(
        app, engine, smtp, admin, runner):
    make_campaign(engine, 1)
    now = utcnow()
    set_lease(engine, "elsewhere:4242:dead", now - timedelta(seconds=2))  # TICK_SECONDS is 1: not yet
    check_and_mail(app, now)
    assert open_alerts(engine) == []
    with immediate(engine) as conn:
        conn.execute(update(SchedulerLease.__table__).values(expires_at=now - timedelta(seconds=60)))
    result = runner.invoke(args=["alerts", "check"])  # cron's watchdog: never takes the lease
    assert result.exit_code == 0, result.output
    assert "1 open alerts; 1 mailed now" in result.output
    (alert,) = open_alerts(engine)
    assert alert.kind == "lease_unheld"
    (mail,) = mails_to(smtp, ADMIN)
    assert "Harmonogram nie działa" in subject(mail)
    with engine.connect() as conn:
        assert conn.execute(select(SchedulerLease.holder)).scalar() == "elsewhere:4242:dead"
    runner.invoke(args=["alerts", "check"])
    assert len(mails_to(smtp, ADMIN)) == 1  # still unheld: no second mail
    tick(app)  # a scheduler is back: it takes the lease, and the alert clears
    assert open_alerts(engine) == []


def test_a_process_whose_acquire_fails_checks_too_and_finds_the_lease_held(app, engine, smtp, admin):
    make_campaign(engine, 1, start=False)
    with immediate(engine) as conn:
        conn.execute(insert(Alert.__table__).values(kind="lease_unheld", key="", message="{}",
                                                    created_at=utcnow()))
    set_lease(engine, "elsewhere:4242:alive", utcnow() + timedelta(seconds=60))
    ticker = app.extensions["sendonce_ticker"]
    assert ticker.tick() is None  # another process holds the lease
    ticker.watch()
    assert open_alerts(engine) == []


def test_no_alert_when_no_campaign_is_active_and_a_dismissed_one_waits_for_the_next_outage(
        app, engine, smtp, admin):
    cid = make_campaign(engine, 1, start=False)
    now = utcnow()
    set_lease(engine, "", now - timedelta(hours=1))
    check_and_mail(app, now)
    assert open_alerts(engine) == []  # nothing waits for a scheduler
    with immediate(engine) as conn:
        conn.execute(update(Campaign.__table__).where(Campaign.id == cid).values(status="active"))
    check_and_mail(app, now)
    (alert,) = open_alerts(engine)
    alerts.dismiss(engine, alert.id, ADMIN, now)
    check_and_mail(app, now + timedelta(seconds=10))
    assert open_alerts(engine) == []  # the same outage: dismissed
    with immediate(engine) as conn:  # a scheduler came back, then stopped again
        conn.execute(update(SchedulerLease.__table__).values(holder="h",
                                                             expires_at=now + timedelta(seconds=20)))
    check_and_mail(app, now + timedelta(seconds=15))
    check_and_mail(app, now + timedelta(seconds=60))
    assert [a.kind for a in open_alerts(engine)] == ["lease_unheld"]
    assert len(mails_to(smtp, ADMIN)) == 2


# --- backups ----------------------------------------------------------------------------------

def test_a_failed_backup_raises_an_alert_and_a_good_one_clears_it(app, engine, smtp, admin, runner, tmp_path):
    not_a_folder = tmp_path / "backups"
    not_a_folder.write_text("a file where the backup folder should be")
    app.config["BACKUP_DIR"] = str(not_a_folder)
    result = runner.invoke(args=["backup"])
    assert result.exit_code == 1 and "backup failed: " in result.output and str(not_a_folder) in result.output
    assert "Traceback" not in result.output
    runner.invoke(args=["backup"])  # fails again: still one alert
    (alert,) = open_alerts(engine)
    assert alert.kind == "backup_failed"
    check_and_mail(app)
    (mail,) = mails_to(smtp, ADMIN)
    assert "Kopia zapasowa nieudana" in subject(mail) and str(not_a_folder) in body(mail)
    app.config["BACKUP_DIR"] = str(tmp_path / "good")
    assert runner.invoke(args=["backup"]).exit_code == 0
    assert open_alerts(engine) == []


# --- rate limit and failures ------------------------------------------------------------------

def test_alerts_within_the_interval_wait_and_go_together(app, engine, smtp, admin):
    app.config["ALERT_MIN_INTERVAL_SECONDS"] = 3600
    now = utcnow()
    first = add_mailbox(engine, "a@firma.test")
    set_mailbox(engine, first, "paused", "first")
    check_and_mail(app, now)
    assert len(mails_to(smtp, ADMIN)) == 1
    set_mailbox(engine, add_mailbox(engine, "b@firma.test"), "paused", "second")
    alerts.backup_result(engine, "disk full", now + timedelta(minutes=5))
    assert check_and_mail(app, now + timedelta(minutes=10)) == 0
    assert check_and_mail(app, now + timedelta(minutes=59)) == 0
    assert len(mails_to(smtp, ADMIN)) == 1
    assert check_and_mail(app, now + timedelta(minutes=61)) == 2  # both waiting alerts, in one mail
    later = mails_to(smtp, ADMIN)[1]
    assert subject(later) == "SendOnce: 2 alerty"
    assert "b@firma.test" in body(later) and "disk full" in body(later) and "a@firma.test" not in body(later)


def test_a_mail_that_cannot_be_sent_is_tried_again_later(app, engine, smtp, admin):
    smtp.recorder.rcpt_replies[ADMIN] = ["451 4.3.0 try later"]
    set_mailbox(engine, add_mailbox(engine), "paused", "x")
    assert check_and_mail(app) == 0
    (alert,) = open_alerts(engine)
    assert alert.emailed_at is None
    assert check_and_mail(app) == 1 and len(mails_to(smtp, ADMIN)) == 1


def test_the_alert_sender_mailbox_sends_them(app, engine, smtp, admin):
    add_mailbox(engine, "alerty@firma.test", name="Alerty", smtp_host="127.0.0.1", smtp_port=smtp.port,
                smtp_security="none", alert_sender=True)
    set_mailbox(engine, add_mailbox(engine), "paused", "x")
    check_and_mail(app)
    (mail,) = mails_to(smtp, ADMIN)
    assert mail["From"] == "Alerty <alerty@firma.test>" and "@firma.test>" in mail["Message-ID"]


# --- the dashboard ----------------------------------------------------------------------------

def test_the_dashboard_shows_open_alerts_escaped_and_dismisses_one(app, engine, smtp, client):
    box = add_mailbox(engine, "ala@firma.test")
    set_mailbox(engine, box, "paused", "<script>alert(1)</script>")
    check_and_mail(app)
    log_in(app, client, ADMIN)
    page = client.get("/").data.decode()
    assert "Alerty" in page and "Skrzynka wstrzymana" in page and "ala@firma.test" in page
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
    (alert,) = open_alerts(engine)
    url = f"/alerts/{alert.id}/dismiss"
    assert client.post(url).status_code == 400  # no CSRF token
    assert app.test_client().post(url).status_code in (302, 400)  # logged out: refused either way
    assert len(open_alerts(engine)) == 1
    response = client.post(url, data={"csrf_token": csrf_token(client.get("/").data)})
    assert response.status_code == 302 and open_alerts(engine) == []
    assert "Skrzynka wstrzymana" not in client.get("/").data.decode()
    check_and_mail(app)  # still paused, but a person has seen it: quiet
    assert open_alerts(engine) == []
    set_mailbox(engine, box, "active")
    check_and_mail(app)
    set_mailbox(engine, box, "paused", "again")
    check_and_mail(app)
    assert len(open_alerts(engine)) == 1
    again = client.post(url, data={"csrf_token": csrf_token(client.get("/").data)}, follow_redirects=True)
    assert "Ten alert był już zamknięty" in again.data.decode()


# --- campaigns paused by SendOnce -------------------------------------------------------------

def test_a_campaign_paused_by_sendonce_is_alerted_and_one_paused_by_hand_is_not(app, engine, smtp, admin,
                                                                              scheduler_running):
    by_hand, by_failures = make_campaign(engine, 1), make_campaign(engine, 1)
    campaigns.pause(engine, by_hand)
    with immediate(engine) as conn:  # what sender._count_failures does
        conn.execute(update(Campaign.__table__).where(Campaign.id == by_failures).values(
            status="paused", pause_reason="5 failed sends in a row; last: 421 try later"))
    check_and_mail(app)
    check_and_mail(app)
    (alert,) = open_alerts(engine)
    assert (alert.kind, alert.key) == ("campaign_paused", str(by_failures))
    (mail,) = mails_to(smtp, ADMIN)
    assert "Kampania wstrzymana przez SendOnce" in subject(mail)
    assert f"http://sendonce.test/campaigns/{by_failures}" in body(mail) and "421 try later" in body(mail)
    campaigns.resume(engine, by_failures)
    check_and_mail(app)
    assert open_alerts(engine) == []


def test_nothing_is_checked_while_a_restore_runs_and_the_watchdog_says_why(app, engine, smtp, admin, runner):
    set_mailbox(engine, add_mailbox(engine), "paused", "x")
    with immediate(engine) as conn:
        conn.execute(insert(AppMeta.__table__).values(key="maintenance", value="restore of b.db started"))
    result = runner.invoke(args=["alerts", "check"])
    assert result.exit_code == 1 and "alerts not checked: maintenance in progress" in result.output
    tick(app)
    assert open_alerts(engine) == [] and smtp.recorder.messages == []


def test_an_alert_sender_whose_password_cannot_be_read_falls_back_to_the_app_transport(
        app, engine, smtp, admin, tmp_path):
    app.config["MAILBOX_KEY_FILE"] = str(tmp_path / "secret.keys")
    add_mailbox(engine, "alerty@firma.test", smtp_host="127.0.0.1", smtp_port=1, smtp_username="alerty",
                smtp_secret="not-a-fernet-token", alert_sender=True)
    set_mailbox(engine, add_mailbox(engine), "paused", "x")
    check_and_mail(app)
    (mail,) = mails_to(smtp, ADMIN)
    assert app.config["MAIL_FROM"] in mail["From"]


def test_the_dashboard_in_english_and_the_cli_list(app, engine, smtp, client, runner):
    alerts.backup_result(engine, "[Errno 28] No space left on device", utcnow())
    log_in(app, client, ADMIN)
    token = csrf_token(client.get("/").data)
    client.post("/language", data={"language": "en", "back": "/", "csrf_token": token})
    page = client.get("/").data.decode()
    assert "Backup failed" in page and "No space left on device" in page and ">Dismiss<" in page
    result = runner.invoke(args=["alerts", "list"])
    assert result.exit_code == 0
    line = "backup_failed\tThe last backup failed: [Errno 28] No space left on device\tnot mailed yet"
    assert line in result.output
    assert result.output.endswith("1 open alerts\n")
