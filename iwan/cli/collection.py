"""`iwan collection`: create, list, show and drop collections (named, searchable image sets)."""

from __future__ import annotations

import click

from iwan.cli.common import CliContext, emit_json, pass_context
from iwan.config import (
    DEFAULT_PREDICTOR,
    DEFAULT_TOP_IWK,
    DEFAULT_TOP_WWK,
    MAX_TOP_IWK,
    USF_SOURCE,
)


@click.group()
def collection() -> None:
    """Collections: a data set split (or an empty start), its word predictor and hash model."""


@collection.command()
@click.argument("name")
@click.option("--dataset", help="Start from this registered data set's split (omit both for an empty start).")
@click.option("--split", help="... this split.")
@click.option("--predictor", default=DEFAULT_PREDICTOR, show_default=True,
              help="Word predictor whose stored predictions name the images.")
@click.option("--model", "old_predictor", hidden=True, help="Deprecated alias of --predictor.")
@click.option("--hash-model", help="Hash model (checkpoint IWAN_HOME/models/NAME/best.pt, codes stored under NAME).")
@click.option("--top-iwk", type=click.IntRange(1, MAX_TOP_IWK), default=DEFAULT_TOP_IWK, show_default=True,
              help="Words per image.")
@click.option("--top-wwk", type=click.IntRange(min=1), default=DEFAULT_TOP_WWK, show_default=True,
              help="Associates per cue word.")
@click.option("--strength", type=click.Choice(["forward", "backward", "max"]), default="forward", show_default=True)
@click.option("--source", default=USF_SOURCE, show_default=True, help="Norm set.")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def create(ctx: CliContext, name, dataset, split, predictor, old_predictor, hash_model, top_iwk, top_wwk, strength, source,
           as_json) -> None:
    """Create collection NAME and save its first snapshot."""
    from iwan.collections.live import create_collection

    if old_predictor is not None:
        click.echo("iwan: --model is deprecated; use --predictor", err=True)
        predictor = old_predictor
    info = create_collection(ctx.engine(), name, predictor, dataset=dataset, split=split, hash_model=hash_model,
                             settings=ctx.settings, progress=not as_json, top_iwk=top_iwk, top_wwk=top_wwk, strength=strength, source=source)
    if as_json:
        emit_json(info.as_dict())
        return
    start = f"{info.dataset}/{info.split}" if info.dataset else "an empty start"
    click.echo(f"collection {info.name}: {info.size:,} images from {start}, words by {info.predictor}"
               f"{f', hashes by {info.hash_model}' if info.hash_model else ''}; methods {', '.join(info.methods)}")


@collection.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def list_(ctx: CliContext, as_json) -> None:
    """Every collection with its size and models."""
    from iwan.collections.live import list_collections

    infos = list_collections(ctx.engine())
    if as_json:
        emit_json([info.as_dict() for info in infos])
        return
    if not infos:
        click.echo("no collections: create one with `iwan collection create NAME`")
    for info in infos:
        click.echo(f"{info.name:<20} {info.size:>9,} images  {info.predictor:<20} {info.hash_model or '-':<16} "
                   f"{', '.join(info.methods)}")


@collection.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def show(ctx: CliContext, name, as_json) -> None:
    """One collection: its settings, size, latest change and snapshot."""
    from iwan.collections.live import collection_details

    details = collection_details(ctx.engine(), name, settings=ctx.settings)
    if as_json:
        emit_json(details)
        return
    for key, value in details.items():
        click.echo(f"{key:<16} {value if value is not None else '-'}")


@collection.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def drop(ctx: CliContext, name, as_json) -> None:
    """Delete collection NAME, its uploaded images and its snapshot (data set images stay)."""
    from iwan.collections.live import drop_collection

    drop_collection(ctx.engine(), name, settings=ctx.settings)
    if as_json:
        emit_json({"dropped": name})
    else:
        click.echo(f"collection {name} dropped")
