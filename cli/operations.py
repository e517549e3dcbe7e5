"""Operations commands: schema upgrades, online backups, restore and reconcile (README: Operations)."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import flask_migrate
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy import create_engine
from sqlalchemy.exc import SQLAlchemyError

from cli.terminal import echo
from core import alerts, campaigns, mailboxes
from models import db
from sender import Settings
from storage import backup as files
from storage import migrate, pgdump, schema, secrets
from storage.database import configure_engine, is_postgres
from storage.revision import BASELINE, HEAD, REVISIONS, current_revision
from storage.timeutil import utcnow
from timeline import legacy_log
from timeline import reconcile as reconciling

BACKUP_GLOB = "sendonce-*.db"
PG_BACKUP_GLOB = f"sendonce-*{pgdump.ARCHIVE_SUFFIX}"  # pg_dump archives (PostgreSQL)
FAILED = "backup failed, nothing kept: "
KEY_SUFFIXES = (".secret_key", ".mailbox_keys")  # key files kept beside a backup


def _stamp(moment: datetime) -> str:
    """A UTC moment as the backup notes and the maintenance flag write it: YYYY-MM-DD HH:MM:SS."""
    return moment.replace(tzinfo=None).isoformat(sep=" ", timespec="seconds")


def upgrade_database() -> str:
    """Bring the database to this code's schema revision, whatever it is now: migrations from
    scratch for an empty file, the baseline stamp first for a file made before migrations
    (commit 3a618c4's schema), then `upgrade`. Returns what was done, for people."""
    with db.engine.connect() as conn:
        before, tables = current_revision(conn), migrate.has_tables(conn)
    if before is not None and before not in REVISIONS:  # newer code has been here: never downgrade
        raise click.ClickException(migrate.mismatch_detail(before))
    if before is None and tables:
        flask_migrate.stamp(revision=BASELINE)
    flask_migrate.upgrade()
    schema.install(db.engine, db.metadata)  # re-checks the triggers; creates nothing on a migrated file
    with db.engine.connect() as conn:
        after = current_revision(conn)
    if after != HEAD:
        raise click.ClickException(migrate.mismatch_detail(after))
    start = "an empty database" if not tables else f"revision {before or f'{BASELINE} (stamped)'}"
    return f"schema: {start} -> {after}"


def _live_path() -> Path:
    return Path(db.engine.url.database).resolve()


def _backup_dir() -> Path:
    return Path(current_app.config["BACKUP_DIR"])


@click.command("backup")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--keep", type=click.IntRange(min=1),
              help="Backups to keep in BACKUP_DIR (default BACKUP_KEEP).")
@with_appcontext
def backup_command(file: Path | None, keep: int | None) -> None:
    """Copy the database while senders run (SQLite's online backup), verify it, keep the last N.

    On PostgreSQL: a pg_dump archive (sendonce-*.dump), checked in the snapshot it dumps.
    """
    try:
        (_backup_pg if is_postgres(db.engine) else _backup)(file, keep)
    except OSError as exc:  # BACKUP_DIR unwritable, a file, a full disk: one line, exit 1
        _note_backup(str(exc))
        raise click.ClickException(f"backup failed: {exc}") from exc
    except click.ClickException as exc:
        _note_backup(exc.message.removeprefix(FAILED))
        raise
    _note_backup(None)


def _note_backup(error: str | None) -> None:
    """Raise the backup_failed alert (the admins get a mail), or clear it after a good backup."""
    try:
        alerts.backup_result(db.engine, error, utcnow())
    except SQLAlchemyError as exc:  # the backup's own outcome stands; only the alert is missing
        echo(f"warning: the backup alert could not be {'raised' if error else 'cleared'} ({exc})", err=True)


