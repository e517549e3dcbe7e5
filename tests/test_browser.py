"""The whole admin flow in real headless Chromium, against a live server and real SMTP."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import func, select

from conftest import SCREENSHOTS
from core import send_requests
from delivery.tokens import make_token
from delivery.transport import make_transport
from helpers import make_campaign, make_unknown, serve_requests
from models import Lead, SendLog, SendRequest, Trigger, User, Variant, db
from procs import wait_for
from sender import Settings, send_batch
from storage.database import write_session
from storage.timeutil import utcnow

pytestmark = pytest.mark.slow

CSV = ("email;imię;nazwisko;firma;miasto\n"
       "anna@example.com;Anna;Nowak;ACME;Kraków\n"
       "JAN@example.com ;Jan;Kowalski;Foo;Łódź\n"
       "zła-linia;X;Y;Z;Q\n"
       "ewa@example.com;Ewa;Wiśniewska;Bar;Gdańsk\n")


@pytest.fixture
def admin(app):
    with app.app_context(), write_session(db.engine) as session:
        user = User(email="admin@example.com")
        user.set_password("correct horse")
        session.add(user)


def log_in(page: Page, base: str) -> None:
    page.goto(f"{base}/")
    expect(page).to_have_url(re.compile(r"/login"))
    page.fill("input[name=email]", "admin@example.com")
    page.fill("input[name=password]", "correct horse")
    page.click("button[type=submit] >> text=Zaloguj")
    expect(page.locator("h1")).to_have_text("Kampanie")


def add_variant(page: Page, letter: str, subject: str, body: str) -> None:
    page.fill("input[name=letter]", letter)
    page.fill("input[name=subject]", subject)
    page.fill("textarea[name=body]", body)
    page.click("text=Zapisz wariant")


def test_admin_flow_in_a_real_browser(page: Page, app, live_server, admin, smtp, tmp_path, screenshot):
    base = live_server
    log_in(page, base)
    screenshot("01-dashboard-empty")

    page.click("text=Nowa kampania")
    page.fill("input[name=name]", "Jesień 2026")
    page.fill("input[name=from_address]", "zespol@example.com")
    page.fill("input[name=interval_seconds]", "3600")
    page.fill("input[name=batch_size]", "2")
    for day in range(7):
        page.check(f"input[name=window_weekdays][value='{day}']")
    page.fill("input[name=window_start_hour]", "0")
    page.fill("input[name=window_end_hour]", "24")
    screenshot("02-campaign-form")
    page.click("button >> text=Zapisz")
    add_variant(page, "A", "Cześć {{ first_name }}", "Dzień dobry {{ first_name }} z {{ miasto }}!")
    campaign_url = page.url
    page.click("text=Dodaj wariant")
    add_variant(page, "B", "{{ company }}: pytanie", "Witam, {{ company }}.")

    page.click("text=Importuj CSV do tej kampanii")
    csv = tmp_path / "leady.csv"
    csv.write_text(CSV, encoding="cp1250")
    page.set_input_files("input[type=file]", str(csv))
    page.click("text=Wczytaj plik")
    expect(page.locator(".preview-table")).to_contain_text("Kraków")
    screenshot("03-import-mapping")
    page.click("button >> text=Importuj")
    expect(page.locator("main")).to_contain_text("Nowe leady: 3")
    expect(page.locator("main")).to_contain_text("zła-linia")
    screenshot("04-import-result")

    page.goto(campaign_url)
    page.locator(".variants a", has_text=re.compile("^A$")).click()
    expect(page.locator("#preview-body")).to_contain_text("Dzień dobry Anna z Kraków!")
    page.fill("textarea[name=body]", "Nowa treść dla {{ first_name }}")
    expect(page.locator("#preview-body")).to_have_text("Nowa treść dla Anna")
    screenshot("05-variant-preview")

    page.goto(campaign_url)
    page.click("text=Sprawdź i uruchom")
    expect(page.locator(".flash.ok")).to_contain_text("Kampania uruchomiona.")
    page.dblclick("#send-now")
    expect(page.locator("#send-request")).to_contain_text("Czekam na proces wysyłający…")
    serve_requests(app)  # the sending process carries the click out; the page follows it
    expect(page.locator("#send-request")).to_contain_text("Zakończono: wysłano 2")
    screenshot("06-campaign-sent")
    assert sum(smtp.recorder.received.values()) == 2  # one batch, though clicked twice

    page.click("button >> text=Wstrzymaj")
    expect(page.locator("#send-now")).to_be_disabled()
    expect(page.locator("main")).to_contain_text("Wznów kampanię, aby wysyłać.")
    screenshot("07-campaign-paused")

    page.select_option("select[name=language]", "en")
    expect(page.locator("#send-now")).to_have_text("Send campaign")
    expect(page.locator("main")).to_contain_text("Resume the campaign to send.")
    page.click("text=Campaigns")
    screenshot("08-dashboard-en")
    page.click("text=Leads")
    screenshot("09-leads-en")


def test_double_click_without_javascript_still_sends_one_batch(browser, app, live_server, admin, smtp,
                                                                engine):
    # With JavaScript off nothing disables the button: the one-time key alone must hold.
    cid = make_campaign(engine, 10, batch_size=2, interval=3600)
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    log_in(page, live_server)
    page.goto(f"{live_server}/campaigns/{cid}")
    page.dblclick("#send-now")
    page.wait_for_load_state()
    # Both POSTs reach the server; whichever runs second finds the key's request recorded.
    wait_for(lambda: serve_requests(app) is not None and sum(smtp.recorder.received.values()) >= 2,
             timeout=15)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(SendLog)).scalar() == 2
        assert conn.execute(select(func.count()).select_from(SendRequest)).scalar() == 1
    assert sum(smtp.recorder.received.values()) == 2
    page.reload()  # the progress is rendered by the server too
    expect(page.locator("#send-request")).to_contain_text("Zakończono: wysłano 2")
    context.close()


def test_a_waiting_request_says_no_sending_process_runs(page: Page, live_server, admin, engine, screenshot):
    cid = make_campaign(engine, 3, batch_size=2, name="Zima 2026")
    rid = send_requests.record(engine, cid, "s" * 32, "admin@example.com", utcnow() - timedelta(seconds=30))
    log_in(page, live_server)
    sizes = ((1366, 768, "15-send-request-no-sender"), (390, 844, "16-phone-send-request-no-sender"))
    for width, height, name in sizes:
        page.set_viewport_size({"width": width, "height": height})
        page.goto(f"{live_server}/campaigns/{cid}?request={rid}")
        notice = page.locator("#no-sender")
        expect(notice).to_contain_text("Żaden proces wysyłający nie działa")
        expect(notice).to_contain_text("flask --app app send-due")
        _no_sideways_scroll(page)
        screenshot(name)


def test_timeline_of_the_incident_in_a_real_browser(page: Page, live_server, admin, screenshot):
    from test_timeline import INCIDENT_CSV

    log_in(page, live_server)
    page.click("header >> text=Oś czasu")
    page.click("text=Przeanalizuj dziennik wysyłek z innego systemu")
    page.set_input_files("input[type=file]", str(INCIDENT_CSV))
    page.click("button >> text=Analizuj")
    expect(page.locator(".finding")).to_contain_text("Od 11:40:01 co 5 minut")
    expect(page.locator("table.totals")).to_contain_text("52")
    expect(page.locator("rect.dup")).to_have_count(15)  # 16 duplicates in 15 five-minute ticks
    screenshot("10-timeline-incident")


@pytest.mark.parametrize(("zone", "start"), [("Europe/Warsaw", "11:40:01"), ("America/New_York", "05:40:01")])
def test_an_exported_log_reads_in_the_browsers_zone(browser, live_server, admin, tmp_path, zone, start):
    """#15 point 10: a log in UTC (10:40:01Z) reads as the team's 11:40:01 in a Warsaw browser,
    and in the browser's own zone elsewhere."""
    from test_legacy_pages import team_log

    path = tmp_path / "eksport.csv"
    path.write_bytes(team_log())
    context = browser.new_context(timezone_id=zone)
    try:
        page = context.new_page()
        log_in(page, live_server)
        page.click("header >> text=Oś czasu")
        page.click("text=Przeanalizuj dziennik wysyłek z innego systemu")
        page.set_input_files("input[type=file]", str(path))
        page.fill("input[name=name]", "Eksport ze starego systemu")
        page.click("button >> text=Analizuj")
        expect(page.locator(".finding")).to_contain_text(f"Od {start} co 5 minut")
        expect(page.locator(".finding")).to_contain_text(f"({zone}) to duplikaty")
        page.click("header >> text=Oś czasu")
        expect(page.locator("table.legacy-logs")).to_contain_text("Eksport ze starego systemu")
    finally:
        context.close()


