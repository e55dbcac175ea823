"""`iwan norms`: load word association norms into PostgreSQL and look words up."""

from __future__ import annotations

from pathlib import Path

import click

from iwan.cli.common import CliContext, emit_json, pass_context
from iwan.config import USF_CITATION, USF_SOURCE
from iwan.datasets.fetch import FetchError
from iwan.datasets.usf_download import FOLDER, download_usf, usf_resource
from iwan.db.norms import load_norms, top_targets


@click.group()
def norms() -> None:
    """Word association norms (USF free association norms, Appendix A)."""


@norms.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--source", default=USF_SOURCE, show_default=True, help="Name of the norm set.")
@click.option(
    "--download", is_flag=True, help="Fetch the 8 Appendix A files first (replacing the local copy once all 8 parse)."
)
@click.option(
    "--base-url", default=None, help="Where --download fetches from [default: IWAN_USF_URL, else the USF site]."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_context
def load(
    ctx: CliContext, paths: tuple[Path, ...], source: str, download: bool, base_url: str | None, as_json: bool
) -> None:
    """Load PATHS (folders of Appendix A files, or files); default: the data directory's copy.

    Loading a source again replaces it; a malformed file stops the load and changes nothing.
    """
    settings = ctx.settings
    local = settings.data_dir / FOLDER
    if download:
        if paths:
            raise click.UsageError("give PATHS or --download, not both")
        try:
            download_usf(local, base_url or settings.usf_url, progress=not as_json, timeout=settings.fetch_timeout)
        except FetchError as err:
            raise FetchError(f"{err}; without internet, {usf_resource(settings, base_url).manual}") from None
    if not paths:
        if not local.is_dir():
            raise FileNotFoundError(
                f"no norms files given and none in {local}: run `iwan norms load --download`, "
                f"or put the Cue_Target_Pairs.* files there, or name them: `iwan norms load PATH`"
            )
        paths = (local,)
    engine = ctx.engine()
    summary = load_norms(engine, paths, source=source, citation=USF_CITATION if source == USF_SOURCE else None)
    if as_json:
        emit_json(summary.as_dict())
    else:
        click.echo(
            f"loaded {summary.source}: {summary.pairs:,} pairs, {summary.cues:,} cues, "
            f"{summary.targets:,} targets, {summary.words:,} words in {summary.seconds:.2f} s"
        )


@norms.command()
@click.argument("word")
@click.option("--top", type=click.IntRange(min=1), default=None, help="At most this many targets.")
@click.option("--source", default=USF_SOURCE, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@pass_context
def show(ctx: CliContext, word: str, top: int | None, source: str, as_json: bool) -> None:
    """The targets of cue WORD by forward strength (case-insensitive)."""
    targets = top_targets(ctx.engine(), word, source=source, top=top)
    if as_json:
        emit_json(targets)
        return
    for item in targets:
        click.echo(f"{item['target']:<24} {item['strength']:.3f}")
