"""Copying every row of one database into another (SQLite -> PostgreSQL, `flask copy-to`).

Rows go through SQLAlchemy Core in batches, table by table in foreign-key order, each
value converted by its column type (SQLite's datetime text becomes a timestamp, 0/1 a
boolean). JSON columns are carried as their text, cast on the way in, so a SQL NULL stays
NULL and a JSON `null` stays `null` (the JSON type would turn both into one of them).
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import JSON, Table, Text, bindparam, cast, func, insert, select, type_coerce
from sqlalchemy.engine import Connection

from storage.database import is_postgres, run_sql

BATCH = 5_000  # rows per executemany: a few MB in memory, whatever the table's size


def copy_table(source: Connection, target: Connection, table: Table, batch: int = BATCH) -> int:
    """Every row of `table` from source into target (inside the callers' transactions); how many."""
    json_columns = {c.name for c in table.columns if isinstance(c.type, JSON)}
    columns = [type_coerce(c, Text).label(c.name) if c.name in json_columns else c for c in table.columns]
    # Bind names other than the columns' own (insert().values() reserves those).
    values = {c.name: cast(bindparam(f"v_{c.name}", type_=Text), c.type) if c.name in json_columns
              else bindparam(f"v_{c.name}", type_=c.type) for c in table.columns}
    statement = insert(table).values(values)
    primary = list(table.primary_key.columns) or list(table.columns)
    result = source.execution_options(yield_per=batch).execute(select(*columns).order_by(*primary))
    copied = 0
    for rows in result.mappings().partitions(batch):
        target.execute(statement, [{f"v_{name}": value for name, value in row.items()} for row in rows])
        copied += len(rows)
    return copied


def count_rows(conn: Connection, table: Table) -> int:
    """The number of rows in `table`."""
    return conn.execute(select(func.count()).select_from(table)).scalar_one()


def advance_sequences(conn: Connection, tables: Iterable[Table]) -> dict[str, int]:
    """PostgreSQL: move each table's id sequence past the highest id copied in (rows written
    with their own ids leave it at 1), so next_id and every INSERT take new ids. Returns
    table -> the value set. SQLite: nothing to do (ids are max + 1)."""
    if not is_postgres(conn):
        return {}
    done = {}
    for table in tables:
        column = table.autoincrement_column
        if column is None:
            continue
        top = conn.execute(select(func.max(column))).scalar()
        sequence = run_sql(conn, "SELECT pg_get_serial_sequence(?, ?)",
                           (table.name, column.name)).fetchone()[0]
        if sequence is None:
            continue
        # is_called = false for an empty table: its first id is then 1, as on SQLite.
        run_sql(conn, "SELECT setval(?, ?, ?)", (sequence, top or 1, top is not None))
        done[table.name] = top or 0
    return done
