"""Metrics on hand-computed rankings, plus a brute-force check of the HP ideal."""

from __future__ import annotations

import numpy as np
import pytest

from iwan.evaluation import metrics

# A 3-level hierarchy: root -> {A, B}; A -> classes {0, 1}; B -> classes {2, 3}; height(root) = 2.
# S = 1 - height(lcs) / 2: same class 1, same parent 0.5, only the root in common 0.
S = np.array(
    [
        [1.0, 0.5, 0.0, 0.0],
        [0.5, 1.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.5],
        [0.0, 0.0, 0.5, 1.0],
    ]
)
HISTOGRAM = np.array([2, 3, 1, 4])  # corpus items per class


def test_precision_at_several_k_counts_padding_as_miss():
    retrieved = np.array([[1, 0, 1, -1], [2, 2, 2, 2]])
    p = metrics.precision_at_k(retrieved, np.array([1, 0]), [1, 2, 3, 4])
    np.testing.assert_allclose(p, [[1, 1 / 2, 2 / 3, 1 / 2], [0, 0, 0, 0]])
    np.testing.assert_allclose(metrics.precision_at_k(retrieved, np.array([1, 0]), 3), [2 / 3, 0])


def test_average_precision_both_normalisations():
    # Hits at ranks 1 and 3: sum of P@i * rel(i) over the top 4 = 1 + 2/3 = 5/3.
    retrieved = np.array([[7, 0, 7, 0]])
    query = np.array([7])
    r5 = np.array([5])
    np.testing.assert_allclose(
        metrics.average_precision(retrieved, query, r5, [1, 4]), [[1.0, (5 / 3) / 4]]
    )
    np.testing.assert_allclose(
        metrics.average_precision(retrieved, query, r5, [1, 4], normalise="r"),
        [[1 / 5, (5 / 3) / 5]],
    )
    # With R = 2 < k both forms divide by R.
    r2 = np.array([2])
    for form in metrics.NORMALISATIONS:
        np.testing.assert_allclose(
            metrics.average_precision(retrieved, query, r2, 4, normalise=form), [5 / 6]
        )


def test_average_precision_without_relevant_items_is_zero():
    ap = metrics.average_precision(np.array([[1, 1]]), np.array([0]), np.array([0]), 2)
    np.testing.assert_array_equal(ap, [0.0])


def test_mean_average_precision_over_queries_and_cutoffs():
    retrieved = np.array([[3, 3, 1], [1, 3, 3]])
    query = np.array([3, 3])
    r = np.array([2, 4])
    # Query 0: AP@1 = 1, AP@3 = (1 + 1) / 2 = 1.  Query 1: AP@1 = 0, AP@3 = (1/2 + 2/3) / 3.
    expected = [(1 + 0) / 2, (1 + (1 / 2 + 2 / 3) / 3) / 2]
    np.testing.assert_allclose(
        metrics.mean_average_precision(retrieved, query, r, [1, 3]), expected
    )


def test_unknown_normalisation_and_short_ranking_are_rejected():
    with pytest.raises(ValueError, match="normalise"):
        metrics.average_precision(np.array([[1]]), np.array([1]), np.array([1]), 1, normalise="R")
    with pytest.raises(ValueError, match="k=5"):
        metrics.precision_at_k(np.array([[1, 1]]), np.array([1]), 5)


def test_remove_query_ids_shifts_the_rest_up():
    ids = np.array([[2, 3, 0, 4, 5], [9, 8, 7, 6, 5], [1, 2, 3, 4, -1]])
    stripped = metrics.remove_query_ids(ids, np.array([2, 5, 4]))
    np.testing.assert_array_equal(stripped, [[3, 0, 4, 5], [9, 8, 7, 6], [1, 2, 3, -1]])
    np.testing.assert_array_equal(
        metrics.remove_query_ids(ids, np.array([0, 0, 0]), k=5)[0], [2, 3, 4, 5, -1]
    )


def test_query_in_corpus_removes_it_and_reduces_r():
    corpus_labels = np.array([0, 0, 1, 1, 1, 2])
    histogram = metrics.label_histogram(corpus_labels, 3)
    np.testing.assert_array_equal(histogram, [2, 3, 1])
    query_ids, query_labels = np.array([2]), np.array([1])
    ranked = np.array([[2, 3, 0, 4, 5]])  # the query (id 2) comes back first

    r = metrics.relevant_counts(query_labels, histogram, query_in_corpus=True)
    np.testing.assert_array_equal(r, [2])
    labels = metrics.labels_of(metrics.remove_query_ids(ranked, query_ids), corpus_labels)
    np.testing.assert_array_equal(labels, [[1, 0, 1, 2]])
    # Hits at ranks 1 and 3 of 2 relevant: (1 + 2/3) / 2.
    np.testing.assert_allclose(metrics.average_precision(labels, query_labels, r, 4), [5 / 6])
    # Forgetting to strip the query leaves 3 hits for R = 2, which must not pass silently.
    with pytest.raises(ValueError, match="remove_query_ids"):
        metrics.average_precision(metrics.labels_of(ranked, corpus_labels), query_labels, r, 5)


def test_labels_of_keeps_padding():
    labels = metrics.labels_of(np.array([[1, -1]]), np.array([4, 5]))
    np.testing.assert_array_equal(labels, [[5, -1]])


def test_hierarchical_precision_by_hand():
    retrieved = np.array([[1, 0, 2, 0]])
    # Gains 0.5, 1, 0, 1; ideal for class 0: two items at 1, then three at 0.5 -> 1, 2, 2.5, 3.
    hp = metrics.hierarchical_precision(retrieved, np.array([0]), S, HISTOGRAM, [1, 2, 3, 4])
    np.testing.assert_allclose(hp, [[0.5, 1.5 / 2, 1.5 / 2.5, 2.5 / 3]])
    np.testing.assert_allclose(
        metrics.mhp_at_k(np.vstack([retrieved, [[3, 3, 3, 3]]]), np.array([0, 3]), S, HISTOGRAM, 2),
        (0.75 + 1.0) / 2,
    )


