"""What several pages share: bounded numbers from URLs, and which query keys a link may carry."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from flask import request
from werkzeug.routing import IntegerConverter

SQL_INT_MAX = 2**63 - 1  # SQLite's INTEGER (and PostgreSQL's BIGINT): larger ids overflow the driver
MAX_PAGE = 10**9  # far past any real page; (page - 1) * page size stays a valid OFFSET
MAX_TOKEN = 64  # upload tokens are 24 hex digits; a longer one names no file (and may be too long to open)


class BoundedIntConverter(IntegerConverter):
    """`<int:…>` in a route, but a number no table can hold is a 404, not an overflow (500)."""

    def __init__(self, map, *args, **kwargs) -> None:  # noqa: A002 - werkzeug's name
        kwargs.setdefault("max", SQL_INT_MAX)
        super().__init__(map, *args, **kwargs)


def page_arg() -> int:
    """The `page` query argument, clamped to 1..MAX_PAGE (absent or unreadable: 1)."""
    return min(max(request.args.get("page", 1, type=int), 1), MAX_PAGE)


def id_arg(name: str, source: Mapping[str, str] | None = None) -> int | None:
    """A row id from the query string (or `source`), or None if absent or no table could hold it."""
    value = (request.args if source is None else source).get(name, type=int)
    return value if value is not None and 0 < value <= SQL_INT_MAX else None


def link_args(names: Iterable[str]) -> dict[str, str]:
    """The non-empty query arguments a page's own links carry on, and no others.

    Passing every key through would let `?_method=…` or `?campaign_id=…` collide with
    url_for's own parameters (a 500); only the page's filter fields are kept.
    """
    return {name: request.args[name] for name in names if request.args.get(name)}


def megabytes(size: int | float) -> str:
    """A byte count as the pages show a limit: MB with at most one decimal."""
    return f"{size / (1024 * 1024):.1f}".removesuffix(".0")


def uploads_folder(instance_path: str) -> Path:
    """instance/uploads, readable by the service account only (uploads hold personal data)."""
    folder = Path(instance_path) / "uploads"
    folder.mkdir(mode=0o700, exist_ok=True)
    folder.chmod(0o700)  # also one made by an older version (0755)
    return folder


def write_private(path: Path, data: bytes) -> None:
    """Write a file that only its owner can read (0600), whatever the process's umask."""
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(data)