def test_accounts_in_a_real_browser(page: Page, live_server, admin, app, browser, screenshot):
    """Users page: add a colleague, who logs in elsewhere; disabling them ends that session.
    Account page: a new password keeps this browser logged in."""
    base = live_server
    log_in(page, base)
    page.click("nav >> text=Użytkownicy")
    page.fill("input[name=email]", "ola@example.com")
    page.fill("input[name=password]", "krótkie")
    page.click("button >> text=Dodaj")
    expect(page.locator("small.error")).to_contain_text("co najmniej 12 znaków")
    page.fill("input[name=email]", "ola@example.com")
    page.fill("input[name=password]", "ola ma kota i psa")
    page.click("button >> text=Dodaj")
    expect(page.locator(".flash.ok")).to_contain_text("Dodano użytkownika ola@example.com")
    screenshot("20-users")

    ola = browser.new_context().new_page()
    ola.goto(f"{base}/login")
    ola.fill("input[name=email]", "ola@example.com")
    ola.fill("input[name=password]", "ola ma kota i psa")
    ola.click("button[type=submit] >> text=Zaloguj")
    expect(ola.locator("h1")).to_have_text("Kampanie")

    page.locator("tr", has_text="ola@example.com").locator("button", has_text="Wyłącz").click()
    expect(page.locator(".flash.ok")).to_contain_text("jest wyłączony")
    ola.goto(f"{base}/")
    expect(ola).to_have_url(re.compile(r"/login"))  # her session ended at once
    ola.context.close()

    page.click("header >> text=admin@example.com")
    expect(page.locator("h1")).to_have_text("Moje konto")
    page.fill("input[name=pw-current]", "correct horse")
    page.fill("input[name=pw-new]", "nowe długie hasło 2026")
    page.fill("input[name=pw-repeat]", "nowe długie hasło 2026")
    page.click("button >> text=Zmień hasło")
    expect(page.locator(".flash.ok")).to_contain_text("Hasło zmienione")
    screenshot("21-account")
    page.goto(f"{base}/")
    expect(page.locator("h1")).to_have_text("Kampanie")  # still logged in here


