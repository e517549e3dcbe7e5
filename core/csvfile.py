"""CSV cells that are safe to open in a spreadsheet."""

from __future__ import annotations

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralized(cell: object) -> str:
    """A cell that a spreadsheet will not run as a formula (CSV injection): prefix a quote."""
    text = "" if cell is None else str(cell)
    return "'" + text if text.startswith(_FORMULA_START) else text
