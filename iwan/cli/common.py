"""What every command shares: the settings, the database connection and output helpers."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property

import click
import numpy as np
from sqlalchemy.engine import Engine

from iwan import config
from iwan.config import Settings
from iwan.datasets.usf import NormsFormatError
from iwan.db import migrate
from iwan.db.engine import DatabaseError, make_engine, safe_url
from iwan.db.norms import UnknownWordError

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
    """What the `iwan` group hands every command: the settings and the database."""

    database_url: str | None
    """--database-url (or IWAN_DATABASE_URL, which click reads for it)."""
    _engine: Engine | None = field(default=None, repr=False)

    @cached_property
    def settings(self) -> Settings:
        """The environment read once (with --database-url winning), on a command's first use, so
        that --help works whatever the environment holds; commands pass it down."""
        return config.settings(self.database_url)

    def engine(self, migrated: bool = True) -> Engine:
        """The engine; `migrated` brings the schema to head, or says how for an external server."""
        if self._engine is None:
            self._engine = make_engine(settings=self.settings)
        if migrated:
            ensure_schema(self._engine, external=self.settings.database_url is not None)
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


def read_query_file(path) -> bytes:
    """A query image file's bytes, at most the service's body limit (a bigger file is no query)."""
    from pathlib import Path

    from iwan.config import MAX_BODY_BYTES

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    if path.stat().st_size > MAX_BODY_BYTES:
        raise ValueError(f"{path}: {path.stat().st_size:,} bytes is over the {MAX_BODY_BYTES:,} a query may have")
    return path.read_bytes()


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
