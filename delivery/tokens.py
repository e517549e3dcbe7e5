"""Signed unsubscribe tokens and links: bound to one address and one campaign.

The token is the only authority of the unsubscribe page (mail clients POST it without a
session or a CSRF token, RFC 8058), so it is signed with SECRET_KEY; a tampered token
changes nothing. The engine signs a link into every message; the page (web/unsubscribe.py)
reads it back.
"""

from __future__ import annotations

from functools import lru_cache

from itsdangerous import BadSignature, URLSafeSerializer


@lru_cache(maxsize=8)
def _serializer(secret_key: str) -> URLSafeSerializer:
    # One per key, reused: every message signs a link (the engine's hot path).
    return URLSafeSerializer(secret_key, salt="sendonce-unsubscribe")


def make_token(secret_key: str, email: str, campaign_id: int) -> str:
    """A token that names one address and one campaign, signed with the app secret."""
    return _serializer(secret_key).dumps([email, campaign_id])


def read_token(secret_key: str, token: str) -> tuple[str, int] | None:
    """The (email, campaign_id) a token was made for, or None if it is not ours."""
    try:
        email, campaign_id = _serializer(secret_key).loads(token)
    except (BadSignature, ValueError, TypeError):
        return None
    return str(email), int(campaign_id)


def unsubscribe_url(base_url: str, secret_key: str, email: str, campaign_id: int) -> str:
    """The public link put into every message and its List-Unsubscribe header."""
    return f"{base_url.rstrip('/')}/u/{make_token(secret_key, email, campaign_id)}"
