"""Findings of the outside security review (issue #13): each test failed before its fix."""

from __future__ import annotations

from sqlalchemy import func, select

from core import campaigns, importer
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
