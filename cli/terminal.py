"""Untrusted text on a terminal: control characters shown, never obeyed.

Lead fields, legacy logs and SMTP replies come from outside. Printed raw, an escape
sequence in them can erase lines, move the cursor or print a fake "0 duplicates"; a
line break can start a line that looks like ours. Every command prints through `echo`,
and values from outside go through `visible` before they are put into a line.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, TypeVar

import click

T = TypeVar("T", bound=Any)

# C1 controls, DEL, Unicode line/paragraph separators and the bidirectional controls
# (which reorder what follows them on screen); C0 is added below.
_OTHERS = "\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069"
_ANY_CONTROL = re.compile(f"[\x00-\x1f{_OTHERS}]")
_BUT_LINE_BREAK_AND_TAB = re.compile(f"[\x00-\x08\x0b-\x1f{_OTHERS}]")
_NOT_C0 = re.compile(f"[{_OTHERS}]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def visible(text: object) -> str:
    """The text with every control character, line breaks too, written as an escape (\\x1b, \\n)."""
    return _ANY_CONTROL.sub(_escape, str(text))


def visible_lines(text: object) -> str:
    """The text with its line breaks and tabs kept and every other control character escaped."""
    return _BUT_LINE_BREAK_AND_TAB.sub(_escape, str(text))


def visible_json(text: str) -> str:
    """JSON text whose strings hold no raw control character (json.dumps escapes C0 itself)."""
    return _NOT_C0.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def echo(text: object = "", err: bool = False) -> None:
    """click.echo with control characters made visible (its own line breaks and tabs kept)."""
    click.echo(visible_lines(text), err=err)


def visible_fields(record: T) -> T:
    """A dataclass record (e.g. a legacy log's event) with each text field made `visible`."""
    changes = {f.name: visible(value) for f in dataclasses.fields(record)
               if isinstance(value := getattr(record, f.name), str) and _ANY_CONTROL.search(value)}
    return dataclasses.replace(record, **changes) if changes else record
