"""What every command shares: the database connection and output helpers."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import click
import numpy as np
from sqlalchemy.engine import Engine

from iwan.db import migrate
from iwan.db.engine import DatabaseError, make_engine, safe_url
from iwan.db.norms import UnknownWordError
from iwan.datasets.usf import NormsFormatError

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
    if type(err) is KeyError:
        # A bare KeyError's text is only the key ("29"): never an answer by itself.
        text = f"{text} was not found (KeyError); run again with IWAN_DEBUG=1 and report the traceback"
    return safe_url(text or type(err).__name__)


def emit_json(payload) -> None:
    """Standard JSON only: a NaN or infinite number (an undefined figure) is written as null,
    never as the `NaN`/`Infinity` that JSON parsers reject."""
    click.echo(json.dumps(_finite(payload), indent=None, default=str, allow_nan=False))


def _finite(value):
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def deprecated_option(old: str, new: str, name: str, **kwargs):
    """The old spelling of option `new`, still accepted (hidden from --help) with one deprecation
    line on stderr; the command receives it as `name` and uses it where `new` is not given."""

    def warn(ctx, param, value):
        if value is not None:
            click.echo(f"iwan: warning: {old} is deprecated; use {new}", err=True)
        return value

    return click.option(old, name, hidden=True, callback=warn, **kwargs)


pass_context = click.make_pass_decorator(CliContext)
