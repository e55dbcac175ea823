"""`iwan evaluate` through the retriever registry ranks exactly as the underlying indexes do when
driven directly, as the evaluation did before the registry: corpus positions in index order, the
IWAN of the split's predictions, the cosine and Hamming indexes over its embeddings and codes, the
validated fusion weight. Same rankings, same scores, same metrics.

The registry breaks ties by the lower database id where the old path broke them by the lower
position; registered splits get their ids in position order (as here, and for CIFAR-10), so the
two agree."""

from __future__ import annotations

import numpy as np
import pytest
from test_evaluate import spec, toy_database  # noqa: F401  (the fixture)

from hashing.cells import CellCosineIndex
from hashing.search import ExhaustiveCosineIndex
from iwan.db.codes import load_codes
from iwan.db.norms import association_arrays
from iwan.db.predictions import load_predictions
from iwan.evaluation import metrics
from iwan.evaluation.runs import SWEEP_K, VALIDATION_QUERIES, run, score, stored_digest, workload
from iwan.network.graph import build_graph
from iwan.network.index import IwanIndex
from iwan.network.saved import class_words, word_mapping
from iwan.retrieval import fusion

K = (1, 5, 6, 20)


def direct_rankings(engine, evaluation, k):
    """Every method's ranking of the query split, in corpus positions, from the indexes themselves."""
    work = workload(engine, evaluation)
    assert (np.diff(work.corpus.ids) > 0).all()
    corpus_split, query_split = evaluation.corpus_split, evaluation.query_split
    associations = association_arrays(engine)
    stored = load_predictions(engine, evaluation.predictor, "toy10", corpus_split, top=evaluation.top_iwk)
    mapping = word_mapping(associations.words, stored.categories)
    graph = build_graph(associations, class_words(mapping.word_ids, stored.class_indices), stored.probabilities,
                        top_wwk=evaluation.top_wwk, strength=evaluation.strength)
    iwan = IwanIndex(graph)  # ids 0..n-1: corpus positions
    embeddings, codes = load_codes(engine, evaluation.hash_model, work.corpus.ids)
    exhaustive, hashes = ExhaustiveCosineIndex(), CellCosineIndex()
    exhaustive.add(None, embeddings)
    hashes.add(None, embeddings, codes)

    def searches(split, query_ids, exclude, depth):
        predicted = load_predictions(engine, evaluation.predictor, "toy10", split, top=evaluation.top_iwk)
        words = class_words(mapping.word_ids, predicted.class_indices)
        at = {int(i): p for p, i in enumerate(predicted.ids)}
        rows = [at[int(i)] for i in query_ids]
        q_embeddings, _ = load_codes(engine, evaluation.hash_model, query_ids)
        return {
            "iwan": iwan.search(words[rows], predicted.probabilities[rows], depth, exclude=exclude),
            "exhaustive": exhaustive.search(q_embeddings, depth, exclude=exclude),
            "hashes": hashes.search(q_embeddings, depth, exclude=exclude),
        }

    rankings = searches(query_split, work.queries.ids, work.exclude, k)
    deeper = searches(query_split, work.queries.ids, work.exclude, 2 * k)
    # The weighted fusion's IWAN weight, chosen on corpus images outside the queries.
    taken = set(work.exclude[work.exclude >= 0].tolist())
    free = [p for p in range(len(work.corpus.ids)) if p not in taken]
    rows = np.sort(np.random.default_rng(0).choice(free, size=min(VALIDATION_QUERIES, len(free)), replace=False))
    validation = searches(corpus_split, work.corpus.ids[rows], rows, 2 * SWEEP_K)
    labels = work.corpus.fine_labels[rows]
    histogram = metrics.label_histogram(work.corpus.fine_labels, work.similarity.shape[0])

    def mhp(ids):
        retrieved = metrics.labels_of(ids, work.corpus.fine_labels)
        return float(metrics.mhp_at_k(retrieved, labels, work.similarity, histogram, SWEEP_K, query_in_corpus=True))

    weight, _ = fusion.choose_weight(validation["iwan"], validation["hashes"], mhp, SWEEP_K)
    members = [deeper["iwan"], deeper["hashes"]]
    rankings["fused-weighted"] = fusion.fuse(members, k, rule="weighted", weights=(weight, 1.0 - weight))
    rankings["fused-rrf"] = fusion.fuse(members, k, rule="rrf")
    return work, rankings, weight


def cached_ranking(engine, evaluation, out, method, weight=None):
    key = evaluation.key(method, stored_digest(engine, evaluation))
    if method == "fused":
        key += f"-{weight}"
    with np.load(out / "cache" / f"{key}.npz") as saved:
        return saved["scores"], saved["ids"]


@pytest.mark.parametrize("query_split, limit_queries", [("test", None), ("train", 30)])
def test_registry_evaluation_ranks_as_the_indexes_do(toy_database, tmp_path, query_split, limit_queries):  # noqa: F811
    """The test split queries the train split; then the train split queries itself, each query
    left out of its own results (the other 30 images choose the fusion weight)."""
    evaluation = spec(query_split=query_split, ks=K, limit_queries=limit_queries)
    results = run(toy_database, evaluation, tmp_path / "weighted", progress=False)
    work, expected, weight = direct_rankings(toy_database, evaluation, max(K))
    # Hashes are perfect on the toy data, so validation picks IWAN weight 0 (the grid's first best).
    assert weight == 0.0 and results["metadata"]["fusion"]["iwan_weight"] == weight
    rrf = spec(query_split=query_split, ks=K, limit_queries=limit_queries, fusion="rrf")
    rrf_results = run(toy_database, rrf, tmp_path / "rrf", progress=False)
    for method, label, evaluated, out, result in [
        ("iwan", "IWAN", evaluation, tmp_path / "weighted", results),
        ("exhaustive", "exhaustive cosine", evaluation, tmp_path / "weighted", results),
        ("hashes", "hashes (cosine in cells)", evaluation, tmp_path / "weighted", results),
        ("fused-weighted", "fused (weighted)", evaluation, tmp_path / "weighted", results),
        ("fused-rrf", "fused (rrf)", rrf, tmp_path / "rrf", rrf_results),
    ]:
        scores, ids = cached_ranking(toy_database, evaluated, out, method.split("-")[0],
                                     weight if method == "fused-weighted" else None)
        want_scores, want_ids = expected[method]
        np.testing.assert_array_equal(ids, want_ids, err_msg=method)
        np.testing.assert_array_equal(scores, want_scores, err_msg=method)
        assert result["metrics"][label] == score(work, expected[method], K), method
    if query_split == "train":
        assert (expected["iwan"][1] != np.arange(len(work.queries.ids))[:, None]).all()
