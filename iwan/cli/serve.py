"""`iwan serve`: the HTTP retrieval service and its web page."""

from __future__ import annotations

import contextlib
import signal

import click

from iwan.cli.common import CliContext, pass_context
from iwan.config import SERVE_HOST, SERVE_PORT, SERVE_TORCH_THREADS, SHUTDOWN_TIMEOUT_S


@click.command()
@click.option("--host", default=SERVE_HOST, show_default=True,
              help="Address to bind; 127.0.0.1 serves this machine only, 0.0.0.0 every network "
                   "(then name the host names clients use in IWAN_ALLOWED_HOSTS).")
@click.option("--port", type=click.IntRange(0, 65535), default=SERVE_PORT, show_default=True)
@click.option("--collection", "names", multiple=True, metavar="NAME",
              help="A collection to serve (repeatable; default: every collection).")
@click.option("--threads", type=click.IntRange(min=1), default=SERVE_TORCH_THREADS, show_default=True,
              help="Torch threads per request (requests run in parallel, so one each uses the cores best).")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]),
              default="info", show_default=True)
@click.option("--shutdown-timeout", type=click.FloatRange(min=0), metavar="SECONDS", default=SHUTDOWN_TIMEOUT_S,
              show_default=True,
              help="How long the shutdown waits for the collections (one still loading, the snapshots of those "
                   "changed) before stopping without them; keep it under the supervisor's stop timeout")
@pass_context
def serve(ctx: CliContext, host: str, port: int, names: tuple[str, ...], threads: int, log_level: str,
          shutdown_timeout: float) -> None:
    """Serve search over HTTP: the API under /v1, its docs at /docs, the search page at /.

    Writes (adding and removing images) need IWAN_API_KEY set; without it they are refused.
    /readyz answers 503 until every collection is loaded.
    """
    import torch
    import uvicorn

    from iwan.collections.live import list_collections
    from iwan.serve import create_app
    from iwan.serve.allocator import return_large_blocks
    from iwan.serve.app import WILDCARD_HOSTS, server_config

    engine = ctx.engine()
    known = [c.name for c in list_collections(engine)]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise LookupError(
            f"unknown collection {', '.join(map(repr, unknown))}: the database holds "
            f"{', '.join(known) or 'none'}; create one with `iwan collection create`"
        )
    chosen = list(dict.fromkeys(names)) if names else known
    if not chosen:
        raise LookupError("the database holds no collection to serve; create one with `iwan collection create`")
    torch.set_num_threads(threads)
    return_large_blocks()
    app = create_app(engine, load=chosen, settings=ctx.settings, host=host,
                     shutdown_timeout=shutdown_timeout)
    click.echo(f"iwan serve: http://{host}:{port}/ ({', '.join(chosen)}; writes "
               f"{'need the API key' if app.state.service.settings.api_key else 'disabled: IWAN_API_KEY is not set'})",
               err=True)
    if host.strip() in WILDCARD_HOSTS and not app.state.service.settings.allowed_hosts:
        click.echo("iwan serve: requests must name this server as 127.0.0.1 or localhost; set IWAN_ALLOWED_HOSTS "
                   "to the names (or addresses) other machines reach it by", err=True)
    if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:
        # Inherited (nohup, a parent that ignores it) and kept, so that a closed terminal leaves
        # the server running; said here, since a SIGHUP that does nothing looks like a hang.
        click.echo("iwan serve: SIGHUP is ignored, as this process was started (nohup?); stop it with "
                   "SIGTERM or Ctrl-C", err=True)
    server = uvicorn.Server(server_config(app, host, port, log_level=log_level, access_log=log_level == "debug"))
    # As uvicorn.run: the signal that stopped the server is re-raised once its shutdown is done.
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        raise SystemExit(3)  # as uvicorn.run: the server could not start (the port taken, say)
