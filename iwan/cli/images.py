"""`iwan images`: add image files to a collection, or remove images from it."""

from __future__ import annotations

from pathlib import Path

import click

from iwan.cli.common import CliContext, emit_json, pass_context


@click.group()
def images() -> None:
    """Images of collections, added and removed without a rebuild."""


@images.command()
@click.argument("name")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--label", help="A label recorded with every image added.")
@click.option("--ray", "ray_address", metavar="ADDRESS",
              help="Decode and encode on the Ray cluster at ADDRESS (its head's host:port) [default: IWAN_RAY_ADDRESS].")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def add(ctx: CliContext, name, paths, label, ray_address, as_json) -> None:
    """Add image files (or every file under folders) to collection NAME.

    Each is decoded, predicted with the collection's predictor, encoded with its hash model and
    stored with its bytes; every batch commits whole or not at all. Files that are not images
    are skipped with the reason; the same bytes are stored once."""
    from iwan.collections import ingest as uploads
    from iwan.db import collections as store

    engine = ctx.engine()
    collection = store.get(engine, name)
    files = list(uploads.expand_paths(paths))
    address = ray_address or ctx.settings.ray_address
    if address:
        from iwan.collections import distributed

        try:
            with distributed.Cluster(address) as cluster:
                report = distributed.add_paths(engine, cluster, name, files, distributed.PredictorSpec(collection.predictor),
                                               label, progress=not as_json, settings=ctx.settings)
        except distributed.ClusterError as err:
            raise click.ClickException(str(err)) from None
    else:
        report = _add_here(ctx, name, collection, files, label, as_json)
    _show(report, name, as_json)


def _add_here(ctx: CliContext, name, collection, files, label, as_json):
    """The files added in this process, batch after batch."""
    from tqdm import tqdm

    from iwan.collections import ingest as uploads
    from iwan.vision.encoder import Encoder

    engine = ctx.engine()
    encoder = Encoder(collection.predictor, collection.hash_model, settings=ctx.settings)
    report = uploads.AddReport()
    with tqdm(total=len(files), desc=f"add to {name}", unit="file", disable=as_json or len(files) < 2) as bar:
        for start in range(0, len(files), uploads.BATCH_SIZE):
            chunk = files[start : start + uploads.BATCH_SIZE]
            readable = []
            for path in chunk:
                try:
                    readable.append((str(path), path.read_bytes()))
                except OSError as err:
                    report.skipped.append((str(path), f"unreadable ({err.strerror or err})"))
            part = uploads.add_files(engine, name, readable, encoder, label, settings=ctx.settings)
            report.added += part.added
            report.skipped += part.skipped
            report.near_duplicates += part.near_duplicates
            bar.update(len(chunk))
    return report


def _show(report, name: str, as_json: bool) -> None:
    if as_json:
        emit_json(report.as_dict())
        return
    for file, reason in report.skipped:
        click.echo(f"skipped {file}: {reason}", err=True)
    for file, image_id, of in report.near_duplicates:
        click.echo(f"near-duplicate {file} (image {image_id}): nearly the same as image {of} of {name!r}", err=True)
    ids = [i for i, _ in report.added]
    shown = f" (ids {ids[0]}..{ids[-1]})" if len(ids) > 1 else f" (id {ids[0]})" if ids else ""
    click.echo(f"added {len(ids)} image{'s' * (len(ids) != 1)} to {name}{shown}; skipped {len(report.skipped)}")


@images.command()
@click.argument("name")
@click.argument("image_ids", nargs=-1, required=True, type=click.IntRange(min=0))
@click.option("--json", "as_json", is_flag=True)
@pass_context
def remove(ctx: CliContext, name, image_ids, as_json) -> None:
    """Remove images (by id) from collection NAME; its own uploads are deleted with their files."""
    from iwan.collections import ingest as uploads

    seq = uploads.remove(ctx.engine(), name, list(image_ids), image_dir=ctx.settings.image_dir)
    if as_json:
        emit_json({"removed": sorted(set(image_ids)), "collection": name, "change": seq})
    else:
        click.echo(f"removed {len(set(image_ids))} image{'s' * (len(set(image_ids)) != 1)} from {name}")