def _backup(file: Path | None, keep: int | None) -> None:
    taken = utcnow()  # before the snapshot: everything committed before this moment is in it
    target = file or _backup_dir() / f"sendonce-{taken:%Y%m%dT%H%M%S.%f}Z.db"  # sorts by time
    if target.exists():
        raise click.ClickException(f"{target} exists already; give another file name")
    target.parent.mkdir(parents=True, exist_ok=True)
    found = _snapshot(target, taken)
    keys = _copy_keys(target)
    manifest = {"taken_at": _stamp(taken), "database": str(_live_path()),
                "revision": found.revision, "rows": found.counts, "key_files": keys}
    _private_write(target.with_name(target.name + ".json"), json.dumps(manifest, indent=2))
    try:  # for /healthz; the backup is made and sound whether or not this note gets written
        files.write_meta(_live_path(), {"last_backup_at": _stamp(taken),
                                        "last_backup_file": str(target)})
    except sqlite3.Error as exc:
        echo(f"warning: the backup's time was not noted in the database ({exc}); /healthz "
                   "still shows the previous one", err=True)
    pruned = _prune(keep or int(current_app.config["BACKUP_KEEP"])) if target.parent == _backup_dir() else []
    echo(f"backup {target}: verified (integrity_check ok, counts equal recounts), revision "
               f"{found.revision}, {found.counts.get('send_log', 0)} sends, "
               f"{found.counts.get('campaign_lead', 0)} enrollments"
               + (f"; removed {len(pruned)} old" if pruned else ""))


def _snapshot(target: Path, taken: datetime) -> files.Verified:
    """The backup itself, written aside and renamed into place only once verified."""
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        files.copy_database(_live_path(), partial)
        os.chmod(partial, 0o600)  # lead data: the owner's only
        files.write_meta(partial, {"backup_taken_at": _stamp(taken)})
        found = files.verify(partial)
    except files.BackupError as exc:
        partial.unlink(missing_ok=True)
        raise click.ClickException(f"{FAILED}{exc}") from exc
    partial.rename(target)
    return found


def _copy_keys(target: Path) -> list[str]:
    """The key files the database depends on, copied beside it (0600), or a loud warning."""
    return _copy_secret_key(target) + _copy_mailbox_keys(target)


def _copy_secret_key(target: Path) -> list[str]:
    secret = Path(current_app.config["SECRET_KEY_FILE"])
    if secret.is_file() and secret.read_text().strip() == current_app.config["SECRET_KEY"]:
        copy = target.with_name(target.name + ".secret_key")
        files.private_copy(secret, copy)
        return [copy.name]
    echo("WARNING: SECRET_KEY is set in the configuration or environment, not in "
               "SECRET_KEY_FILE (instance/secret_key): it is NOT in this backup. Keep a copy of it "
               "elsewhere: without it, logins and every unsubscribe link already sent stop working "
               "after a restore on a new machine.", err=True)
    return []


def _copy_mailbox_keys(target: Path) -> list[str]:
    """MAILBOX_KEY_FILE beside the copy: the stored mailbox passwords are unreadable without it."""
    keys = Path(current_app.config["MAILBOX_KEY_FILE"])
    if keys.is_file():
        copy = target.with_name(target.name + ".mailbox_keys")
        files.private_copy(keys, copy)
        return [copy.name]
    with db.engine.connect() as conn:
        sealed = mailboxes.sealed_count(conn)
    if sealed:
        echo(f"WARNING: MAILBOX_KEY_FILE ({keys}) is missing: the passwords of {sealed} mailboxes in "
             "this backup cannot be read; re-enter them after a restore (flask --app app mailbox "
             "set-secret).", err=True)
    return []


def _private_write(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)


def _prune(keep: int, pattern: str = BACKUP_GLOB) -> list[Path]:
    """Delete all but the newest `keep` backups in BACKUP_DIR (with their key and manifest files)."""
    old = sorted(_backup_dir().glob(pattern))[:-keep]
    for path in old:
        for extra in (path, *(path.with_name(path.name + suffix) for suffix in KEY_SUFFIXES),
                      path.with_name(path.name + ".json")):
            extra.unlink(missing_ok=True)
    return old


