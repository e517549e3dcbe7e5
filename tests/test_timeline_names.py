"""The timeline pages name campaigns (escaped) where a person reads them; ids stay in URLs
and the CSV export (#14 item 19)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from helpers import log_in, make_campaign
from test_security import send_now
from timeline.analysis import SendEvent, analyse
from timeline.words import finding
from web.timeline import named

EVIL = "Jesień <b>2026</b>"


def event_cells(html: str) -> list[str]:
    """The Campaign cell of every row of the events table."""
    table = html[html.index('<table class="events">'):]
    table = table[:table.index("</table>")]
    return re.findall(r"<tr><td>[^<]*</td><td>(.*?)</td>", table)


def test_timeline_pages_show_campaign_names_not_ids(app, client, engine, smtp):
    first = make_campaign(engine, 2, batch_size=2, name=EVIL)
    second = make_campaign(engine, 1, name="Zima")
    send_now(app, first)
    send_now(app, second)
    log_in(app, client)
    escaped = "Jesień &lt;b&gt;2026&lt;/b&gt;"
    for url in ("/timeline?tz=UTC", "/timeline?tz=UTC&fragment=1"):
        cells = event_cells(client.get(url).get_data(as_text=True))
        assert cells == [f'<a href="/campaigns/{second}">Zima</a>',
                         *[f'<a href="/campaigns/{first}">{escaped}</a>'] * 2], url
    page = client.get(f"/campaigns/{first}/timeline?tz=UTC").get_data(as_text=True)
    assert "<b>2026</b>" not in page
    assert event_cells(page) == [f'<a href="/campaigns/{first}">{escaped}</a>'] * 2
    # The export keeps the id: scripts join on it.
    export = client.get("/timeline/export.csv").get_data().decode("utf-8-sig").splitlines()
    assert sorted(line.split(",")[1] for line in export[1:]) == [str(first), str(first), str(second)]


def test_a_live_duplicate_is_described_with_the_campaigns_name():
    # SendOnce's own send_log cannot hold a duplicate (unique index), but if one ever shows,
    # the groups and the finding must name the campaign as the rest of the page does.
    at = datetime(2026, 11, 30, 9, 0)
    events = [SendEvent(at, "7", "l1", "A"), SendEvent(at + timedelta(seconds=1), "7", "l1", "A"),
              SendEvent(at + timedelta(hours=5), "8", "l2", "A"),
              SendEvent(at + timedelta(hours=5, seconds=2), "8", "l2", "A")]
    shown = named(analyse(events), {"7": "Wiosna", "8": "Lato"})
    assert [g.campaign for g in shown.duplicate_groups] == ["Wiosna", "Lato"]
    assert [(b.campaign, b.groups[0].campaign) for b in shown.bursts] == [
        ("Wiosna", "Wiosna"), ("Lato", "Lato")]
    text = finding(shown, "pl", "UTC")
    assert "kampania Wiosna, od 09:00:00" in text and "kampania Lato" in text and "kampania 7" not in text
    assert named(analyse(events), {"8": "Lato"}).duplicate_groups[0].campaign == "7"  # deleted: its id
