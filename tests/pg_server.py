"""A throwaway PostgreSQL cluster for the tests (and bench): Debian's postgresql binaries,
initdb into a temp dir owned by `postgres`, a unix socket only (listen_addresses=''),
started in the foreground and stopped with SIGINT; the dir is removed at the end.

With no TCP listener the port only names the socket file, so every cluster can use 5432
in its own socket dir: no port races between parallel runs. fsync stays on: the
durability tests (SIGKILL mid-claim) mean what they say.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

PORT = 5432
# A running cluster's dir, for processes (tests' subprocesses, bench) to attach to.
CLUSTER_DIR_ENV = "SENDONCE_PG_CLUSTER_DIR"
_counter = itertools.count(1)


def bin_dir() -> Path:
    """The newest installed server's bin dir (make test installs Debian's postgresql)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: int(Path(p).parent.parent.name))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: `make test` installs Debian's postgresql")
    return Path(found[-1]).parent


class PostgresCluster:
    def __init__(self) -> None:
        self.bin = bin_dir()
        self.dir = Path(tempfile.mkdtemp(prefix="sendonce-pg-"))
        self.process: subprocess.Popen | None = None

    @classmethod
    def attach(cls, directory: str) -> PostgresCluster:
        """The cluster another copy of this module started in this process (conftest may be
        imported twice, as `conftest` and `tests.conftest`): same socket dir, not ours to stop."""
        cluster = cls.__new__(cls)
        cluster.bin, cluster.dir, cluster.process = bin_dir(), Path(directory), None
        return cluster

    def _as_postgres(self) -> dict:
        # initdb refuses root; the postmaster runs as `postgres` too.
        if os.getuid() != 0:
            return {}
        user = pwd.getpwnam("postgres")
        os.chown(self.dir, user.pw_uid, user.pw_gid)
        return {"user": "postgres", "group": "postgres", "extra_groups": []}

    def start(self) -> PostgresCluster:
        run_as = self._as_postgres()
        subprocess.run([self.bin / "initdb", "-D", self.dir / "data", "-U", "postgres", "-A", "trust",
                        "-E", "UTF8", "--locale=C.UTF-8"], check=True, capture_output=True, **run_as)
        # Not under runuser: it would not pass SIGINT on to the postmaster.
        with open(self.dir / "server.log", "ab") as server_log:
            self.process = subprocess.Popen(
                [self.bin / "postgres", "-D", self.dir / "data", "-k", self.dir, "-p", str(PORT),
                 "-c", "listen_addresses=", "-c", "max_connections=300", "-c", "shared_buffers=128MB"],
                stdout=subprocess.DEVNULL, stderr=server_log, **run_as)
        deadline = time.monotonic() + 30
        while subprocess.run([self.bin / "pg_isready", "-q", "-h", self.dir, "-p", str(PORT)]).returncode:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not start: {(self.dir / 'server.log').read_text()}")
            time.sleep(0.05)
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@/{database}?host={self.dir}&port={PORT}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        done = subprocess.run([self.bin / "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                               "-h", str(self.dir), "-p", str(PORT), "-U", "postgres", "-d", database,
                               "-c", sql], check=True, capture_output=True, text=True)
        return done.stdout.strip()

    def _admin(self, *statements: str) -> None:
        # psycopg straight to the maintenance database: CREATE/DROP DATABASE refuse a transaction.
        with psycopg.connect(host=str(self.dir), port=PORT, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)

    def new_database(self, prefix: str = "t", template: str | None = None) -> str:
        """A new database, empty or a copy of `template`'s; its SQLAlchemy URL."""
        name = f"{prefix}_{os.getpid()}_{next(_counter)}"
        self._admin(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
        return self.url(name)

    def refill(self, url: str, template: str) -> None:
        """Make the (unused) database at `url` a fresh copy of `template` (a file copy: faster
        than creating every table and trigger again)."""
        name = url.split("/")[3].split("?")[0]
        self._admin(f"DROP DATABASE {name}", f"CREATE DATABASE {name} TEMPLATE {template}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # "fast" shutdown
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            shutil.rmtree(self.dir, ignore_errors=True)


def start_or_attach() -> PostgresCluster:
    """The cluster named by SENDONCE_PG_CLUSTER_DIR (someone else's: stop() leaves it
    running), else a new one started here and named there for this process's children.
    The one starter of conftest (the PostgreSQL test run) and bench (section postgres)."""
    running = os.environ.get(CLUSTER_DIR_ENV)
    cluster = PostgresCluster.attach(running) if running else PostgresCluster().start()
    os.environ[CLUSTER_DIR_ENV] = str(cluster.dir)
    return cluster
