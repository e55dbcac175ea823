"""What every command shares: the database connection and output helpers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import click
from sqlalchemy.engine import Engine

from iwan import migrate
from iwan.db import DatabaseError, make_engine, safe_url
from iwan.norms.store import UnknownWordError
from iwan.norms.usf import NormsFormatError

# Errors whose message already says what went wrong and what to do: shown without a traceback.
EXPECTED_ERRORS = (
    DatabaseError,
    NormsFormatError,
    UnknownWordError,
    FileNotFoundError,
    ConnectionError,
    LookupError,
    ValueError,
)


@dataclass
class CliContext:
    database_url: str | None
    _engine: Engine | None = field(default=None, repr=False)

    def engine(self, migrated: bool = True) -> Engine:
        """The engine; `migrated` brings the schema to head, or says how for an external server."""
        if self._engine is None:
            self._engine = make_engine(self.database_url)
        if migrated:
            ensure_schema(self._engine, external=self.database_url is not None)
        return self._engine


def ensure_schema(engine: Engine, external: bool) -> None:
    current, head = migrate.current_revision(engine), migrate.head_revision(engine)
    if current == head:
        return
    if external:
        raise DatabaseError(
            f"the schema of {safe_url(str(engine.url))} is at revision {current or 'none'}, "
            f"not {head}: run `iwan db upgrade`"
        )
    migrate.upgrade(engine)


def emit_json(payload) -> None:
    click.echo(json.dumps(payload, indent=None, default=str))


def deprecated_option(old: str, new: str, name: str, **kwargs):
    """The old spelling of option `new`, still accepted (hidden from --help) with one deprecation
    line on stderr; the command receives it as `name` and uses it where `new` is not given."""

    def warn(ctx, param, value):
        if value is not None:
            click.echo(f"iwan: warning: {old} is deprecated; use {new}", err=True)
        return value

    return click.option(old, name, hidden=True, callback=warn, **kwargs)


pass_context = click.make_pass_decorator(CliContext)
