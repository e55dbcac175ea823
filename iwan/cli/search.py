"""`iwan search`: the images nearest to a query image or words in a built IWAN."""

from __future__ import annotations

from pathlib import Path

import click

from iwan.cli.common import CliContext, emit_json, pass_context
from iwan.config import DEFAULT_K


@click.command()
@click.option("--image", type=click.Path(path_type=Path), help="A query image file.")
@click.option("--dataset", "query_dataset", help="Query by a data set image: the data set spec ...")
@click.option("--split", "query_split", help="... its split ...")
@click.option("--index", "query_index", type=click.IntRange(min=0), help="... and its index in the split.")
@click.option("--words", help='A text query with weights, e.g. "cat:0.8,dog:0.2".')
@click.option("--corpus", help="Name of the built index to search (default: the latest built).")
@click.option("--k", type=click.IntRange(min=1), default=DEFAULT_K, show_default=True)
@click.option("--backend", type=click.Choice(["torch", "onnx"]), default="torch", show_default=True,
              help="How a query image is classified.")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def search(ctx: CliContext, image, query_dataset, query_split, query_index, words, corpus, k, backend, as_json) -> None:
    """Rank the corpus images by their IWAN distance from the query."""
    from iwan import network
    from iwan.query import image_query, labelled_hits, split_image_query, text_query

    by_split = (query_dataset, query_split, query_index)
    given = [image is not None, any(v is not None for v in by_split), words is not None]
    if sum(given) != 1:
        raise click.UsageError("give exactly one query: --image PATH, --dataset D --split S --index I, or --words")
    if given[1] and any(v is None for v in by_split):
        raise click.UsageError("a data set query needs all of --dataset, --split and --index")
    built = network.BuiltIndex.load(network.index_dir(corpus) if corpus is not None else network.latest_index())
    engine = ctx.engine()
    if words is not None:
        query, exclude = text_query(built, words), ()
    elif image is not None:
        query, exclude = image_query(built, image, backend=backend), ()
    else:
        query, exclude = split_image_query(engine, built, query_dataset, query_split, query_index, backend=backend)
    hits = labelled_hits(engine, built, query, k, exclude)
    result = {
        "index": built.meta.name,
        "query_words": [{"word": w, "weight": round(p, 6)} for w, p in query.describe(built)],
        "unknown_words": list(query.query.unknown),
        "hits": hits,
    }
    if as_json:
        emit_json(result)
        return
    click.echo("query: " + ", ".join(f"{w} ({p:.2f})" for w, p in query.describe(built)))
    if query.query.unknown:
        click.echo("not in the norms, left out: " + ", ".join(query.query.unknown))
    for rank, hit in enumerate(hits, start=1):
        click.echo(
            f"{rank:>3}. {hit['dataset']}/{hit['split']}#{hit['index']:<6} {hit['label']:<18} "
            f"d={hit['distance']:.3f}  {' > '.join(hit['path'])}"
        )
    if not hits:
        click.echo("no image is reachable from the query words")
