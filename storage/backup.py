"""Online backup, verification and restore of the SQLite file (SQLite's backup API).

Why the backup API and not a file copy: it reads a consistent snapshot while senders keep
writing (WAL content included, the copy is one self-contained file), and when restoring it
writes *into* the live file, page by page under SQLite's own locks, so every process that
keeps the file open sees the restored content and its later writes land in it (a renamed
or replaced file would leave them writing into a deleted inode: lost). Everything here
is SQLite-specific by nature, which is why it lives in storage/.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import inspect

from storage import schema
from storage.database import BUSY_TIMEOUT_MS
from storage.revision import current_revision


class BackupError(RuntimeError):
    """A backup (or the file given to restore) is not a sound SendOnce database."""


@dataclass
class Verified:
    """What verify() found: row counts per table, the schema revision, meta facts."""

    counts: dict[str, int] = field(default_factory=dict)
    revision: str | None = None
    meta: dict[str, str] = field(default_factory=dict)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS:d}")
    return conn


def copy_database(source: Path, target: Path) -> None:
    """Copy `source` into `target` with the backup API: one consistent snapshot, taken in one
    step under a read lock (writers go on meanwhile in WAL mode), WAL content included."""
    if not source.is_file():
        raise BackupError(f"{source}: no such database file")
    with closing(_connect(source)) as src, closing(_connect(target)) as dst:
        src.backup(dst)


def write_meta(path: Path, values: dict[str, str]) -> None:
    """Set app_meta keys in the database at `path` (its own short write transaction)."""
    with closing(_connect(path)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("SELECT count(*) FROM app_meta")  # no such table: not a SendOnce database (yet)
        conn.executemany("INSERT INTO app_meta (key, value) VALUES (?, ?) "
                         "ON CONFLICT (key) DO UPDATE SET value = excluded.value", values.items())
        conn.execute("COMMIT")


def verify(path: Path) -> Verified:
    """Check a database file as a backup must be: integrity_check ok, no foreign key broken,
    every send_log row matching its enrollment, derived counts equal to a recount. Returns
    the row count of every table; raises BackupError naming the first problem found."""
    if not path.is_file():
        raise BackupError(f"{path}: no such file")
    try:
        with closing(_connect(path)) as conn:
            return _verify(conn)
    except sqlite3.DatabaseError as exc:  # "file is not a database" and the like
        raise BackupError(f"{path}: not a usable SQLite database ({exc})") from exc


def _verify(conn: sqlite3.Connection) -> Verified:
    problems = [r[0] for r in conn.execute("PRAGMA integrity_check")]
    if problems != ["ok"]:
        raise BackupError(f"integrity_check failed: {'; '.join(problems[:5])}")
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                         "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    if "campaign_lead" not in tables:
        raise BackupError("not a SendOnce database (no campaign_lead table)")
    if conn.execute("PRAGMA foreign_key_check").fetchone() is not None:
        raise BackupError("a foreign key is broken (PRAGMA foreign_key_check)")
    for name, sql in checks(conn).items():
        bad = conn.execute(sql).fetchone()[0]
        if bad:
            raise BackupError(f"{bad} rows break the rule: {name}")
    found = Verified(counts={t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables})
    if "alembic_version" in tables:
        found.revision = conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    if "app_meta" in tables:
        found.meta = dict(conn.execute("SELECT key, value FROM app_meta"))
    return found


def _differences(one: str, other: str) -> str:
    """SQL counting the rows in one query's result and not the other's, both ways."""
    return (f"SELECT (SELECT count(*) FROM ({one} EXCEPT {other}) AS d) "
            f"+ (SELECT count(*) FROM ({other} EXCEPT {one}) AS d)")


def checks(conn: Any) -> dict[str, str]:
    """The invariants a consistent database keeps, as SQL for this one (a sqlite3 connection,
    or a SQLAlchemy one on either dialect); each query counts the rows that break its rule.
    A backup taken before upgrading (the README's advice) has no send_log.step column:
    then every row is step 1."""
    if hasattr(conn, "exec_driver_sql"):
        has_step = any(c["name"] == "step" for c in inspect(conn).get_columns("send_log"))
    else:  # a sqlite3 connection to a backup file
        has_step = conn.execute("SELECT count(*) FROM pragma_table_info('send_log') WHERE name = 'step'"
                                ).fetchone()[0]
    summary = schema.summary_query(conn)
    step = "s.step" if has_step else "1"
    recount = schema.recount_for(_revision(conn))
    return {
        # (A later step's variant is chosen when it is claimed: only step 1's is the enrollment's.)
        "every send_log row has its enrollment, with the same variant":
            "SELECT count(*) FROM send_log s LEFT JOIN campaign_lead cl ON cl.campaign_id = s.campaign_id "
            "AND cl.lead_id = s.lead_id "
            f"WHERE cl.id IS NULL OR ({step} = 1 AND cl.variant_letter <> s.variant_letter)",
        f"{schema.COUNTS} equals a recount of campaign_lead": _differences(
            f"SELECT campaign_id, state, n FROM {schema.COUNTS} WHERE n <> 0",
            recount),
        f"{schema.SUMMARY} equals a rebuild from send_log": _differences(
            f'SELECT campaign_id, hour, "trigger", sends FROM {schema.SUMMARY} WHERE sends <> 0', summary),
    }


def _revision(conn: Any) -> str | None:
    """The schema revision of a SQLAlchemy connection's database or a backup file's."""
    if hasattr(conn, "exec_driver_sql"):
        return current_revision(conn)
    if not conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'alembic_version'").fetchone()[0]:
        return None
    row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return row[0] if row else None


def restore_into(backup: Path, live: Path) -> None:
    """Write `backup` into the live file through the backup API.

    SQLite holds an exclusive lock on the live file while it copies: a writer in another
    process waits (busy_timeout) and then writes into the restored content, never into a
    file that has gone. The copy is one step, so no reader sees half of it.
    """
    copy_database(backup, live)


def private_copy(source: Path, target: Path) -> None:
    """Copy a small key file readable by its owner only (0600): it signs logins and links."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(source.read_bytes())
    os.chmod(target, 0o600)  # O_CREAT's mode does not apply to a file that existed


def clear_meta(path: Path, key: str) -> None:
    """Remove one app_meta key from the database at `path`."""
    with closing(_connect(path)) as conn:
        conn.execute("DELETE FROM app_meta WHERE key = ?", (key,))


def sends_in_flight(path: Path, claimed_after: str) -> int:
    """Claims that may still be sending: `sending` rows claimed after the given time (naive UTC
    text); older ones belong to dead processes, which `recover` turns `unknown`."""
    with closing(_connect(path)) as conn:
        return conn.execute("SELECT count(*) FROM send_log WHERE status = 'sending' AND claimed_at > ?",
                            (claimed_after,)).fetchone()[0]
