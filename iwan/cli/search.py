"""`iwan search`: the images of a collection (through the one search pipeline the service uses)
or of a saved IWAN index nearest to a query, by any retrieval method."""

from __future__ import annotations

from pathlib import Path

import click

from iwan.cli.common import CliContext, deprecated_option, emit_json, pass_context
from iwan.config import BACKENDS, DEFAULT_K

DEFAULT_METHOD = "iwan"


@click.command()
@click.option("--collection", help="Search this collection, exactly as `iwan serve` does (--image, --words or --image-id).")
@click.option("--image-id", type=click.IntRange(min=0), help="With --collection: query by a stored image (left out of its results).")
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True, help="With --collection: results to skip.")
@click.option("--like", multiple=True, metavar="ID|PATH",
              help="With --collection: a positive example, an image file or a stored image id (repeat for several).")
@click.option("--unlike", multiple=True, metavar="ID|PATH",
              help="With --collection: a negative example, an image file or a stored image id (repeat for several).")
@click.option("--min-score", type=float, help="With --collection: only results scoring at least this (higher is better).")
@click.option("--only-label", "only_labels", multiple=True, metavar="LABEL",
              help="With --collection: only images with this label (repeat for several), before the top k is taken.")
@click.option("--exclude-label", "exclude_labels", multiple=True, metavar="LABEL",
              help="With --collection: no image with this label (repeat for several).")
@click.option("--collapse-duplicates", is_flag=True,
              help="With --collection: near-identical results shown once, with their group's size.")
@click.option("--image", type=click.Path(path_type=Path), help="A query image file.")
@click.option("--dataset", "query_dataset", help="Query by a data set image: the data set spec ...")
@click.option("--split", "query_split", help="... its split ...")
@click.option("--position", "query_position", type=click.IntRange(min=0), help="... and its position in the split.")
@deprecated_option("--index", "--position", "old_index", type=click.IntRange(min=0))
@click.option("--words", help='A text query with weights, e.g. "cat:0.8,dog:0.2".')
@click.option("--index-name", help="Name of the saved IWAN index whose images are searched (default: the latest built).")
@deprecated_option("--corpus", "--index-name", "old_corpus")
@click.option("--method", help="Retrieval method: iwan, exhaustive, hashes, fused, hashes-pg, exhaustive-pg [default: "
                                "the collection's; iwan for a saved index, where all but iwan need --hash-model and a "
                                "registered image as the query].")
@click.option("--hash-model", help="Name of the stored hash codes the hash methods read (from `iwan hash encode`).")
@click.option("--k", type=click.IntRange(min=1), default=DEFAULT_K, show_default=True)
@click.option("--backend", type=click.Choice(BACKENDS), default=BACKENDS[0], show_default=True,
              help="How a query image is classified.")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def search(ctx: CliContext, collection, image_id, offset, like, unlike, min_score, only_labels, exclude_labels,
           collapse_duplicates, image, query_dataset, query_split, query_position, old_index,
           words, index_name, old_corpus, method, hash_model, k, backend, as_json) -> None:
    """Rank the images of a collection or of a saved index by their nearness to the query."""
    cuts = {"min_score": min_score, "labels": only_labels or None, "exclude_labels": exclude_labels or None,
            "collapse_duplicates": collapse_duplicates}
    if collection is not None:
        if any(v is not None for v in (query_dataset, query_split, query_position, old_index, index_name, old_corpus,
                                        hash_model)):
            raise click.UsageError("--collection searches by --image, --words, --image-id or --like only (its own hash model)")
        _search_collection(ctx, collection, image, words, image_id, like, unlike, cuts, method, k, offset, as_json)
        return
    if image_id is not None or offset or like or unlike or any(v for v in cuts.values()):
        raise click.UsageError("--image-id, --offset, --like, --unlike, --min-score, --only-label, --exclude-label "
                               "and --collapse-duplicates need --collection")
    method = method or DEFAULT_METHOD
    from iwan.collections.saved import image_query, labelled_hits, retriever_for, split_image_query, text_query
    from iwan.network import saved as indexes

    query_position = old_index if query_position is None else query_position
    index_name = old_corpus if index_name is None else index_name
    by_split = (query_dataset, query_split, query_position)
    given = [image is not None, any(v is not None for v in by_split), words is not None]
    if sum(given) != 1:
        raise click.UsageError("give exactly one query: --image PATH, --dataset D --split S --position N, or --words")
    if given[1] and any(v is None for v in by_split):
        raise click.UsageError("a data set query needs all of --dataset, --split and --position")
    settings = ctx.settings
    folder = indexes.index_dir(index_name, settings) if index_name is not None else indexes.latest_index(settings)
    built = indexes.BuiltIndex.load(folder)
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
        query = image_query(built, image, backend=backend, settings=settings)
    else:
        query = split_image_query(engine, built, query_dataset, query_split, query_position,
                                  fields=reads, hash_model=hash_model, backend=backend, settings=settings)
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


