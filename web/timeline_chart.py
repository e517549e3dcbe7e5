"""The timeline chart's SVG bars, built in Python for _timeline_body.html.

The template used to do this arithmetic per bar; for a chart of ~200 bars Jinja took
longer than all of the page's queries over the summary. The markup is what the
template produced: one stacked bar per bucket, a segment per trigger (sorted as
Jinja's dictsort sorts, case-insensitively), and the duplicates in red over it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from markupsafe import Markup, escape

from timeline.analysis import Bucket

WIDTH, HEIGHT = 1000, 160
COLORS = {"scheduler": "#2f6fde", "cli": "#7b4bd6", "button": "#2e9d5a"}
UNKNOWN_COLOR, DUPLICATE_COLOR = "#9aa5b1", "#c62828"

_DUP = ' class="dup"'


def _rect(cls: str, x: str, y: float, width: str, h: float, fill: str, title: str) -> str:
    # An f-string: a few µs per bar less than str.format, on a chart of hundreds of bars.
    return (f'<rect{cls} x="{x}" y="{y:.2f}" width="{width}" height="{h:.2f}" fill="{fill}">'
            f"<title>{title}</title></rect>")


def _by_trigger(bucket: Bucket) -> list[tuple[str, int]]:
    return sorted(bucket.by_trigger.items(), key=lambda item: item[0].lower())


def bars(buckets: Sequence[Bucket], when: Callable[[datetime], str],
         duplicates: str | Callable[[int], str]) -> Markup:
    """The <rect>s of the chart; `when` writes a bucket's start, `duplicates` the count of them
    ("3 duplicates"), or is the word for them."""
    peak = max((b.sends for b in buckets), default=0)
    if not peak:
        return Markup("")
    step = WIDTH / len(buckets)
    width = f"{max(step - 1, 1):.2f}"
    counted = duplicates if callable(duplicates) else lambda n: f"{n} {duplicates}"
    rects = []
    for i, bucket in enumerate(buckets):
        x, y, start = f"{i * step:.2f}", float(HEIGHT), escape(when(bucket.start))
        for trigger, n in _by_trigger(bucket):
            if n:
                h = n / peak * HEIGHT
                y -= h
                rects.append(_rect("", x, y, width, h, COLORS.get(trigger, UNKNOWN_COLOR),
                                   f"{start}: {n} {escape(trigger or '?')}"))
        if bucket.duplicates:
            h = bucket.duplicates / peak * HEIGHT
            rects.append(_rect(_DUP, x, HEIGHT - h, width, h, DUPLICATE_COLOR,
                               f"{start}: {escape(counted(bucket.duplicates))}"))
    return Markup("".join(rects))