DUPLICATES_CSV = ("email;imię;nazwisko\n"
                  "anna@example.com;Anna;Nowak\n"
                  "\n"
                  "jan@example.com;Jan;Kowalski\n"
                  "ANNA@example.com ;Anna;Wiśniewska\n"
                  "zła-linia;X;Y\n")


def test_import_lists_in_file_duplicates_and_downloads_the_rejected_rows(page: Page, live_server, admin,
                                                                          engine, tmp_path, screenshot):
    log_in(page, live_server)
    page.goto(f"{live_server}/leads/import")
    csv_file = tmp_path / "leady.csv"
    csv_file.write_text(DUPLICATES_CSV, encoding="cp1250")
    page.set_input_files("input[type=file]", str(csv_file))
    page.click("text=Wczytaj plik")
    page.click("button >> text=Importuj")
    main = page.locator("main")
    expect(main).to_contain_text("Nowe leady: 2")
    expect(main).to_contain_text("Odrzucone: 2")
    expect(main).to_contain_text("Puste wiersze (pominięte): 3")
    row = page.locator("table tr", has_text="ten sam adres co w wierszu 2")
    expect(row.locator("td").first).to_have_text("5")
    expect(page.locator("table")).to_contain_text("nieprawidłowy e-mail 'zła-linia'")
    screenshot("11-import-duplicates")
    with page.expect_download() as download_info:
        page.click("#rejected-csv")
    data = download_info.value.path().read_bytes()
    assert data.startswith(b"\xef\xbb\xbf")  # Excel reads the Polish letters right only with the BOM
    lines = data.decode("utf-8-sig").splitlines()
    assert lines[0] == "line,reason" and lines[1] == "5,ten sam adres co w wierszu 2"
    with engine.connect() as conn:
        surname = conn.execute(select(Lead.last_name).where(Lead.email == "anna@example.com")).scalar()
    assert surname == "Nowak"  # the later row did not overwrite her


