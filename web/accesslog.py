"""Access logs without personal data: unsubscribe tokens and query strings are left out.

An unsubscribe token carries its recipient's address (readable, only signed), and query
strings carry search terms (names, addresses, companies). Both the development server
(werkzeug) and gunicorn log every request line; a filter on their loggers blanks those
parts before any handler writes them.
"""

from __future__ import annotations

import logging
import re

ACCESS_LOGGERS = ("werkzeug", "gunicorn.access")
_TOKEN = re.compile(r"(/u/)[^\s?\"/]+")
_QUERY = re.compile(r"\?[^\s\"]*")


def redacted(text: str) -> str:
    """A request line, path or URL with the unsubscribe token and the query string blanked."""
    return _QUERY.sub("?…", _TOKEN.sub(r"\1…", text))


class RedactRequests(logging.Filter):
    """Rewrites a request log record's arguments (werkzeug: a tuple; gunicorn: a dict of atoms)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, dict):
            # In place: gunicorn's dict (SafeAtoms) answers "-" for a header the request lacks.
            for key, value in list(record.args.items()):
                if isinstance(value, str):
                    record.args[key] = redacted(value)
        elif isinstance(record.args, tuple):
            record.args = tuple(redacted(value) if isinstance(value, str) else value for value in record.args)
        if isinstance(record.msg, str):
            record.msg = redacted(record.msg)
        return True


def install() -> None:
    """Attach the filter to the access loggers (once, however many apps are created)."""
    for name in ACCESS_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactRequests) for f in logger.filters):
            logger.addFilter(RedactRequests())
