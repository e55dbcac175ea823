"""`iwan search`: the images of a saved IWAN index nearest to a query, by any retrieval method."""

from __future__ import annotations

from pathlib import Path

import click

from iwan.cli.common import CliContext, deprecated_option, emit_json, pass_context
from iwan.config import BACKENDS, DEFAULT_K

DEFAULT_METHOD = "iwan"


@click.command()
@click.option("--image", type=click.Path(path_type=Path), help="A query image file.")
@click.option("--dataset", "query_dataset", help="Query by a data set image: the data set spec ...")
@click.option("--split", "query_split", help="... its split ...")
@click.option("--position", "query_position", type=click.IntRange(min=0), help="... and its position in the split.")
@deprecated_option("--index", "--position", "old_index", type=click.IntRange(min=0))
@click.option("--words", help='A text query with weights, e.g. "cat:0.8,dog:0.2".')
@click.option("--index-name", help="Name of the saved IWAN index whose images are searched (default: the latest built).")
@deprecated_option("--corpus", "--index-name", "old_corpus")
@click.option("--method", default=DEFAULT_METHOD, show_default=True,
              help="Retrieval method: iwan, exhaustive, hashes, fused, hashes-pg, exhaustive-pg (all but iwan "
                   "need --hash-model and a registered image as the query).")
@click.option("--hash-model", help="Name of the stored hash codes the hash methods read (from `iwan hash encode`).")
@click.option("--k", type=click.IntRange(min=1), default=DEFAULT_K, show_default=True)
@click.option("--backend", type=click.Choice(BACKENDS), default=BACKENDS[0], show_default=True,
              help="How a query image is classified.")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def search(ctx: CliContext, image, query_dataset, query_split, query_position, old_index, words, index_name,
           old_corpus, method, hash_model, k, backend, as_json) -> None:
    """Rank the images of a saved index by their nearness to the query."""
    from iwan.network import saved as indexes
    from iwan.collections.saved import image_query, labelled_hits, retriever_for, split_image_query, text_query

    query_position = old_index if query_position is None else query_position
    index_name = old_corpus if index_name is None else index_name
    by_split = (query_dataset, query_split, query_position)
    given = [image is not None, any(v is not None for v in by_split), words is not None]
    if sum(given) != 1:
        raise click.UsageError("give exactly one query: --image PATH, --dataset D --split S --position N, or --words")
    if given[1] and any(v is None for v in by_split):
        raise click.UsageError("a data set query needs all of --dataset, --split and --position")
    built = indexes.BuiltIndex.load(indexes.index_dir(index_name) if index_name is not None else indexes.latest_index())
    engine = ctx.engine()
    retriever = retriever_for(engine, built, method, hash_model)
    reads = set(getattr(retriever, "reads", ()))
    if not given[1] and reads - {"word_ids", "weights"}:
        raise click.UsageError(
            f"the {method} method reads stored embeddings and codes: query it by a registered image "
            "(--dataset D --split S --position N)"
        )
    if words is not None:
        query = text_query(built, words)
    elif image is not None:
        query = image_query(built, image, backend=backend)
    else:
        query = split_image_query(engine, built, query_dataset, query_split, query_position,
                                  fields=reads, hash_model=hash_model, backend=backend)
    hits = labelled_hits(engine, built, retriever, query, k)
    described = query.describe(built)
    result = {
        "index_name": built.meta.name,
        "method": method,
        "query_words": [{"word": w, "weight": round(p, 6)} for w, p in described],
        "unknown_words": list(query.unknown),
        "hits": hits,
    }
    if as_json:
        emit_json(result)
        return
    if described:
        click.echo("query: " + ", ".join(f"{w} ({p:.2f})" for w, p in described))
    if query.unknown:
        click.echo("not in the norms, left out: " + ", ".join(query.unknown))
    for rank, hit in enumerate(hits, start=1):
        where = f"{rank:>3}. {hit['dataset']}/{hit['split']}#{hit['position']:<6} {hit['label']:<18}"
        if "path" in hit:
            click.echo(f"{where} d={hit['distance']:.3f}  {' > '.join(hit['path'])}")
        else:
            click.echo(f"{where} score={hit['score']:.3f}")
    if not hits:
        click.echo("no image is reachable from the query" if method == "iwan" else "no image found")
