"""Findings of the outside security review (issue #13): each test failed before its fix."""

from __future__ import annotations

import csv
import io
import re

from sqlalchemy import func, select

from core import campaigns, importer
from core.csvfile import neutralized
from delivery.tokens import make_token
from models import CampaignLead, Lead, Suppression


def suppressions(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(Suppression)).scalar()


# --- 1. only POST unsubscribes ----------------------------------------------------------------


def test_head_and_options_on_an_unsubscribe_link_change_nothing(app, client, engine):
    token = make_token(app.config["SECRET_KEY"], "lead@example.com", 1)
    for method in ("HEAD", "OPTIONS", "GET"):
        response = client.open(f"/u/{token}", method=method)
        assert response.status_code == 200, method
        assert suppressions(engine) == 0, method  # a link scanner's HEAD must not unsubscribe
    for method in ("PUT", "DELETE", "PATCH"):
        assert client.open(f"/u/{token}", method=method).status_code == 405, method
    assert suppressions(engine) == 0
    assert client.post(f"/u/{token}").status_code == 200
    assert suppressions(engine) == 1


# --- 4. enroll by tag matches whole tags, literally ---------------------------------------------

TAGGED = {"pct@example.com": "100%", "under@example.com": "q1_webinar", "dash@example.com": "q1-webinar",
          "two@example.com": "vip,q1-webinar", "none@example.com": ""}


def enrolled_by_tag(engine, tag: str) -> set[str]:
    cid = campaigns.create(engine, name=f"tag {tag}", from_address="team@sendonce.test")
    campaigns.add_variant(engine, cid, "A", "s", "b")
    try:
        campaigns.enroll_leads(engine, cid, tag)
    except campaigns.CampaignError:
        pass
    with engine.connect() as conn:
        return set(conn.execute(select(Lead.email).join(CampaignLead, CampaignLead.lead_id == Lead.id)
                                .where(CampaignLead.campaign_id == cid)).scalars())


def test_enroll_by_tag_matches_whole_tags_and_no_wildcards(app, engine):
    rows = "email,tags\n" + "".join(f'{email},"{tags}"\n' for email, tags in TAGGED.items())
    assert importer.import_leads(engine, rows.encode()).imported == len(TAGGED)
    assert enrolled_by_tag(engine, "%") == set()
    assert enrolled_by_tag(engine, "_") == set()
    assert enrolled_by_tag(engine, "q1_webinar") == {"under@example.com"}
    assert enrolled_by_tag(engine, "q1-webinar") == {"dash@example.com", "two@example.com"}
    assert enrolled_by_tag(engine, "100%") == {"pct@example.com"}
    assert enrolled_by_tag(engine, "vip,q1-webinar") == set()  # one tag, not a list of them
    assert enrolled_by_tag(engine, " vip ") == {"two@example.com"}


# --- 2. formula injection: every cell start, for every list separator ---------------------------

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
HOSTILE_ADDRESSES = ["x;=1+1;", "x,=1+1", "a\t=cmd|' /C calc'!A0", "ok;+1;-2;@SUM(1)", "=HYPERLINK(1)",
                     "a;;=1", "a;\t=1"]


def cells_as_spreadsheets_split_them(text: str) -> list[str]:
    """Every cell of a CSV text, read with each list separator Excel may use (Polish: ";")."""
    return [cell for delimiter in (",", ";", "\t")
            for row in csv.reader(io.StringIO(text), delimiter=delimiter) for cell in row]


def test_neutralized_quotes_every_cell_start_after_a_separator():
    for text in HOSTILE_ADDRESSES + ["-1", "plain", "a, b; c"]:
        safe = neutralized(text)
        assert safe.replace("'", "") == text.replace("'", "")  # only quotes were added
        for piece in re.split(r"[,;\t\r\n]", safe)[1:] + [safe]:
            assert not piece.startswith(FORMULA_START), (text, safe)
    assert neutralized("a, b; c") == "a, b; c" and neutralized("plain") == "plain"


def test_rejected_rows_csv_has_no_formula_for_any_separator(app, engine):
    out = io.StringIO()
    csv.writer(out).writerows([["email", "first_name"]] + [[raw, "x"] for raw in HOSTILE_ADDRESSES])
    report = importer.import_leads(engine, out.getvalue().encode())
    assert len(report.rejected) == len(HOSTILE_ADDRESSES)
    for (_, reason), raw in zip(report.rejected, HOSTILE_ADDRESSES, strict=True):
        assert neutralized(reason) == reason  # no raw formula start was copied into the reason
        assert repr(neutralized(raw)) in reason  # but the reason still names it
    written = importer.rejected_csv(report)
    cells = cells_as_spreadsheets_split_them(written)
    assert len(cells) > 3 * len(HOSTILE_ADDRESSES)
    assert [c for c in cells if c.lstrip('"').startswith(FORMULA_START)] == []
