"""Connections: an external PostgreSQL by URL, or the embedded server under IWAN_HOME.

`make_engine()` is an entry point: given no settings it reads them from the environment
(iwan.config.settings); everything below it takes the settings it was handed.
"""

from __future__ import annotations

import logging
import re
from functools import cache
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from iwan import config
from iwan.config import DEFAULT_CONNECT_TIMEOUT_S, Settings
from iwan.db import embedded

EMBEDDED_DATABASE = "iwan"

log = logging.getLogger(__name__)

_POSTGRES_SCHEME = re.compile(r"^postgres(ql)?(\+\w+)?://", re.IGNORECASE)
# scheme://userinfo@host...: the userinfo ends at the last "@" before the query, so an unencoded
# "@" in a password is hidden too.
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:@/?#\s]*):(?P<password>[^?#\s]*)@")
# password=... in a query string or a key=value DSN, quoted or not.
_PASSWORD_PARAMETER = re.compile(r"(?P<key>\bpassword\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*'|[^\s&'\"]*)", re.IGNORECASE)


class DatabaseError(RuntimeError):
    """The database cannot be reached or is not in the state a command needs."""


@cache
def _embedded_server(pgdata: Path, connect_timeout: int = DEFAULT_CONNECT_TIMEOUT_S) -> embedded.Server:
    """Start (or join) the embedded PostgreSQL of `pgdata` and ensure the iwan database exists.

    The server stops when the last process using it exits; its data stays for later runs. The
    cluster's lock makes concurrent first runs wait for each other instead of racing.
    """
    try:
        with embedded.locked(pgdata):
            server = embedded.start(pgdata)
            admin = sa.create_engine(
                server.url("postgres"), isolation_level="AUTOCOMMIT", connect_args=_connect_args(connect_timeout)
            )
            with admin.connect() as conn:
                exists = conn.scalar(
                    sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": EMBEDDED_DATABASE}
                )
                if not exists:
                    conn.execute(sa.text(f'CREATE DATABASE "{EMBEDDED_DATABASE}"'))
            admin.dispose()
    except embedded.EmbeddedServerError as err:
        raise DatabaseError(str(err)) from None
    return server


def _embedded_uri(pgdata: Path, connect_timeout: int = DEFAULT_CONNECT_TIMEOUT_S) -> str:
    """The URL of the iwan database on the embedded PostgreSQL of `pgdata`, started as needed."""
    return _embedded_server(pgdata, connect_timeout).url(EMBEDDED_DATABASE)


def _cluster(settings: Settings) -> Path:
    """The embedded cluster's name: `pgdata` in the resolved home, itself not resolved (as root it
    may link to where the server's user can reach the data; the secret lies beside the name)."""
    return settings.pgdata.parent.resolve() / settings.pgdata.name


class _Reviving:
    """The embedded server's connect step (SQLAlchemy's do_connect): a connection that fails
    because the server stopped (stopped by hand, crashed, killed) starts it again through
    embedded.revive and is tried once more; the server's socket folder is followed if it moved."""

    def __init__(self, pgdata: Path, server: embedded.Server):
        self.pgdata = pgdata
        self.socket_dir = server.socket_dir

    def __call__(self, dialect, record, cargs: list, cparams: dict):
        cparams["host"] = str(self.socket_dir)
        try:
            return dialect.connect(*cargs, **cparams)
        except dialect.loaded_dbapi.OperationalError:
            server = embedded.revive(self.pgdata, self.socket_dir)
            if server is None:
                raise
            self.socket_dir = server.socket_dir
            cparams["host"] = str(server.socket_dir)
            return dialect.connect(*cargs, **cparams)


def _sqlalchemy_url(url: str) -> str:
    """SQLAlchemy needs the driver named; users may give plain libpq URLs. Only PostgreSQL is served."""
    if not _POSTGRES_SCHEME.match(url):
        raise DatabaseError(
            f"{safe_url(url)!r} is not a PostgreSQL URL: give postgresql://USER:PASSWORD@HOST:PORT/DATABASE "
            "in --database-url / IWAN_DATABASE_URL, or unset both to use the embedded PostgreSQL"
        )
    return _POSTGRES_SCHEME.sub("postgresql+psycopg://", url)


def database_url(url: str | None = None, *, settings: Settings | None = None) -> str:
    """The URL in force: `url`, else the settings' database URL, else the embedded server's under
    the settings' home. Given no settings, they are read from the environment (IWAN_DATABASE_URL,
    IWAN_HOME): an entry point."""
    settings = settings or config.settings()
    configured = url or settings.database_url
    if configured:
        return _sqlalchemy_url(configured)
    return _embedded_uri(_cluster(settings), settings.connect_timeout)


def safe_url(text: str) -> str:
    """`text` (a URL, a key=value DSN, or a message holding them) with every password hidden."""
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _PASSWORD_PARAMETER.sub(lambda m: f"{m['key']}***", text)


def _connect_args(connect_timeout: int) -> dict:
    # libpq waits forever for a server that accepts but never answers; this bounds it.
    return {"connect_timeout": connect_timeout}


def make_engine(url: str | None = None, *, settings: Settings | None = None) -> Engine:
    """An engine on `url`, else the settings' database (an external PostgreSQL, or the embedded
    server under their home); connection failures become DatabaseError. Given no settings, they
    are read from the environment (IWAN_DATABASE_URL, else the embedded server): an entry point.

    A dropped connection is replaced on its next use (pool_pre_ping): an external server that
    restarted is reconnected to; an embedded one that stopped is started again first."""
    settings = settings or config.settings()
    resolved = database_url(url, settings=settings)
    try:
        engine = sa.create_engine(resolved, pool_pre_ping=True, connect_args=_connect_args(settings.connect_timeout))
        if not (url or settings.database_url):
            cluster = _cluster(settings)
            sa.event.listen(engine, "do_connect", _Reviving(cluster, _embedded_server(cluster, settings.connect_timeout)))
        with engine.connect():
            pass
    except (sa.exc.DBAPIError, sa.exc.ArgumentError, ValueError) as err:
        reason = getattr(err, "orig", None) or err
        detail = "; ".join(line.strip() for line in str(reason).splitlines() if line.strip())
        raise DatabaseError(
            f"cannot connect to {safe_url(resolved)}: {safe_url(detail)}. Check --database-url / "
            "IWAN_DATABASE_URL, or unset both to use the embedded PostgreSQL."
        ) from None
    return engine
