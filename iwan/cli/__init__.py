"""The `iwan` command line."""

from __future__ import annotations

import logging
import os
import sys

import click

from iwan.cli.collection import collection
from iwan.cli.common import CliContext
from iwan.cli.data import data
from iwan.cli.db import db
from iwan.cli.evaluate import evaluate
from iwan.cli.hash import hash_group
from iwan.cli.images import images
from iwan.cli.index import index
from iwan.cli.norms import norms
from iwan.cli.predict import predict
from iwan.cli.search import search
from iwan.cli.serve import serve


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--database-url",
    envvar="IWAN_DATABASE_URL",
    help="PostgreSQL URL (default: IWAN_DATABASE_URL, else the embedded server under IWAN_HOME).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log progress details to stderr.")
@click.pass_context
def cli(ctx: click.Context, database_url: str | None, verbose: bool) -> None:
    """iwan: semantic image retrieval with image-word association networks and semantic hashes."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    ctx.obj = CliContext(database_url=database_url)


for command in (db, data, norms, predict, index, search, evaluate, hash_group, collection, images, serve):
    cli.add_command(command)


def main() -> None:
    """Entry point: known errors become one line on stderr and a non-zero exit."""
    from iwan.cli.common import EXPECTED_ERRORS, one_line

    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except EXPECTED_ERRORS as err:
        if os.environ.get("IWAN_DEBUG"):
            raise
        click.echo(f"iwan: error: {one_line(err)}", err=True)
        sys.exit(1)