def test_hierarchical_precision_query_in_corpus_leaves_it_out_of_the_ideal():
    # Without the query only one other class-0 item remains: ideal 1, 1.5, 2, 2.5.
    retrieved = np.array([[0, 1, 1, 2]])
    hp = metrics.hierarchical_precision(
        retrieved, np.array([0]), S, HISTOGRAM, [1, 2, 3, 4], query_in_corpus=True
    )
    np.testing.assert_allclose(hp, [[1.0, 1.0, 1.0, 2 / 2.5]])


def test_hierarchical_precision_rejects_a_ranking_better_than_the_corpus_allows():
    # Four class-2 results from a corpus holding one class-2 item: the query was not stripped.
    with pytest.raises(ValueError, match="remove_query_ids"):
        metrics.hierarchical_precision(np.array([[2, 2, 2, 2]]), np.array([2]), S, HISTOGRAM, 4)


def test_hierarchical_precision_with_a_corpus_shorter_than_k():
    # Two corpus items (classes 0 and 1): the ideal stops growing after rank 2.
    hp = metrics.hierarchical_precision(
        np.array([[1, 0, -1]]), np.array([0]), S, np.array([1, 1, 0, 0]), [1, 2, 3]
    )
    np.testing.assert_allclose(hp, [[0.5, 1.0, 1.0]])


def test_hierarchical_precision_ideal_matches_sorting_every_corpus_item():
    rng = np.random.default_rng(0)
    n_classes, n_items, q, k = 6, 120, 40, 30
    sim = rng.random((n_classes, n_classes))
    sim = (sim + sim.T) / 2
    np.fill_diagonal(sim, 1.0)
    corpus_labels = rng.integers(0, n_classes, n_items)
    query_ids = rng.choice(n_items, q, replace=False)
    # Each ranking starts with the query itself, as a search over a corpus holding it would.
    ranked = np.array(
        [rng.permutation(np.delete(np.arange(n_items), qid))[:k] for qid in query_ids]
    )
    ranked = metrics.remove_query_ids(np.hstack([query_ids[:, None], ranked]), query_ids, k)

    hp = metrics.hierarchical_precision(
        metrics.labels_of(ranked, corpus_labels),
        corpus_labels[query_ids],
        sim,
        metrics.label_histogram(corpus_labels, n_classes),
        np.arange(1, k + 1),
        query_in_corpus=True,
    )
    for i, qid in enumerate(query_ids):
        others = np.delete(np.arange(n_items), qid)
        ideal = np.cumsum(np.sort(sim[corpus_labels[qid], corpus_labels[others]])[::-1])[:k]
        gained = np.cumsum(sim[corpus_labels[qid], corpus_labels[ranked[i]]])
        np.testing.assert_allclose(hp[i], gained / ideal)


def test_ahp_barz_is_the_trapezoid_over_hp_with_step_one_over_k():
    retrieved = np.array([[1, 0, 2, 0]])
    hp = [0.5, 0.75, 0.6, 2.5 / 3]
    ahp = metrics.ahp_barz(retrieved, np.array([0]), S, HISTOGRAM, [1, 2, 4])
    trapezoid_4 = (hp[0] / 2 + hp[1] + hp[2] + hp[3] / 2) / 4
    np.testing.assert_allclose(ahp, [[0.0, (hp[0] / 2 + hp[1] / 2) / 2, trapezoid_4]])
    np.testing.assert_allclose(ahp[0, 2], np.trapezoid(hp, dx=1 / 4))  # the reference's np.trapz
    # A perfect ranking reaches (k - 1) / k, as in the reference code, not 1.
    perfect = metrics.mahp_barz_at_k(np.array([[0, 0, 1, 1]]), np.array([0]), S, HISTOGRAM, 4)
    np.testing.assert_allclose(perfect, 3 / 4)


def test_majority_label_breaks_ties_by_rank():
    retrieved = np.array([[0, 1, 1, 0], [3, 2, 2, 3], [-1, -1, -1, -1], [5, -1, 4, -1]])
    np.testing.assert_array_equal(metrics.majority_label(retrieved, 4), [0, 3, -1, 5])
    np.testing.assert_array_equal(metrics.majority_label(retrieved, 3), [1, 2, -1, 5])


def test_balanced_accuracy_averages_recall_over_classes():
    query = np.array([0, 0, 0, 1])
    retrieved = np.array([[0, 1, 1, 0], [0, 0, 1, 1], [1, 1, 0, 0], [1, -1, -1, -1]])
    # k=3: class 0 recall 1/3, class 1 recall 1; k=4 (ties to the first label): 2/3 and 1.
    np.testing.assert_allclose(
        metrics.balanced_accuracy_at_k(retrieved, query, [3, 4]), [(1 / 3 + 1) / 2, (2 / 3 + 1) / 2]
    )


def test_latency_summaries():
    summary = metrics.latency_summary([0.001, 0.004, 0.002, 0.003])
    assert summary["median_ms"] == pytest.approx(2.5)
    assert summary["p95_ms"] == pytest.approx(3.85)
    assert summary["throughput_qps"] == pytest.approx(400.0)
    batch = metrics.batch_latency_summary(2.0, 1000)
    assert batch == pytest.approx({"median_ms": 2.0, "p95_ms": 2.0, "throughput_qps": 500.0})
    with pytest.raises(ValueError, match="per-query seconds"):
        metrics.latency_summary([])
