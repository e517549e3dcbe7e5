"""Which schema revision this code runs on, and the table where a database records its own.

The revisions are migrations/versions (Alembic, via Flask-Migrate); this module only
names them, so code below the CLI can check a database without importing Alembic.
tests/test_migrations.py checks REVISIONS against Alembic's own reading of migrations/.
"""

from __future__ import annotations

from sqlalchemy import Column, MetaData, PrimaryKeyConstraint, String, Table, inspect
from sqlalchemy.engine import Connection

# Oldest first; 0001 is the schema of commit 3a618c4.
REVISIONS = ("0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008", "0009", "0010")
BASELINE = REVISIONS[0]  # what a database made before migrations existed is stamped with
HEAD = REVISIONS[-1]  # the revision this code needs

# Alembic's bookkeeping table, exactly as `alembic stamp` creates it.
version_table = Table("alembic_version", MetaData(),
                      Column("version_num", String(32), nullable=False),
                      PrimaryKeyConstraint("version_num", name="alembic_version_pkc"))


def current_revision(conn: Connection) -> str | None:
    """The database's schema revision; None when it has no alembic_version table (or row)."""
    if not inspect(conn).has_table(version_table.name):
        return None
    return conn.execute(version_table.select()).scalar()


def stamp(conn: Connection, revision: str = HEAD) -> None:
    """Record `revision` as the database's, like `alembic stamp` (in the caller's transaction)."""
    version_table.create(conn, checkfirst=True)
    conn.execute(version_table.delete())
    conn.execute(version_table.insert().values(version_num=revision))
