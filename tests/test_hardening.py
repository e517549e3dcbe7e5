"""Findings of the outside security review (issue #13): each test failed before its fix."""

from __future__ import annotations

from sqlalchemy import func, select

from delivery.tokens import make_token
from models import Suppression


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