@click.command("restore")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--wait", type=click.IntRange(min=0), default=60, show_default=True,
              help="Seconds to wait for sends in flight to end before giving up.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@with_appcontext
def restore_command(file: Path, wait: int, yes: bool) -> None:
    """Replace the database's content with a backup; active campaigns come back paused.

    On PostgreSQL: a pg_dump archive of `flask backup`, put in with pg_restore (one transaction).
    """
    if is_postgres(db.engine):
        _restore_pg(file, wait, yes)
        return
    try:
        found = files.verify(file)
    except files.BackupError as exc:
        raise click.ClickException(f"not restored: {exc}") from exc
    if found.revision != HEAD:
        raise click.ClickException(
            f"not restored: {file} is at schema revision {found.revision}, this code at {HEAD}. "
            "Upgrade a copy first (FLASK_SQLALCHEMY_DATABASE_URI=sqlite:///<copy> flask --app app "
            "db upgrade) or restore with the version of SendOnce that made it.")
    live = _live_path()
    if not yes:
        click.confirm(f"Replace everything in {live} with {file}?", abort=True)
    taken = (found.meta.get("backup_taken_at")  # a copy made otherwise: its file time, in UTC
             or _stamp(datetime.fromtimestamp(file.stat().st_mtime, UTC)))
    try:
        files.write_meta(live, {})  # can the live file take the maintenance flag at all?
    except sqlite3.Error as exc:
        raise click.ClickException(
            f"not restored: {live} cannot be written ({exc}). If it is damaged, move it away, run "
            "`flask --app app init-db` to make a new one, then restore again.") from exc
    aside, paused = _restore(file, live, taken, wait)
    _restored(file, live, taken, aside, paused)


def _restored(file: Path, live: object, taken: str, aside: Path, paused: list[int]) -> None:
    """What a restore (either database) tells the person, and the backup's keys put back."""
    echo(f"restored {file} (taken {taken} UTC) into {live}; the previous content is kept in {aside}")
    if paused:
        echo(f"paused campaigns {', '.join(map(str, paused))}: sends after {taken} UTC are not in this "
             "database. Reconcile first (flask --app app reconcile <send log>), then resume each.")
    if file.with_name(file.name + ".secret_key").is_file():
        echo(f"the backup's secret key is in {file.name}.secret_key; SECRET_KEY_FILE was left as is "
             "(copy it over only when restoring on a new machine)")
    _restore_mailbox_keys(file)


def _restore_mailbox_keys(file: Path) -> None:
    """Put the backup's mailbox keys back: added to MAILBOX_KEY_FILE, whose own keys stay (a key
    rotated in since still reads what was sealed since), then say what still cannot be read."""
    path = current_app.config["MAILBOX_KEY_FILE"]
    saved = file.with_name(file.name + ".mailbox_keys")
    if saved.is_file():
        added = secrets.merge_keys(path, saved)
        echo(f"mailbox keys: {added} added to {path} from {saved.name}" if added else
             f"mailbox keys: {path} holds every key of {saved.name} already")
    bad = mailboxes.unreadable_secrets(db.engine, secrets.Vault(path))
    if bad:
        echo(f"WARNING: the secrets of mailboxes {', '.join(map(str, bad))} cannot be decrypted with "
             f"{path}: copy the backup's .mailbox_keys file there, or re-enter them (flask --app app "
             "mailbox set-secret ID).", err=True)


