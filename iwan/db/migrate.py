"""Alembic, driven from Python: the schema exists only through the migrations in migrations/."""

from __future__ import annotations

import contextlib
from importlib.resources import files
from typing import cast

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy.engine import Connection, Engine

from iwan.db.engine import DatabaseError

# pg_advisory_lock key held while the schema changes, so that concurrent first runs wait
# for one another instead of creating the same tables twice.
SCHEMA_LOCK = 0x1A7A_0001


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(files("iwan.migrations")))
    config.attributes["engine"] = engine
    return config


@contextlib.contextmanager
def _schema_lock(engine: Engine):
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": SCHEMA_LOCK})
        try:
            yield
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": SCHEMA_LOCK})


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply the pending migrations up to `revision`, all in one transaction (migrations/env.py):
    what can be checked beforehand (the extensions they need) is, and a failure changes nothing."""
    _check_revision(engine, revision)
    with _schema_lock(engine):
        before = current_revision(engine)
        _check_extensions(engine, _pending(engine, before, revision))
        with _one_line(revision, before):
            command.upgrade(alembic_config(engine), revision)


def downgrade(engine: Engine, revision: str) -> None:
    _check_revision(engine, revision)
    with _schema_lock(engine):
        before = current_revision(engine)
        with _one_line(revision, before):
            command.downgrade(alembic_config(engine), revision)


@contextlib.contextmanager
def _one_line(revision: str, before: str | None):
    try:
        yield
    except CommandError as err:
        raise ValueError(f"cannot migrate to {revision!r}: {err}") from None
    except sa.exc.DBAPIError as err:
        reason = _first_line(err)
        raise DatabaseError(
            f"cannot migrate to {revision!r}: {reason}; nothing was changed, the schema stays at "
            f"revision {before or 'none'}"
        ) from None


def _first_line(err: sa.exc.DBAPIError) -> str:
    """The database's own message (without SQLAlchemy's SQL and background link), on one line."""
    text = str(err.orig or err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _pending(engine: Engine, current: str | None, target: str):
    """The migration scripts an upgrade from `current` to `target` runs (all above `current` where
    `target` is relative, which alembic cannot list beforehand)."""
    scripts = ScriptDirectory.from_config(alembic_config(engine))
    lower = current or "base"
    try:
        return list(scripts.iterate_revisions(target, lower))
    except (CommandError, RevisionError):
        return list(scripts.iterate_revisions("head", lower))


def _check_extensions(engine: Engine, pending) -> None:
    """Every extension a pending migration declares in `required_extensions` exists or can be
    created by this role; else one line naming what an administrator must run, before anything
    changed. Managed services seldom make their users superusers, which CREATE EXTENSION vector
    needs: there an administrator creates it once, and the upgrade needs no privilege for it."""
    needed = sorted({name for script in pending for name in getattr(script.module, "required_extensions", ())})
    if not needed:
        return
    with engine.connect() as conn:
        for name in needed:
            if conn.scalar(sa.text("SELECT 1 FROM pg_extension WHERE extname = :n"), {"n": name}):
                continue
            reason = _cannot_create_extension(conn, name)
            if reason is None:
                continue
            database, role = conn.execute(sa.text("SELECT current_database(), current_user")).one()
            raise DatabaseError(
                f"the database {database!r} lacks the PostgreSQL extension {name!r} and role {role!r} cannot "
                f"create it ({reason}): an administrator must run `CREATE EXTENSION {name};` in database "
                f"{database!r} (the {name} package installed on the server), then run `iwan db upgrade` again; "
                "nothing was changed"
            )


def _cannot_create_extension(conn: Connection, name: str) -> str | None:
    """Why this role cannot create extension `name`, tried in a transaction that is always rolled
    back; None where it can."""
    try:
        conn.execute(sa.text(f'CREATE EXTENSION "{name}"'))
    except sa.exc.DBAPIError as err:
        return _first_line(err)
    finally:
        conn.rollback()  # the connection's (autobegun) transaction: the trial leaves nothing
    return None


def _check_revision(engine: Engine, revision: str) -> None:
    """An unknown revision is a one-line error, not alembic's traceback."""
    if revision in ("head", "base") or revision.startswith(("+", "-")):
        return
    scripts = ScriptDirectory.from_config(alembic_config(engine))
    try:
        found = scripts.get_revision(revision)
    except CommandError:
        found = None
    if found is None:
        known = ", ".join(s.revision for s in scripts.walk_revisions())
        raise ValueError(f"schema revision {revision!r} is unknown: use head, base, or one of {known}")


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision(engine: Engine) -> str:
    # None only for a script folder without revisions; iwan.migrations ships them
    return cast(str, ScriptDirectory.from_config(alembic_config(engine)).get_current_head())