def _variant_body(engine, cid: int) -> str:
    with engine.connect() as conn:
        return conn.execute(select(Variant.body).where(Variant.campaign_id == cid,
                                                       Variant.letter == "A")).scalar_one()


def test_an_expired_session_keeps_the_draft_through_a_new_login(page: Page, live_server, admin, engine,
                                                                 screenshot):
    cid = make_campaign(engine, 1, start=False, variants="A")
    log_in(page, live_server)
    page.goto(f"{live_server}/campaigns/{cid}/variants/A")
    draft = "Dzień dobry {{ first_name }},\npisałem to przez godzinę."
    page.fill("textarea[name=body]", draft)
    page.context.clear_cookies()  # the session is gone, as after a server restart or a long lunch
    page.click("text=Zapisz wariant")
    expect(page.locator("h1")).to_have_text("Sesja wygasła")
    expect(page.locator(".flash.error")).to_contain_text("zaloguj się ponownie")
    expect(page.locator("textarea[name=body]")).to_have_value(draft)
    screenshot("12-session-expired")
    page.click("#login-again")
    page.fill("input[name=email]", "admin@example.com")
    page.fill("input[name=password]", "correct horse")
    page.click("button[type=submit] >> text=Zaloguj")
    expect(page.locator("#draft-restored")).to_be_visible()
    expect(page.locator("textarea[name=body]")).to_have_value(draft)
    page.click("text=Zapisz wariant")
    expect(page.locator(".flash.ok")).to_be_visible()
    assert _variant_body(engine, cid).replace("\r\n", "\n") == draft  # browsers post CRLF


def test_an_expired_csrf_token_keeps_the_draft_and_saves_it_again(page: Page, live_server, admin, engine):
    cid = make_campaign(engine, 1, start=False, variants="A")
    log_in(page, live_server)
    page.goto(f"{live_server}/campaigns/{cid}/variants/A")
    page.fill("textarea[name=body]", "Nowa treść")
    page.eval_on_selector("#variant-form [name=csrf_token]", "el => el.value = 'expired'")
    page.click("text=Zapisz wariant")
    expect(page.locator("h1")).to_have_text("Sesja wygasła")
    page.click("button >> text=Zapisz ponownie")
    expect(page.locator(".flash.ok")).to_be_visible()
    assert _variant_body(engine, cid) == "Nowa treść"


def _no_sideways_scroll(page: Page) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= page.viewport_size["width"], (page.url, width)


