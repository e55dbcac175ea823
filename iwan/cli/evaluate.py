"""`iwan evaluate`: IWAN, exhaustive, hashes and fusion on the same queries, into a report."""

from __future__ import annotations

from pathlib import Path

import click

from iwan.cli.common import CliContext, deprecated_option, emit_json, pass_context
from iwan.config import (
    DEFAULT_KS,
    DEFAULT_PREDICTOR,
    DEFAULT_STRENGTH,
    DEFAULT_TOP_IWK,
    DEFAULT_TOP_WWK,
    EVALUATION_FUSION_RULE,
    FUSION_RULES,
    MAX_TOP_IWK,
    METHODS,
    STRENGTHS,
)


def _int_list(ctx, param, value: str) -> tuple[int, ...]:
    try:
        return tuple(sorted({int(v) for v in value.split(",") if v.strip()}))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers") from None


@click.command()
@click.option("--dataset", "spec", required=True, help="Data set spec (cifar10, cifar100[:PATH], imagefolder:PATH).")
@click.option("--corpus", "corpus_split", default="train", show_default=True, help="Split searched.")
@click.option("--queries", "query_split", default="test", show_default=True,
              help="Split of the queries; the corpus split itself leaves each query out of its results.")
@click.option("--methods", default=",".join(METHODS), show_default=True,
              help="Comma-separated retrieval methods (any registered one, e.g. hashes-pg).")
@click.option("--k", "ks", default=",".join(map(str, DEFAULT_KS)), show_default=True, callback=_int_list)
@click.option("--limit-queries", type=click.IntRange(min=1), help="Only the first N queries.")
@click.option("--limit-corpus", type=click.IntRange(min=1), help="Only the first N corpus images.")
@click.option("--predictor", help=f"Whose stored word predictions IWAN uses [default: {DEFAULT_PREDICTOR}].")
@deprecated_option("--model", "--predictor", "old_model")
@click.option("--hash-model", help="Name of the stored hash codes (from `iwan hash encode`).")
@click.option("--top-iwk", type=click.IntRange(1, MAX_TOP_IWK), default=DEFAULT_TOP_IWK, show_default=True)
@click.option("--top-wwk", type=click.IntRange(min=1), default=DEFAULT_TOP_WWK, show_default=True)
@click.option("--strength", type=click.Choice(STRENGTHS), default=DEFAULT_STRENGTH, show_default=True)
@click.option("--fusion", type=click.Choice(FUSION_RULES), default=EVALUATION_FUSION_RULE, show_default=True,
              help="The fusion rule. weighted: min-max scores, IWAN weight chosen on validation images of the corpus.")
@click.option("--hierarchy", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Class hierarchy (parent-child pairs); default data/<dataset>/parent-child.txt.")
@click.option("--sweep/--no-sweep", default=True, show_default=True, help="IWAN at topIWK 1..10 too.")
@click.option("--gallery/--no-gallery", default=True, show_default=True, help="A picture of example queries.")
@click.option("--examples", "example_counts", callback=_int_list, default="",
              help="Queries of several examples instead: each query image with n-1 others of its class, for each n "
                   "listed (e.g. 1,3,5; 1 is always measured); README \"Queries of several examples, measured\".")
@click.option("--negatives", "negative_counts", callback=_int_list, default="",
              help="With --examples: also with m negative examples of the most confused class, for each m listed.")
@click.option("--seed", type=int, default=0, show_default=True, help="With --examples: the seed of the examples drawn.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Report folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@pass_context
def evaluate(ctx: CliContext, spec, corpus_split, query_split, methods, ks, limit_queries, limit_corpus, predictor,
             old_model, hash_model, top_iwk, top_wwk, strength, fusion, hierarchy, sweep, gallery, example_counts,
             negative_counts, seed, out, as_json) -> None:
    """Score every method by mAP@k, mHP@k (the original's mAHP@k), Barz mAHP@k and time; with
    --examples, on queries of several examples."""
    from iwan.datasets.loaders import load_dataset, registered_name
    from iwan.evaluation.runs import EvaluationSpec, run

    predictor = predictor or old_model or DEFAULT_PREDICTOR
    if negative_counts and not example_counts:
        raise click.UsageError("--negatives needs --examples (the numbers of positive examples measured)")
    if any(n < 1 for n in example_counts) or any(m < 0 for m in negative_counts):
        raise click.BadParameter("--examples counts must be >= 1 and --negatives counts >= 0")
    # Queries of examples read only what the store holds (no gallery): the images are not loaded.
    corpus = None if example_counts else load_dataset(spec, corpus_split, limit=limit_corpus, settings=ctx.settings)
    evaluation = EvaluationSpec(
        dataset=corpus.name if corpus is not None else registered_name(spec), corpus_split=corpus_split,
        query_split=query_split, methods=tuple(m.strip() for m in methods.split(",") if m.strip()), ks=ks,
        limit_queries=limit_queries, limit_corpus=limit_corpus, predictor=predictor, hash_model=hash_model,
        top_iwk=top_iwk, top_wwk=top_wwk, strength=strength, fusion=fusion, hierarchy=hierarchy, sweep=sweep,
    )
    if corpus is None:
        from iwan.evaluation.examples import run_examples

        measured = run_examples(ctx.engine(), evaluation, out, example_counts, negative_counts, seed,
                                progress=not as_json)
        if as_json:
            emit_json(measured)
            return
        click.echo(f"report written to {out / 'report.md'}")
        for note in measured["notes"]:
            click.echo(note)
        return
    images = None
    if gallery:
        queries = corpus if query_split == corpus_split else load_dataset(spec, query_split, limit=limit_queries,
                                                                          settings=ctx.settings)
        images = (corpus.images, queries.images)
    results = run(ctx.engine(), evaluation, out, progress=not as_json, gallery_images=images)
    if as_json:
        emit_json(results)
        return
    click.echo(f"report written to {out / 'report.md'}")
    k = 20 if 20 in ks else max(ks)
    for method, table in results["metrics"].items():
        latency = results["latency"][method]
        click.echo(
            f"{method:<28} mAP@{k} {100 * table['mAP'][k]:5.1f}%  mHP@{k} {100 * table['mHP (original mAHP)'][k]:5.1f}%  "
            f"median {latency['median_ms']:.2f} ms/query"
        )
