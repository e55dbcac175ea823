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
from alembic.util import CommandError
from sqlalchemy.engine import Engine

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
    _check_revision(engine, revision)
    with _schema_lock(engine), _one_line(revision):
        command.upgrade(alembic_config(engine), revision)


def downgrade(engine: Engine, revision: str) -> None:
    _check_revision(engine, revision)
    with _schema_lock(engine), _one_line(revision):
        command.downgrade(alembic_config(engine), revision)


@contextlib.contextmanager
def _one_line(revision: str):
    try:
        yield
    except CommandError as err:
        raise ValueError(f"cannot migrate to {revision!r}: {err}") from None


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
