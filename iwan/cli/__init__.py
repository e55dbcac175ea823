"""The `iwan` command line."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
from types import FrameType

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


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
"""How services are stopped (systemd, Docker and Kubernetes send SIGTERM; a closed terminal SIGHUP):
each stops a command the way Ctrl-C (SIGINT) does."""
_stopped_by: int | None = None


def _stop_like_ctrl_c(signum: int, frame: FrameType | None) -> None:
    """SIGTERM or SIGHUP: do what Ctrl-C does, so that the same clean-up runs (`iwan serve`'s own
    shutdown, which saves the collections' snapshots; then, at exit, this process leaves the
    embedded server's users and the last one stops it). Killed by the signal's default action
    instead, the process would skip its exit hooks and leave PostgreSQL running."""
    global _stopped_by
    _stopped_by = _stopped_by or signum
    interrupt = signal.getsignal(signal.SIGINT)
    if callable(interrupt) and interrupt is not signal.default_int_handler:
        interrupt(signal.SIGINT, frame)  # a server's graceful shutdown (uvicorn's), which re-raises it after
        return
    raise KeyboardInterrupt


def _catch_stop_signals() -> None:
    """Stop on SIGTERM and SIGHUP like on Ctrl-C; a signal ignored from the start (nohup) stays ignored."""
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) == signal.SIG_DFL:
            signal.signal(signum, _stop_like_ctrl_c)
    # Registered before any command runs, so that it runs after their exit hooks.
    atexit.register(_end_by_the_signal, os.getpid())


def _end_by_the_signal(pid: int) -> None:
    """The last exit hook of a command stopped by SIGTERM or SIGHUP: now that the clean-up has
    run, end by the signal's default action, as uvicorn does, since supervisors tell a stop from
    a failure that way (systemd takes a death by SIGTERM for a clean stop, exit status 143 for a
    failure)."""
    if _stopped_by is None or os.getpid() != pid:
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    signal.signal(_stopped_by, signal.SIG_DFL)
    os.kill(pid, _stopped_by)


def main() -> None:
    """Entry point: known errors become one line on stderr and a non-zero exit; SIGTERM and
    SIGHUP stop it as Ctrl-C does, and it then ends by that signal."""
    from iwan.cli.common import EXPECTED_ERRORS, one_line

    _catch_stop_signals()
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        _exit_if_stopped()
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
    _exit_if_stopped()  # a server that shut down on the signal returns normally


def _exit_if_stopped() -> None:
    """A command stopped by a signal exits (and `_end_by_the_signal` ends it by that signal)."""
    if _stopped_by is not None:
        click.echo(f"iwan: stopped by {signal.Signals(_stopped_by).name}", err=True)
        sys.exit(128 + _stopped_by)  # the status a shell reports for it, where the signal could not end it