def _search_collection(ctx: CliContext, name: str, image: Path | None, words: str | None, image_id: int | None,
                       like: tuple[str, ...], unlike: tuple[str, ...], cuts: dict, method: str | None, k: int,
                       offset: int, as_json: bool) -> None:
    """The pipeline `iwan serve` answers with: the same decoder, encoder and result document."""
    from iwan.cli.common import read_query_file
    from iwan.collections.live import LiveCollection
    from iwan.collections.pipeline import Example, SearchRequest
    from iwan.collections.pipeline import search as run_search
    from iwan.vision.decode import UPLOAD_FORMATS, DecodePolicy

    if sum(v is not None for v in (image, words, image_id)) + bool(like) != 1:
        raise click.UsageError("give exactly one query: --image PATH, --words TEXT, --image-id N, or --like ID|PATH ...")
    if like:
        positive = [_example(given, "--like") for given in like]
    else:
        data = read_query_file(image) if image is not None else None
        positive = [Example(image=data, image_name=str(image), text=words, image_id=image_id)]
    negative = [_example(given, "--unlike") for given in unlike]
    request = SearchRequest(positive=positive, negative=negative, method=method, k=k, offset=offset, **cuts)
    policy = DecodePolicy(max_pixels=ctx.settings.max_image_pixels, formats=UPLOAD_FORMATS)
    with LiveCollection.open(ctx.engine(), name, settings=ctx.settings, follow=False) as live:
        result = run_search(live, request, policy)
    if as_json:
        emit_json(result.as_dict())
        return
    if result.words:
        click.echo("query: " + ", ".join(f"{w} ({p:.2f})" for w, p in result.words))
    if result.unknown:
        click.echo("not in the norms, left out: " + ", ".join(result.unknown))
    for hit in result.hits:
        why = hit.explanation
        detail = " > ".join(why["path"]) if "path" in why else ", ".join(
            f"{key} {value}" for key, value in why.items() if not isinstance(value, (list, dict)) and key != "example")
        example = why.get("example")
        if len(request.positive) > 1 and example is not None:
            chosen = request.positive[example]
            detail = f"[like {chosen.image_name if chosen.image is not None else chosen.image_id}] {detail}"
        if why.get("group_size", 1) > 1:
            detail += f"  (+{why['group_size'] - 1} near-duplicates)"
        score = "" if hit.score is None else f"score={hit.score:.3f}"
        click.echo(f"{hit.rank:>3}. image {hit.image_id:<8} {hit.label or '':<18} {score}  {detail}")
    if not result.hits:
        click.echo("no image passed --min-score" if request.min_score is not None else "no image found")


def _example(given: str, option: str):
    """An existing file is an image file; otherwise a whole number is a stored image's id."""
    from iwan.cli.common import read_query_file
    from iwan.collections.pipeline import Example

    if Path(given).expanduser().is_file():
        return Example(image=read_query_file(given), image_name=given)
    if given.isascii() and given.isdigit():
        return Example(image_id=int(given))
    raise click.UsageError(f"{option} {given!r} is neither an existing file nor an image id (a whole number)")