def _restore(file: Path, live: Path, taken: str, wait: int) -> tuple[Path, list[int]]:
    """Maintenance on, sends in flight drained, staged copy paused, old content aside, write in."""
    now = utcnow()
    flag = {migrate.MAINTENANCE_KEY: f"restore of {file.name} started {_stamp(now)} UTC"}
    files.write_meta(live, flag)  # from here on every claim, in every process, refuses
    staged = live.with_name(live.name + ".restore-staging")
    try:
        _drain(live, wait)
        files.copy_database(file, staged)
        paused = _pause_staged(staged, f"restored from a backup of {taken} UTC: sends after {taken} UTC "
                                       "are not in this database")
        files.write_meta(staged, flag)  # the restored content arrives with claims still refused
        aside = live.with_name(f"{live.stem}.before-restore-{now:%Y%m%dT%H%M%S}Z.db")
        files.copy_database(live, aside)
        os.chmod(aside, 0o600)
        files.restore_into(staged, live)
    finally:
        files.clear_meta(live, migrate.MAINTENANCE_KEY)
        staged.unlink(missing_ok=True)
    return aside, paused


def _drain(live: Path | None, wait: int) -> None:
    """Wait until no claim may still be sending; a claim older than the stale limit belongs
    to a dead process (its row becomes `unknown`, whatever the restore does).
    live=None: the PostgreSQL database of the app."""
    stale = Settings.from_config(current_app.config).stale_seconds
    deadline = time.monotonic() + wait
    in_flight = ((lambda after: pgdump.sends_in_flight(db.engine, after)) if live is None
                 else (lambda after: files.sends_in_flight(live, after)))
    while (busy := in_flight(_stamp(utcnow() - timedelta(seconds=stale)))):
        if time.monotonic() >= deadline:
            raise click.ClickException(f"not restored: {busy} sends are still in flight after {wait}s; "
                                       "stop the senders (or wait longer with --wait) and try again")
        time.sleep(0.2)


def _pause_staged(staged: Path, reason: str) -> list[int]:
    engine = create_engine(f"sqlite:///{staged}")
    configure_engine(engine)
    try:
        return campaigns.pause_all_active(engine, reason)
    finally:
        engine.dispose()


# --- PostgreSQL: pg_dump and pg_restore (storage/pgdump.py) ---

def _database_label() -> str:
    return db.engine.url.render_as_string(hide_password=True)


def _backup_pg(file: Path | None, keep: int | None) -> None:
    """_backup for PostgreSQL: a pg_dump archive, written aside and renamed once verified."""
    taken = utcnow()  # before the snapshot: everything committed before this moment is in it
    target = file or _backup_dir() / f"sendonce-{taken:%Y%m%dT%H%M%S.%f}Z{pgdump.ARCHIVE_SUFFIX}"
    if target.exists():
        raise click.ClickException(f"{target} exists already; give another file name")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        found = pgdump.dump(db.engine, partial)
    except files.BackupError as exc:
        partial.unlink(missing_ok=True)
        raise click.ClickException(f"{FAILED}{exc}") from exc
    partial.rename(target)
    keys = _copy_keys(target)
    manifest = {"taken_at": _stamp(taken), "database": _database_label(),
                "revision": found.revision, "rows": found.counts, "key_files": keys}
    _private_write(target.with_name(target.name + ".json"), json.dumps(manifest, indent=2))
    try:  # for /healthz; the backup is made and sound whether or not this note gets written
        pgdump.write_meta(db.engine, {"last_backup_at": _stamp(taken), "last_backup_file": str(target)})
    except SQLAlchemyError as exc:
        echo(f"warning: the backup's time was not noted in the database ({exc}); /healthz "
             "still shows the previous one", err=True)
    pruned = (_prune(keep or int(current_app.config["BACKUP_KEEP"]), PG_BACKUP_GLOB)
              if target.parent == _backup_dir() else [])
    echo(f"backup {target}: verified (pg_dump snapshot; counts equal recounts; pg_restore reads it), "
         f"revision {found.revision}, {found.counts.get('send_log', 0)} sends, "
         f"{found.counts.get('campaign_lead', 0)} enrollments"
         + (f"; removed {len(pruned)} old" if pruned else ""))


