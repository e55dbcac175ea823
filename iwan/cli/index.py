"""`iwan index build`: the IWAN of a split, saved for `iwan search`."""

from __future__ import annotations

from dataclasses import asdict

import click

from iwan.cli.common import CliContext, deprecated_option, emit_json, pass_context
from iwan.config import (
    DEFAULT_PREDICTOR,
    DEFAULT_STRENGTH,
    DEFAULT_TOP_IWK,
    DEFAULT_TOP_WWK,
    MAX_TOP_IWK,
    STRENGTHS,
    USF_SOURCE,
)


@click.group()
def index() -> None:
    """IWAN indexes (image-word association networks)."""


@index.command()
@click.option("--dataset", required=True,
              help="Registered data set: cifar100, cifar10, or imagefolder:PATH (known by its resolved path).")
@click.option("--split", required=True)
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N images of the split.")
@click.option("--predictor", help=f"Whose stored predictions name the images [default: {DEFAULT_PREDICTOR}].")
@deprecated_option("--model", "--predictor", "old_model")
@click.option("--top-iwk", type=click.IntRange(1, MAX_TOP_IWK), default=DEFAULT_TOP_IWK, show_default=True,
              help="Words per image.")
@click.option("--top-wwk", type=click.IntRange(min=1), default=DEFAULT_TOP_WWK, show_default=True,
              help="Associates per cue word.")
@click.option("--strength", type=click.Choice(STRENGTHS), default=DEFAULT_STRENGTH,
              show_default=True, help="Which association strength ranks and weighs word-word edges.")
@click.option("--source", default=USF_SOURCE, show_default=True, help="Norm set.")
@click.option("--name", help="Index name: letters, digits, '.', '_', '-' (default DATASET-SPLIT).")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def build(ctx: CliContext, dataset, split, limit, predictor, old_model, top_iwk, top_wwk, strength, source, name,
          as_json) -> None:
    """Build the IWAN of a split's stored predictions and save it under IWAN_HOME/indexes."""
    from iwan.network import saved as indexes

    predictor = predictor or old_model or DEFAULT_PREDICTOR
    if name is not None:
        indexes.index_dir(name, ctx.settings)  # a bad name fails now, not after the build
    built = indexes.build(
        ctx.engine(), predictor, dataset, split, top_iwk=top_iwk, top_wwk=top_wwk,
        strength=strength, source=source, limit=limit, name=name,
    )
    path = built.save(indexes.index_dir(built.meta.name, ctx.settings))
    report = {**asdict(built.meta), "path": str(path)}
    if as_json:
        emit_json(report)
        return
    m = built.meta
    click.echo(
        f"index {m.name}: {m.n_images:,} images, {m.n_words:,} words, {m.n_word_edges:,} word-word edges "
        f"(topIWK {m.top_iwk}, topWWK {m.top_wwk}, {m.strength}) in {m.build_seconds:.1f} s -> {path}"
    )
    if m.unmapped_classes:
        shown = ", ".join(m.unmapped_classes[:8])
        click.echo(f"{len(m.unmapped_classes)} of the model's classes map to no word: {shown}"
                   f"{' ...' if len(m.unmapped_classes) > 8 else ''}")
