"""IWAN search speed: the fast search against the networkx reference, on the real USF norms.

    python benchmarks/bench_iwan.py [--n-images 50000] [--queries 200] [--seed 0]

The graph is built from the real USF Appendix A files (parsed by iwan.norms.usf) and the real
ImageNet label words (the 1000 torchvision category names mapped onto the norms by iwan.words).
Without real predictions, each image's top-topIWK classes (4 by default) are sampled like a
classifier's:

* a "true" class t, uniform over the 1000;
* topIWK - 2 confusable classes within 10 places of t in the category list, which follows
  WordNet and so keeps near classes together (terriers beside terriers, trucks beside trucks);
* one unrelated class, more than 10 places away;
* their probabilities from a Dirichlet with weights 5 (true), 2 (first near), 1 (each other
  class) and 1 for a last share that stands for the mass on all other classes: for topIWK 4,
  Dirichlet(5, 2, 1, 1, 1). The classes are then ranked by probability, as a classifier lists
  them. Classes with no word keep their slot and give no edge.

Queries are further images drawn the same way (not in the corpus), searched for the k nearest.
Both searches run the same queries; `identical` says whether every result list (image ids and
distances, and the batch search's rows) agrees exactly. Times are per query, over the queries
that have at least one word (a query whose classes all lack a word has nothing to search). The
last line printed is one JSON object with the numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from iwan.config import DEFAULT_K, DEFAULT_TOP_IWK, DEFAULT_TOP_WWK, settings
from iwan.graph import Associations, build_graph
from iwan.norms.usf import parse_paths
from iwan.search import IwanIndex, Query, networkx_search
from iwan.tv import models
from iwan.words import map_class_names

NEAR = 10  # places in the ImageNet category list that count as "near"


def usf_folder(given: Path | None) -> Path:
    if given is not None:
        return given
    for folder in (
        settings().data_dir / "usf-appendix-a",
        Path(__file__).resolve().parents[2] / "shared" / "data" / "usf-appendix-a",
    ):
        if folder.is_dir():
            return folder
    sys.exit("no USF Appendix A folder found: pass --usf DIR (the Cue_Target_Pairs.* files)")


def sample_predictions(rng: np.random.Generator, n: int, n_classes: int, top_iwk: int):
    """(n, top_iwk) class ids ranked by probability, and their probabilities (see the module doc)."""
    n_near = top_iwk - 2
    if not 1 <= n_near <= 2 * NEAR:
        raise ValueError(f"--top-iwk {top_iwk}: the sampler draws 3 to {2 * NEAR + 2} classes")
    true = rng.integers(0, n_classes, n)
    offsets = np.r_[-NEAR:0, 1 : NEAR + 1]
    picked = offsets[np.argsort(rng.random((n, len(offsets))), axis=1)[:, :n_near]]
    near = true[:, None] + picked
    near = np.where((near < 0) | (near >= n_classes), true[:, None] - picked, near)
    unrelated = (true + NEAR + 1 + rng.integers(0, n_classes - 2 * NEAR - 1, n)) % n_classes
    classes = np.column_stack([true, near, unrelated])
    alpha = [5.0, 2.0] + [1.0] * (n_near - 1) + [1.0, 1.0]
    probabilities = rng.dirichlet(alpha, n)[:, :top_iwk]
    order = np.argsort(-probabilities, axis=1)
    return np.take_along_axis(classes, order, 1), np.take_along_axis(probabilities, order, 1)


def milliseconds(seconds: list[float]) -> float:
    return round(1e3 * statistics.median(seconds), 4)


def timed(search, queries: list[Query]) -> tuple[list, list[float]]:
    """Each query's result, and the seconds of each query that has words."""
    results, seconds = [], []
    for query in queries:
        started = time.perf_counter()
        results.append(search(query))
        if query.word_ids:
            seconds.append(time.perf_counter() - started)
    return results, seconds


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=50_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument(
        "--reference-queries", type=int, default=None,
        help="how many of the queries also go through networkx (default: all)",
    )
    parser.add_argument("--k", type=int, default=DEFAULT_K)
    parser.add_argument("--top-iwk", type=int, default=DEFAULT_TOP_IWK)
    parser.add_argument("--top-wwk", type=int, default=DEFAULT_TOP_WWK)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--usf", type=Path, default=None, help="folder of Cue_Target_Pairs.* files")
    args = parser.parse_args(argv)
    n_reference = min(args.queries, args.reference_queries or args.queries)
    rng = np.random.default_rng(args.seed)

    started = time.perf_counter()
    rows = parse_paths([usf_folder(args.usf)])
    associations = Associations.from_rows((r.cue, r.target, r.fsg, r.bsg) for r in rows)
    categories = models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    mapping = map_class_names(categories, associations.words)
    parse_s = time.perf_counter() - started

    classes, probabilities = sample_predictions(rng, args.n_images, len(categories), args.top_iwk)
    started = time.perf_counter()
    graph = build_graph(associations, mapping.word_ids[classes], probabilities, args.top_wwk)
    index = IwanIndex(graph)
    build_s = time.perf_counter() - started

    query_classes, query_probabilities = sample_predictions(
        rng, args.queries, len(categories), args.top_iwk
    )
    query_words = mapping.word_ids[query_classes]
    queries = [Query.from_weights(w, p) for w, p in zip(query_words, query_probabilities)]

    fast_hits, fast_s = timed(lambda query: index.search_one(query, args.k), queries)
    t = time.perf_counter()
    scores, ids = index.search(query_words, query_probabilities, args.k)
    batch_ms = 1e3 * (time.perf_counter() - t) / args.queries
    batch_agrees = all(
        ids[r, : len(hits)].tolist() == [h.image for h in hits]
        and (ids[r, len(hits):] == -1).all()
        and (-scores[r, : len(hits)]).tolist() == [h.distance for h in hits]
        for r, hits in enumerate(fast_hits)
    )

    started = time.perf_counter()
    nx_graph = graph.to_networkx()
    nx_build_s = time.perf_counter() - started
    reference_hits, nx_s = timed(
        lambda query: networkx_search(nx_graph, graph, query, args.k), queries[:n_reference]
    )
    mismatches = [
        r
        for r, (reference, fast) in enumerate(zip(reference_hits, fast_hits))
        if [(h.image, h.distance) for h in reference] != [(h.image, h.distance) for h in fast]
    ]

    mapped = sum(w is not None for w in mapping.words)
    result = {
        "n_images": args.n_images,
        "n_words": graph.n_words,
        "word_edges": int(len(graph.edge_a)),
        "image_edges": int((graph.image_words >= 0).sum()),
        "queries": args.queries,
        "reference_queries": n_reference,
        "k": args.k,
        "top_iwk": args.top_iwk,
        "top_wwk": args.top_wwk,
        "seed": args.seed,
        "imagenet_classes_mapped": mapped,
        "queries_without_words": sum(not q.word_ids for q in queries),
        "build_s": round(build_s, 3),
        "fast_median_ms": milliseconds(fast_s),
        "fast_max_ms": round(1e3 * max(fast_s), 4),
        "batch_ms_per_query": round(batch_ms, 4),
        "networkx_median_ms": milliseconds(nx_s),
        "speedup": round(statistics.median(nx_s) / statistics.median(fast_s), 1),
        "identical": not mismatches and batch_agrees,
    }
    print(f"USF norms: {len(rows)} rows, {graph.n_words} words, parsed in {parse_s:.2f} s")
    print(mapping.report(examples=5))
    print(
        f"graph: {args.n_images} images, {result['image_edges']} image-word and "
        f"{result['word_edges']} word-word edges; built and indexed in {build_s:.3f} s "
        f"(networkx graph: {nx_build_s:.2f} s)"
    )
    print(
        f"fast search:     median {result['fast_median_ms']:.3f} ms, max {result['fast_max_ms']:.3f} ms "
        f"per query ({len(fast_s)} queries with words, k={args.k}); "
        f"batch {batch_ms:.3f} ms per query"
    )
    print(
        f"networkx search: median {result['networkx_median_ms']:.1f} ms per query "
        f"({len(nx_s)} queries with words)"
    )
    print(f"speedup {result['speedup']}x; identical results: {result['identical']}"
          + (f" (queries differing: {mismatches[:10]})" if mismatches else ""))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
