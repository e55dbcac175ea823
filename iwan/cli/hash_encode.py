"""`iwan hash encode`: store a split's codes and embeddings from a trained hash network."""

from __future__ import annotations

from pathlib import Path

import click

from iwan.cli.common import CliContext, emit_json, pass_context
from iwan.config import BACKENDS


@click.command("encode")
@click.option("--dataset", "spec", required=True, help="cifar100, cifar100:PATH, cifar10 or imagefolder:PATH.")
@click.option("--split", required=True)
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N images.")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A checkpoint written by `iwan hash train` (best.pt).")
@click.option("--name", "model_name", required=True, help="The hash model's name: its codes are stored under it.")
@click.option("--backend", type=click.Choice(BACKENDS), default="onnx", show_default=True,
              help="How backbone features are computed when the network uses cached ones.")
@click.option("--batch-size", type=click.IntRange(min=1),
              help="Images per network pass (and per task on Ray) [default: 1024].")
@click.option("--ray", "ray_address", metavar="ADDRESS",
              help="Encode on the Ray cluster at ADDRESS (its head's host:port) [default: IWAN_RAY_ADDRESS].")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def encode(ctx: CliContext, spec, split, limit, checkpoint, model_name, backend, batch_size, ray_address,
           as_json) -> None:
    """Binarise the hash layer (48-bit codes) and store codes and embeddings in PostgreSQL."""
    settings = ctx.settings
    address = ray_address or settings.ray_address
    if address:
        from iwan.collections import distributed
        from iwan.datasets.loaders import list_dataset

        listing = list_dataset(spec, split, limit=limit, settings=settings)
        try:
            with distributed.Cluster(address) as cluster:
                summary = distributed.encode_split(ctx.engine(), cluster, checkpoint, listing, model_name,
                                                   backend=backend, batch_size=batch_size, progress=not as_json,
                                                   settings=settings)
        except distributed.ClusterError as err:
            raise click.ClickException(str(err)) from None
    else:
        from iwan.collections.encode import encode_split
        from iwan.datasets.loaders import load_dataset

        dataset = load_dataset(spec, split, limit=limit, settings=settings)
        summary = encode_split(ctx.engine(), checkpoint, dataset, model_name, backend=backend, progress=not as_json,
                               batch_size=batch_size, settings=settings)
    if as_json:
        emit_json(summary.as_dict())
    else:
        click.echo(
            f"{summary.dataset}/{summary.split}: {summary.images:,} images encoded by {summary.model} "
            f"({summary.embedding_dim}-d embeddings, {summary.distinct_codes:,} distinct 48-bit codes"
            f"{', class predictions stored' if summary.predictions_stored else ''})"
        )