def shoot_every_page(page: Page, live_server: str, pages: dict[str, str], screenshot, prefix: str,
                     english_header: str) -> None:
    """Every page in Polish then English, at desktop and phone size: each has its title, a
    phone never scrolls sideways, and each is saved as `{prefix}-{language}-{size}-{name}`."""
    for language in ("pl", "en"):
        if language == "en":
            page.select_option("select[name=language]", "en")
            expect(page.locator("header")).to_contain_text(english_header)
        for size, (width, height) in (("desktop", (1366, 768)), ("phone", (390, 844))):
            page.set_viewport_size({"width": width, "height": height})
            for name, url in pages.items():
                page.goto(f"{live_server}{url}")
                expect(page.locator("h1")).to_be_visible()
                if size == "phone":
                    _no_sideways_scroll(page)
                screenshot(f"{prefix}-{language}-{size}-{name}")


def test_phone_layout_keeps_status_and_the_unknown_row_actions(page: Page, app, live_server, admin, engine,
                                                                smtp, screenshot):
    cid = make_campaign(engine, 2, batch_size=2, interval=3600)
    log_in(page, live_server)
    page.goto(f"{live_server}/campaigns/{cid}")
    page.click("#send-now")
    expect(page.locator("#send-request")).to_be_visible()
    serve_requests(app)
    expect(page.locator("#send-request")).to_contain_text("Zakończono: wysłano 2")
    make_unknown(engine)
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{live_server}/campaigns/{cid}/log")
    row = page.locator("tbody tr").first
    expect(row.locator(".status.unknown")).to_be_visible()
    expect(row.get_by_text("oznacz jako wysłaną")).to_be_visible()
    expect(row.get_by_text("wyślij ponownie")).to_be_visible()
    expect(row.locator("td[data-label='Status']")).to_be_visible()  # labelled: a card, not a bare cell
    _no_sideways_scroll(page)
    screenshot("13-phone-sendlog-unknown")
    page.goto(f"{live_server}/")
    campaign_row = page.locator("tr[data-campaign]").first
    expect(campaign_row.locator(".status")).to_be_visible()
    expect(campaign_row.locator("td.unknown")).to_be_visible()
    expect(campaign_row.locator("td.failed")).to_have_attribute("data-label", "Nieudane")
    _no_sideways_scroll(page)
    screenshot("14-phone-dashboard")
    page.goto(f"{live_server}/campaigns/{cid}/variants/A")
    _no_sideways_scroll(page)
    screenshot("15-phone-editor")


def test_table_cells_never_break_inside_a_word_on_a_desktop(page: Page, live_server, admin, engine):
    make_campaign(engine, 1)
    log_in(page, live_server)
    page.set_viewport_size({"width": 1366, "height": 768})
    wraps = page.evaluate("""() => Array.from(document.querySelectorAll('th, td'))
        .map(cell => getComputedStyle(cell).overflowWrap)""")
    assert wraps and "anywhere" not in wraps
    # Every header word fits on its line: a header is one line high unless it has several words.
    heights = page.evaluate("""() => Array.from(document.querySelectorAll('thead th')).map(th => {
        const r = document.createRange(); r.selectNodeContents(th);
        return [th.textContent.trim(), r.getClientRects().length]; })""")
    assert all(lines == 1 or " " in text for text, lines in heights), heights


def test_the_dashboard_and_the_campaign_page_refresh_their_texts_live(page: Page, browser, live_server,
                                                                      admin, app, engine, smtp):
    cid = make_campaign(engine, 4, batch_size=2, interval=0)
    log_in(page, live_server)
    campaign_page = page.context.new_page()
    campaign_page.goto(f"{live_server}/campaigns/{cid}")
    expect(page.locator(f"tr[data-campaign='{cid}'] .sent-count")).to_have_text("Wysłano 0 z 4")
    with app.app_context():
        transport = make_transport(app.config)
        send_batch(db.engine, Settings.from_config(app.config), transport, cid, Trigger.CLI)
        transport.close()
    # No reload: the 5-second refresh moves the words, not only the bar.
    row = page.locator(f"tr[data-campaign='{cid}']")
    expect(row.locator(".sent-count")).to_have_text("Wysłano 2 z 4", timeout=12_000)
    expect(row.locator(".last-sent")).to_contain_text("(Europe/Warsaw)")
    expect(campaign_page.locator("#campaign-live .sent-count")).to_have_text("Wysłano 2 z 4", timeout=12_000)
    expect(campaign_page.locator("#campaign-live .pending")).to_have_text("2")
    expect(campaign_page.locator("#campaign-live .last-sent")).to_contain_text("(Europe/Warsaw)")


