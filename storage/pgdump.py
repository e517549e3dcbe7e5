"""Backup and restore of a PostgreSQL database with PostgreSQL's own tools (#19).

SQLite's backup API (storage/backup.py) has no PostgreSQL counterpart inside the driver;
the database's own tools do the job and are what an operator of PostgreSQL already trusts:
- a backup is `pg_dump -Fc` (one compressed archive file). It dumps from a snapshot that
  our own REPEATABLE READ transaction exports, and that transaction runs the backup checks
  and row counts meanwhile, so what the manifest says is exactly what the archive holds;
  `pg_restore --list` then proves the file reads back.
- a restore is `pg_restore --clean --if-exists --single-transaction`: the tables are
  dropped and written again in one transaction, so no reader ever sees half of it. While
  it runs, our session holds the write lock (database.WRITE_LOCK) at session level: every
  writer, claims included, waits (lock_timeout, then busy), and the restored campaigns are
  paused before any of them gets in.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.pool import NullPool

from storage.backup import BackupError, Verified, checks
from storage.database import WRITE_LOCK, immediate, run_sql

ARCHIVE_SUFFIX = ".dump"


def tool(name: str) -> str:
    """The path of pg_dump/pg_restore: on PATH, else the newest of Debian's server packages."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[-3]))
    if not versions:
        raise BackupError(f"{name} is not installed (Debian: apt-get install postgresql-client)")
    return versions[-1]


def _connection_args(url: URL) -> tuple[list[str], dict[str, str]]:
    """libpq options for the tools, from the app's URL; the password goes in the environment."""
    args, query = [], dict(url.query)
    host, port = url.host or query.get("host"), url.port or query.get("port")
    if host:
        args += ["--host", str(host)]
    if port:
        args += ["--port", str(port)]
    if url.username:
        args += ["--username", url.username]
    env = {**os.environ}
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    if "sslmode" in query:
        env["PGSSLMODE"] = str(query["sslmode"])
    return args, env


def _run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        detail = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[0]
        raise BackupError(f"{Path(command[0]).name} failed: {detail}")
    return done


def dump(engine: Engine, target: Path, check: bool = True) -> Verified:
    """`pg_dump -Fc` of the database into `target` (0600), checked as storage/backup checks a
    file: every rule of backup.checks holds and the row counts, all in the dumped snapshot.
    check=False: the dump and its row counts only (the content a restore puts aside)."""
    args, env = _connection_args(engine.url)
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            snapshot = conn.execute(text("SELECT pg_export_snapshot()")).scalar_one()
            found = _verify(conn, check)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # lead data: owner only
            os.close(fd)
            _run([tool("pg_dump"), *args, "--format=custom", "--no-owner", "--no-acl",
                  f"--snapshot={snapshot}", f"--file={target}", engine.url.database], env)
    archive_revision(target)  # reads back (its table of contents and the schema revision)
    return found


def _verify(conn: Connection, check: bool) -> Verified:
    for name, sql in checks(conn).items() if check else ():
        bad = conn.exec_driver_sql(sql).scalar()
        if bad:
            raise BackupError(f"{bad} rows break the rule: {name}")
    tables = sorted(inspect(conn).get_table_names())
    if "campaign_lead" not in tables:
        raise BackupError("not a SendOnce database (no campaign_lead table)")
    found = Verified(counts={t: conn.exec_driver_sql(f'SELECT count(*) FROM "{t}"').scalar() for t in tables})
    if "alembic_version" in tables:
        found.revision = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    if "app_meta" in tables:
        found.meta = dict(conn.exec_driver_sql("SELECT key, value FROM app_meta").all())
    return found


def archive_revision(path: Path) -> str | None:
    """The schema revision a pg_dump archive holds (None: no alembic_version row); BackupError
    when the file is not an archive pg_restore can read."""
    if not path.is_file():
        raise BackupError(f"{path}: no such file")
    env = {**os.environ}
    try:
        _run([tool("pg_restore"), "--list", str(path)], env)
    except BackupError as exc:
        raise BackupError(f"{path}: not a pg_dump archive ({exc})") from exc
    data = _run([tool("pg_restore"), "--data-only", "--table=alembic_version", "--file=-", str(path)], env)
    lines = data.stdout.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("COPY ") and "alembic_version" in line and i + 1 < len(lines):
            return None if lines[i + 1] == "\\." else lines[i + 1].strip()
    return None


def restore(engine: Engine, archive: Path) -> None:
    """Replace the database's tables with the archive's, in one transaction (pg_restore)."""
    args, env = _connection_args(engine.url)
    _run([tool("pg_restore"), *args, "--clean", "--if-exists", "--single-transaction", "--exit-on-error",
          "--no-owner", "--no-acl", f"--dbname={engine.url.database}", str(archive)], env)


@contextmanager
def writers_held(engine: Engine) -> Iterator[Engine]:
    """Hold the write lock (WRITE_LOCK, session level) on a connection of our own while the
    block runs: every writer of the app waits. Yields an engine whose transactions do not
    take that lock, to write with meanwhile (the app's would wait for us: a deadlock)."""
    unlocked = create_engine(engine.url, poolclass=NullPool)
    try:
        with unlocked.connect() as holder:
            run_sql(holder, "SELECT pg_advisory_lock(?)", (WRITE_LOCK,))
            holder.commit()
            try:
                yield unlocked
            finally:
                run_sql(holder, "SELECT pg_advisory_unlock(?)", (WRITE_LOCK,))
                holder.commit()
    finally:
        unlocked.dispose()


def write_meta(engine: Engine, values: dict[str, str]) -> None:
    """Set app_meta keys (one short write transaction, as the app's writers take it)."""
    with immediate(engine) as conn:
        for key, value in values.items():
            run_sql(conn, "INSERT INTO app_meta (key, value) VALUES (?, ?) "
                          "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))


def clear_meta(engine: Engine, key: str) -> None:
    """Remove one app_meta key."""
    with immediate(engine) as conn:
        run_sql(conn, "DELETE FROM app_meta WHERE key = ?", (key,))


def sends_in_flight(engine: Engine, claimed_after: str) -> int:
    """backup.sends_in_flight for the database behind `engine` (claimed_after: naive UTC text)."""
    with engine.connect() as conn:
        return run_sql(conn, "SELECT count(*) FROM send_log WHERE status = 'sending' AND claimed_at > ?",
                       (datetime.fromisoformat(claimed_after),)).fetchone()[0]
