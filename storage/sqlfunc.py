"""SQL functions that SQLite and PostgreSQL spell differently: one Core construct each (#19).

Each is a FunctionElement compiled per dialect, so the code that uses it (the timeline,
the importer) builds one query and reads the same on both:
- time_label(column, strftime_format): a datetime's text label, e.g. 'YYYY-MM-DD HH:MM' --
  SQLite's strftime, PostgreSQL's to_char with the equivalent pattern; the same text on both.
- text_agg(expr, separator): the values of a group joined into one text --
  group_concat / string_agg (of the value as text). Neither promises an order.
- json_texts(json_text): the strings of a JSON array as rows of one column `value` --
  json_each / json_array_elements_text; used as `json_texts(...).table_valued("value")`.
- middle_values(expr): the middle one or two values of a group, in order (a median's) --
  PostgreSQL's ordered array_agg; SQLite has none (the timeline sorts in Python there).
"""

from __future__ import annotations

import re

from sqlalchemy import ARRAY, String, Text
from sqlalchemy.exc import CompileError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.visitors import InternalTraversal

# strftime directive -> to_char pattern, for the directives the labels use.
_TO_CHAR = {"%Y": "YYYY", "%m": "MM", "%d": "DD", "%H": "HH24", "%M": "MI", "%S": "SS", "%%": "%"}
_DIRECTIVE = re.compile(r"%.")


def to_char_pattern(strftime_format: str) -> str:
    """The to_char pattern that renders what `strftime_format` does (literal digits stay literal)."""
    def swap(match: re.Match) -> str:
        if match.group(0) not in _TO_CHAR:
            raise ValueError(f"no to_char equivalent for {match.group(0)!r}")
        return _TO_CHAR[match.group(0)]
    if re.search(r"[A-Za-z]", _DIRECTIVE.sub("", strftime_format)):
        raise ValueError(f"letters outside directives would be to_char patterns: {strftime_format!r}")
    return _DIRECTIVE.sub(swap, strftime_format)


class time_label(FunctionElement):  # noqa: N801 -- used like func.<name>
    """time_label(column, "%Y-%m-%d %H:%M"): the column's naive UTC time as that text."""

    type = String()
    inherit_cache = True  # the format is part of the cache key (below), so it is safe
    _traverse_internals = [*FunctionElement._traverse_internals,
                           ("strftime_format", InternalTraversal.dp_string)]

    def __init__(self, column, strftime_format: str) -> None:
        self.strftime_format = strftime_format
        super().__init__(column)


@compiles(time_label)
def _time_label_sqlite(element, compiler, **kw):
    fmt = element.strftime_format.replace("'", "''")
    return f"strftime('{fmt}', {compiler.process(element.clauses, **kw)})"


@compiles(time_label, "postgresql")
def _time_label_pg(element, compiler, **kw):
    pattern = to_char_pattern(element.strftime_format).replace("'", "''").replace("%", "%%")
    return f"to_char({compiler.process(element.clauses, **kw)}, '{pattern}')"


class text_agg(FunctionElement):  # noqa: N801
    """text_agg(expr, separator): a group's values as text joined by separator (in no set order)."""

    type = Text()
    inherit_cache = True
    _traverse_internals = [*FunctionElement._traverse_internals, ("separator", InternalTraversal.dp_string)]

    def __init__(self, expr, separator: str) -> None:
        self.separator = separator
        super().__init__(expr)


def _quoted(separator: str, compiler) -> str:
    literal = "'" + separator.replace("'", "''") + "'"
    return literal.replace("%", "%%") if compiler.dialect.name == "postgresql" else literal


@compiles(text_agg)
def _text_agg_sqlite(element, compiler, **kw):
    return f"group_concat({compiler.process(element.clauses, **kw)}, {_quoted(element.separator, compiler)})"


@compiles(text_agg, "postgresql")
def _text_agg_pg(element, compiler, **kw):
    return (f"string_agg(CAST({compiler.process(element.clauses, **kw)} AS TEXT), "
            f"{_quoted(element.separator, compiler)})")


class json_texts(FunctionElement):  # noqa: N801
    """json_texts(json_array_text): a table of the array's strings, column `value`."""

    type = Text()
    inherit_cache = True


@compiles(json_texts)
def _json_texts_sqlite(element, compiler, **kw):
    return f"json_each({compiler.process(element.clauses, **kw)})"


@compiles(json_texts, "postgresql")
def _json_texts_pg(element, compiler, **kw):
    return f"json_array_elements_text(CAST({compiler.process(element.clauses, **kw)} AS json))"


class unindexed(FunctionElement):  # noqa: N801
    """unindexed(text_column): the column's value, written so that SQLite's planner cannot
    serve a test on it from an index (`column || ''`).

    SQLite without ANALYZE statistics (a database init-db made and the engine grew has
    none) otherwise picks a status index for `status IN (...)` and then sorts every send.
    PostgreSQL keeps statistics itself (autovacuum) and, given the expression, misjudges
    how many rows match and scans them all: there it is the plain column.
    """

    type = String()
    inherit_cache = True


@compiles(unindexed)
def _unindexed_sqlite(element, compiler, **kw):
    return f"({compiler.process(element.clauses, **kw)} || '')"


@compiles(unindexed, "postgresql")
def _unindexed_pg(element, compiler, **kw):
    return compiler.process(element.clauses, **kw)


class middle_values(FunctionElement):  # noqa: N801
    """middle_values(expr): an aggregate, the middle one (an odd count) or two (an even count)
    of the group's non-null values in their order, as an array; NULL when there are none.
    What a median needs, without sending the group to Python.

    PostgreSQL only: SQLite (before 3.44) has no ordered aggregate to spell it with, and its
    window functions over text times cost more than sorting in Python (timeline.live).
    """

    inherit_cache = True

    def __init__(self, expr) -> None:
        super().__init__(expr)
        self.type = ARRAY(self.clauses.clauses[0].type)


@compiles(middle_values)
def _middle_values_sqlite(element, compiler, **kw):
    raise CompileError("middle_values is PostgreSQL only (SQLite has no ordered aggregate)")


@compiles(middle_values, "postgresql")
def _middle_values_pg(element, compiler, **kw):
    value = compiler.process(element.clauses, **kw)
    # Array subscripts count from 1: the (n + 1) // 2-th through the n // 2 + 1-th value.
    return (f"(array_agg({value} ORDER BY {value}) FILTER (WHERE {value} IS NOT NULL))"
            f"[(count({value}) + 1) / 2 : count({value}) / 2 + 1]")
