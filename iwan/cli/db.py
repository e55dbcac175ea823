"""`iwan db`: schema migrations and status."""

from __future__ import annotations

import click
import sqlalchemy as sa

from iwan.cli.common import CliContext, emit_json, pass_context
from iwan.db import embedded, migrate
from iwan.db.engine import safe_url
from iwan.db.norms import loaded_sources

COUNTED_TABLES = (
    "sources",
    "words",
    "associations",
    "images",
    "predictions",
    "hash_codes",
)


@click.group()
def db() -> None:
    """Database schema and status."""


@db.command()
@click.argument("revision", default="head")
@pass_context
def upgrade(ctx: CliContext, revision: str) -> None:
    """Apply migrations up to REVISION (default: head)."""
    engine = ctx.engine(migrated=False)
    migrate.upgrade(engine, revision)
    click.echo(f"schema at revision {migrate.current_revision(engine)}")


@db.command()
@click.argument("revision")
@pass_context
def downgrade(ctx: CliContext, revision: str) -> None:
    """Revert migrations down to REVISION ('base' removes every table)."""
    engine = ctx.engine(migrated=False)
    migrate.downgrade(engine, revision)
    click.echo(f"schema at revision {migrate.current_revision(engine) or 'base'}")


@db.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@pass_context
def status(ctx: CliContext, as_json: bool) -> None:
    """The URL (password hidden), the schema revision, and row counts; for the embedded server
    also its process id and data folder (both null for an external server)."""
    engine = ctx.engine(migrated=False)
    pid, data_dir = None, None
    if ctx.settings.database_url is None:
        pgdata = ctx.settings.pgdata.resolve()
        pid, data_dir = embedded.server_pid(pgdata), str(pgdata)
    with engine.connect() as conn:
        existing = set(sa.inspect(conn).get_table_names())
        counts = {
            table: conn.scalar(sa.text(f"SELECT count(*) FROM {table}"))
            for table in COUNTED_TABLES
            if table in existing
        }
        sources = loaded_sources(conn) if "sources" in existing else []
    report = {
        "url": safe_url(str(engine.url)),
        "pid": pid,
        "data_dir": data_dir,
        "revision": migrate.current_revision(engine),
        "head": migrate.head_revision(engine),
        "counts": counts,
        "sources": sources,
    }
    if as_json:
        emit_json(report)
        return
    click.echo(f"database  {report['url']}")
    if data_dir is not None:
        click.echo(f"embedded  {data_dir} (server pid {pid})")
    click.echo(f"revision  {report['revision'] or 'none'} (head {report['head']})")
    for table, count in counts.items():
        click.echo(f"{table:<13} {count:>10,}")
    for source in sources:
        click.echo(f"source {source['name']}: loaded {source['loaded_at']:%Y-%m-%d %H:%M}, sha256 {source['checksum'][:12]}")
