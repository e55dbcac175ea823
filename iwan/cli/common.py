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


def one_line(err: BaseException) -> str:
    """An error's message on one line, with any password in it hidden."""
    text = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return safe_url(text or type(err).__name__)


def emit_json(payload) -> None:
    """Standard JSON only: NaN and infinities are a bug to report, never `NaN`/`Infinity` output."""
    click.echo(json.dumps(payload, indent=None, default=str, allow_nan=False))


pass_context = click.make_pass_decorator(CliContext)
