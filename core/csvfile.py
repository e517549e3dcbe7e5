"""CSV cells that are safe to open in a spreadsheet."""

from __future__ import annotations

import re

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# A spreadsheet starts a cell at the field's start and, when it splits the line with
# another list separator than ours (Excel in Polish uses ";"), after any ",", ";", tab
# or line break inside it: each such spot followed by a formula character gets a quote.
_CELL_STARTS = re.compile(r"(^|[,;\t\r\n])(?=[=+\-@\t\r])")


def neutralized(cell: object) -> str:
    """A cell that a spreadsheet will not run as a formula (CSV injection): quote every cell start."""
    text = "" if cell is None else str(cell)
    return _CELL_STARTS.sub(r"\1'", text)


def quoted(raw: str) -> str:
    """Untrusted text for a message (e.g. a rejection reason): neutralized, then repr-quoted."""
    return repr(neutralized(raw))
