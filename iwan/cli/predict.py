"""`iwan predict`: register a split's images and store their classifier word predictions."""

from __future__ import annotations

from pathlib import Path

import click

from iwan.cli.common import CliContext, deprecated_option, emit_json, pass_context
from iwan.config import BACKENDS, DEFAULT_BATCH_SIZE, DEFAULT_PREDICTOR


@click.command()
@click.option("--dataset", "spec", required=True,
              help="cifar100, cifar100:PATH, cifar10 or imagefolder:PATH (registered by its resolved path).")
@click.option("--split", required=True, help="train or test (or a folder's split).")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N images.")
@click.option("--predictor", help=f"resnet50 or efficientnet-lite0 [default: {DEFAULT_PREDICTOR}].")
@deprecated_option("--model", "--predictor", "old_model")
@click.option("--weights", type=click.Path(exists=True, path_type=Path), help="A local state dict for the predictor.")
@click.option("--backend", type=click.Choice(BACKENDS), default="torch", show_default=True,
              help="onnx: ONNX Runtime, several times faster on CPU.")
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH_SIZE, show_default=True)
@click.option("--ray", "ray_address", metavar="ADDRESS",
              help="Decode and predict on the Ray cluster at ADDRESS (its head's host:port) [default: IWAN_RAY_ADDRESS].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_context
def predict(ctx: CliContext, spec, split, limit, predictor, old_model, weights, backend, batch_size, ray_address,
            as_json) -> None:
    """Register a split's images and store each image's top classes (resumable)."""
    settings = ctx.settings
    name = predictor or old_model or DEFAULT_PREDICTOR
    address = ray_address or settings.ray_address
    if address:
        from iwan.collections import distributed
        from iwan.datasets.loaders import list_dataset

        listing = list_dataset(spec, split, limit=limit, settings=settings)
        recipe = distributed.PredictorSpec(name, backend=backend, weights=None if weights is None else str(weights.resolve()))
        try:
            with distributed.Cluster(address) as cluster:
                summary = distributed.predict_split(ctx.engine(), cluster, recipe, listing, batch_size,
                                                    progress=not as_json, settings=settings)
        except distributed.ClusterError as err:
            raise click.ClickException(str(err)) from None
    else:
        from iwan.datasets.loaders import load_dataset
        from iwan.db.predictions import predict_split
        from iwan.vision.predictors import load_predictor

        dataset = load_dataset(spec, split, limit=limit, settings=settings)
        loaded = load_predictor(name, weights=weights, backend=backend, settings=settings)
        summary = predict_split(ctx.engine(), loaded, dataset, batch_size=batch_size, progress=not as_json,
                                cache_dir=settings.cache_dir)
    if as_json:
        emit_json(summary.as_dict())
    else:
        click.echo(
            f"{summary.dataset}/{summary.split}: {summary.images:,} images, {summary.predicted:,} "
            f"predicted by {summary.predictor}, {summary.skipped:,} already done"
        )
