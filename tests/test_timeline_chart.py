"""The chart's bars and the zone selects, built in Python, give the markup the template gave."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from timeline.analysis import Bucket
from web import timeline as timeline_pages
from web import timeline_chart

# The loop _timeline_body.html used to run for every bar, kept here as the reference.
JINJA_BARS = """{% set peak = buckets|map(attribute='sends')|max if buckets else 0 %}
{% set width = 1000 %}{% set height = 160 %}
{% set bar = (width / (buckets|length or 1)) %}
    {% for b in buckets %}{% set x = loop.index0 * bar %}{% set y0 = namespace(v=height) %}
      {% for trigger, n in b.by_trigger|dictsort %}{% set color = {'scheduler': '#2f6fde', 'cli': '#7b4bd6', 'button': '#2e9d5a'}.get(trigger, '#9aa5b1') %}
        {% if n %}{% set h = n / peak * height %}
        <rect x="{{ '%.2f'|format(x) }}" y="{{ '%.2f'|format(y0.v - h) }}" width="{{ '%.2f'|format([bar - 1, 1]|max) }}" height="{{ '%.2f'|format(h) }}" fill="{{ color }}"><title>{{ b.start|local(tz) }}: {{ n }} {{ trigger or '?' }}</title></rect>
        {% set y0.v = y0.v - h %}{% endif %}
      {% endfor %}
      {% if b.duplicates %}{% set h = b.duplicates / peak * height %}
        <rect class="dup" x="{{ '%.2f'|format(x) }}" y="{{ '%.2f'|format(height - h) }}" width="{{ '%.2f'|format([bar - 1, 1]|max) }}" height="{{ '%.2f'|format(h) }}" fill="#c62828"><title>{{ b.start|local(tz) }}: {{ ngettext('%(num)d duplicate', '%(num)d duplicates', b.duplicates) }}</title></rect>
      {% endif %}
    {% endfor %}"""  # noqa: E501

RECT = re.compile(r"<rect.*?</rect>", re.S)
triggers = st.sampled_from(["scheduler", "button", "cli", "", "Cron<&>", "api"])


@st.composite
def bucket_lists(draw) -> list[Bucket]:
    start = datetime(2026, 3, 1) + timedelta(minutes=draw(st.integers(0, 10_000)))
    result = []
    for i in range(draw(st.integers(0, 40))):
        by_trigger = draw(st.dictionaries(triggers, st.integers(0, 500), max_size=4))
        sends = sum(by_trigger.values())
        result.append(Bucket(start + timedelta(hours=i), sends, draw(st.integers(0, sends)), by_trigger))
    return result


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(buckets=bucket_lists(), tz=st.sampled_from(["UTC", "Europe/Warsaw", "America/New_York"]))
def test_python_bars_equal_the_template_bars(app, buckets, tz):
    with app.test_request_context():
        expected = RECT.findall(app.jinja_env.from_string(JINJA_BARS).render(buckets=buckets, tz=tz))
        made = timeline_pages.chart_bars(buckets, tz, "duplikaty")
    assert RECT.findall(str(made)) == expected


def test_no_bars_without_sends():
    assert timeline_chart.bars([], str, "d") == ""
    assert timeline_chart.bars([Bucket(datetime(2026, 1, 1), 0, 0, {})], str, "d") == ""


def test_zone_options_mark_exactly_the_chosen_zone():
    html = str(timeline_pages.zone_options("Europe/Warsaw"))
    assert html.count("<option ") == len(timeline_pages.ZONES)
    assert re.findall(r'<option value="([^"]+)" selected>', html) == ["Europe/Warsaw"]
    assert '<option value="UTC">UTC</option>' in html


def test_local_time_converts_only_when_asked():
    at = datetime(2026, 7, 1, 10, 0, 0, 123)
    assert timeline_pages.local_time(at, "UTC") == "2026-07-01 10:00:00"
    assert timeline_pages.local_time(at, "Europe/Warsaw") == "2026-07-01 12:00:00"
    assert timeline_pages.local_time(None) == "—"


@settings(max_examples=300, deadline=None)
@given(at=st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
       zone=st.sampled_from(["UTC", "Europe/Warsaw", "America/New_York", "Australia/Lord_Howe",
                             "Asia/Kolkata", "Pacific/Chatham", "America/St_Johns"]))
def test_local_time_is_what_astimezone_and_strftime_give(at, zone):
    # local_time takes a cheaper way (fromutc, isoformat): the same text, DST changes included.
    shown = at if zone == "UTC" else at.replace(tzinfo=UTC).astimezone(ZoneInfo(zone))
    assert timeline_pages.local_time(at, zone) == shown.strftime("%Y-%m-%d %H:%M:%S")


def test_the_upload_form_keeps_its_fields(client, login):  # noqa: F811
    login()
    html = client.get("/timeline?tz=Asia/Tokyo").get_data(as_text=True)
    form = html[html.index('enctype="multipart/form-data"'):]
    assert re.search(r'<input id="csrf_token" name="csrf_token" type="hidden" value="[^"]+">', form)
    assert 'name="file" required type="file"' in form
    assert '<select id="tz" name="tz" data-browser-zone>' in form
    assert '<option value="Asia/Tokyo" selected>' in form


from test_web import login  # noqa: E402, F401 - the login fixture