def test_every_page_at_both_sizes_in_polish_and_english(page: Page, live_server, admin, app, engine, smtp,
                                                        screenshot):
    """Screenshots of every page for a person to look at; a phone never scrolls sideways."""
    cid = make_campaign(engine, 6, batch_size=3, interval=3600)
    with app.app_context():
        transport = make_transport(app.config)
        send_batch(db.engine, Settings.from_config(app.config), transport, cid, Trigger.CLI)
        transport.close()
    make_unknown(engine)
    token = make_token(app.config["SECRET_KEY"], "lead0005@example.com", cid)
    pages = {"dashboard": "/", "campaign": f"/campaigns/{cid}", "settings": f"/campaigns/{cid}/edit",
             "new-campaign": "/campaigns/new", "variant": f"/campaigns/{cid}/variants/A",
             "sendlog": f"/campaigns/{cid}/log", "resolve": "/sends/1/resolve?action=mark-sent",
             "leads": "/leads", "lead": "/leads/1", "lead-edit": "/leads/1/edit", "import": "/leads/import",
             "suppressions": "/suppressions", "timeline": "/timeline", "not-found": "/no-such-page"}
    log_in(page, live_server)
    shoot_every_page(page, live_server, pages, screenshot, "all", "Campaigns")
    recipient = page.context.browser.new_page(viewport={"width": 390, "height": 844}, locale="pl-PL")
    recipient.goto(f"{live_server}/u/{token}")
    expect(recipient.locator(".brand")).to_have_text("Team")
    recipient.screenshot(path=str(SCREENSHOTS / "all-pl-phone-unsubscribe.png"), full_page=True)
    recipient.close()


def test_a_sequence_in_a_real_browser(page: Page, live_server, admin, app, smtp, screenshot):
    with app.app_context():
        cid = make_campaign(db.engine, 2, variants="A")
    log_in(page, live_server)
    page.goto(f"{live_server}/campaigns/{cid}")
    page.click("#sequence-link")
    expect(page.locator("h1")).to_contain_text("Sekwencja")
    expect(page.locator("#step-1")).to_contain_text("od razu, po zapisaniu")
    form = page.locator("#add-step")
    form.locator("input[name=delay_amount]").fill("3")
    form.locator("select[name=delay_unit]").select_option("days")
    form.locator("input[name=business_days]").check()
    form.locator("input[name=subject]").fill("Przypomnienie")
    form.locator("textarea[name=body]").fill("Dzień dobry {{ first_name }}, przypominam się.")
    form.locator("button[type=submit]").click()
    expect(page.locator("#step-2")).to_contain_text("3 dni po poprzednim kroku")
    expect(page.locator("#step-2")).to_contain_text("tylko dni robocze")
    expect(page.locator("#step-2")).to_contain_text("odpowiedź w tym samym wątku")
    screenshot("sequence-two-steps")
    # A checkbox sits before its label, on the label's first line (not alone, centred, under it).
    box = form.locator("input[name=new_thread]").bounding_box()
    label = form.locator("label:has(input[name=new_thread])").bounding_box()
    assert abs(box["x"] - label["x"]) < 8 and box["y"] - label["y"] < 12, (box, label)
    # The forms side by side on a desktop-wide page, not one narrow column.
    assert page.locator("#step-variant").bounding_box()["x"] > form.bounding_box()["x"] + 100
    page.fill("input[name=lead]", "lead0000@example.com")
    page.click("#find-lead button")
    expect(page.locator("#lead-timeline")).to_contain_text("krok 1 czeka na wysłanie")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("text=Zatrzymaj sekwencję")
    expect(page.locator("#lead-timeline")).to_contain_text("zatrzymane ręcznie")
