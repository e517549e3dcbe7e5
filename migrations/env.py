"""Alembic's environment for SendOnce (made by `flask db init`, then adapted).

Changes from Flask-Migrate's template, and why:
- no logging.config.fileConfig: it would replace the app's logging set-up (and silence
  its loggers) whenever a migration runs inside the app, e.g. from init-db;
- the whole run is one BEGIN IMMEDIATE transaction (transactional_ddl=True in app.py):
  senders wait instead of seeing half a migration;
- foreign keys are off while migrating (SQLite allows the switch only outside a
  transaction) so a batch "move and copy" can drop and re-create a referenced table,
  and PRAGMA foreign_key_check runs before the commit instead (on PostgreSQL they stay
  enforced: batch operations are plain ALTERs there, storage.migrate.foreign_keys);
- every run that applied a step, or finds a derived-table trigger missing, ends with
  storage.migrate.finish_migration: the triggers re-installed, counts recomputed, checked.
"""

from alembic import context
from flask import current_app

from storage import migrate

config = context.config


def get_engine():
    return current_app.extensions['migrate'].db.engine


config.set_main_option('sqlalchemy.url',
                       get_engine().url.render_as_string(hide_password=False).replace('%', '%%'))
target_db = current_app.extensions['migrate'].db


def get_metadata():
    return target_db.metadata


def run_migrations_offline():
    """Emit the SQL to stdout (`flask db upgrade --sql`) instead of running it."""
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=get_metadata(),
                      literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def _skip_empty_autogenerate(context, revision, directives):
    # No revision file for an autogenerate run that found nothing to change.
    if getattr(config.cmd_opts, 'autogenerate', False) and directives[0].upgrade_ops.is_empty():
        directives[:] = []


def run_migrations_online():
    """Run the migrations on the app's engine, then finish (triggers, counts, checks)."""
    conf_args = dict(current_app.extensions['migrate'].configure_args)
    conf_args.setdefault("process_revision_directives", _skip_empty_autogenerate)
    applied = []
    with get_engine().connect() as connection:
        migrate.foreign_keys(connection, on=False)
        try:
            connection.execution_options(immediate=True)
            context.configure(connection=connection, target_metadata=get_metadata(),
                              include_object=migrate.include_object_for(connection),
                              on_version_apply=lambda **kw: applied.append(kw["step"]), **conf_args)
            with context.begin_transaction():
                context.run_migrations()
                _finish(connection, applied)
        finally:
            migrate.foreign_keys(connection, on=True)


def _finish(connection, applied):
    if not migrate.has_tables(connection):
        return
    if applied or migrate.missing_triggers(connection):
        migrate.finish_migration(connection, get_metadata())
    problems = migrate.foreign_key_problems(connection)
    if problems:
        raise RuntimeError(f"foreign key violations after the migration (rolled back): {problems[:10]}")


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