def _restore_pg(file: Path, wait: int, yes: bool) -> None:
    """restore_command for PostgreSQL: the same rules (maintenance flag, sends in flight
    drained, the previous content kept, campaigns paused for a reconcile), pg_restore's work."""
    try:
        revision = pgdump.archive_revision(file)
    except files.BackupError as exc:
        raise click.ClickException(f"not restored: {exc} (a SQLite backup goes into PostgreSQL with "
                                   "`flask --app app copy-to`)") from exc
    if revision != HEAD:
        raise click.ClickException(
            f"not restored: {file} is at schema revision {revision}, this code at {HEAD}. Restore it "
            "with the version of SendOnce that made it, then upgrade (flask --app app db upgrade).")
    live = _database_label()
    if not yes:
        click.confirm(f"Replace everything in {live} with {file}?", abort=True)
    taken = _manifest_taken(file) or _stamp(datetime.fromtimestamp(file.stat().st_mtime, UTC))
    now = utcnow()
    flag = {migrate.MAINTENANCE_KEY: f"restore of {file.name} started {_stamp(now)} UTC"}
    try:  # from here on every claim, in every process, refuses
        pgdump.write_meta(db.engine, flag)
    except SQLAlchemyError as exc:
        raise click.ClickException(f"not restored: {live} cannot be written ({exc})") from exc
    try:
        _drain(None, wait)
        aside = _backup_dir() / f"before-restore-{now:%Y%m%dT%H%M%S}Z{pgdump.ARCHIVE_SUFFIX}"
        aside.parent.mkdir(parents=True, exist_ok=True)
        pgdump.dump(db.engine, aside, check=False)
        reason = f"restored from a backup of {taken} UTC: sends after {taken} UTC are not in this database"
        with pgdump.writers_held(db.engine) as unlocked:  # no write gets in until campaigns are paused
            pgdump.restore(db.engine, file)
            paused = campaigns.pause_all_active(unlocked, reason)
    except files.BackupError as exc:
        raise click.ClickException(f"not restored: {exc}") from exc
    finally:
        pgdump.clear_meta(db.engine, migrate.MAINTENANCE_KEY)
    _restored(file, live, taken, aside, paused)


def _manifest_taken(file: Path) -> str | None:
    """When `flask backup` took the archive, from the manifest beside it (None: no manifest)."""
    try:
        return json.loads(file.with_name(file.name + ".json").read_text(encoding="utf-8"))["taken_at"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


@click.command("reconcile")
@click.argument("log_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--source", help="What to record as the source (default: the file name).")
@click.option("--tz", default="UTC", show_default=True, help="Zone of naive times in the log.")
@click.option("--dry-run", is_flag=True, help="Report what would be marked; change nothing.")
@with_appcontext
def reconcile_command(log_file: Path, source: str | None, tz: str, dry_run: bool) -> None:
    """Mark every (campaign, lead) a send log shows delivered as `sent` (logged `unknown`: `unknown`);
    list what did not apply."""
    try:
        rows, rejected = reconciling.parse(log_file.read_bytes(), tz)
    except legacy_log.LegacyLogError as exc:
        raise click.ClickException(f"{log_file}: {exc}; nothing was changed") from exc
    report = reconciling.reconcile(db.engine, rows, source or log_file.name, apply=not dry_run)
    for line, reason in rejected:
        echo(f"line {line}: unreadable, not applied: {reason}", err=True)
    for line, reason in report.unmatched:
        echo(f"line {line}: not applied: {reason}", err=True)
    for line, status in report.not_delivered:
        echo(f"line {line}: not applied: status {status!r} is not a delivery", err=True)
    for line, campaign_id, lead_id in report.uncertain:
        echo(f"line {line}: unknown in the log: lead {lead_id} of campaign {campaign_id} is now "
                   "`unknown` here; decide it with `flask --app app resolve`", err=True)
    verb = "would mark" if dry_run else "marked"
    echo(f"{verb} {len(report.applied)} sent, {len(report.uncertain)} unknown, "
               f"{report.already_sent} were sent already, "
               f"{len(report.unmatched)} unmatched, {len(report.not_delivered)} not delivered, "
               f"{len(rejected)} unreadable")
