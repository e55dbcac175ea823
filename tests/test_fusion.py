"""Fusion on hand-computed rankings."""

from __future__ import annotations

import numpy as np
import pytest

from iwan.retrieval import fusion
from iwan.retrieval.fused import FusedRetriever


def ranking(scores, ids):
    return np.array(scores, dtype=np.float64), np.array(ids, dtype=np.int64)


def test_rrf_sums_reciprocal_ranks():
    a = ranking([[0.9, 0.8, 0.7]], [[1, 2, 3]])
    b = ranking([[-1.0, -2.0, -3.0]], [[3, 1, 4]])
    scores, ids = fusion.reciprocal_rank_fusion([a, b], k=4)
    np.testing.assert_array_equal(ids, [[1, 3, 2, 4]])
    np.testing.assert_allclose(scores, [[1 / 61 + 1 / 62, 1 / 61 + 1 / 63, 1 / 62, 1 / 63]])
    assert ids.dtype == np.int64 and scores.shape == (1, 4)


def test_rrf_ties_go_to_the_lower_id_and_short_rows_are_padded():
    a = ranking([[2.0, 1.0], [5.0, 0.0]], [[7, 5], [9, -1]])
    b = ranking([[2.0, 1.0], [0.0, 0.0]], [[5, 7], [-1, -1]])
    scores, ids = fusion.reciprocal_rank_fusion([a, b], k=3, k0=0)
    np.testing.assert_array_equal(ids, [[5, 7, -1], [9, -1, -1]])
    np.testing.assert_array_equal(scores, [[1.5, 1.5, -np.inf], [1.0, -np.inf, -np.inf]])


def test_weighted_fusion_normalises_and_gives_missing_items_the_minimum():
    a = ranking([[10.0, 6.0, 2.0]], [[1, 2, 3]])  # normalised 1, 0.5, 0
    b = ranking([[0.9, 0.1]], [[3, 4]])  # normalised 1, 0
    scores, ids = fusion.weighted_fusion([a, b], k=4, weights=[0.5, 0.5])
    # 1: 0.5 + 0 (missing from b) and 3: 0 + 0.5 tie, the lower id first; 2: 0.25; 4: 0.
    np.testing.assert_array_equal(ids, [[1, 3, 2, 4]])
    np.testing.assert_allclose(scores, [[0.5, 0.5, 0.25, 0.0]])
    scores, ids = fusion.weighted_fusion([a, b], k=2, weights=[0.8, 0.2])
    np.testing.assert_array_equal(ids, [[1, 2]])
    np.testing.assert_allclose(scores, [[0.8, 0.4]])


def test_normalise_scores_per_query_with_padding_and_flat_rows():
    scores = np.array([[-1.0, -3.0, -np.inf], [4.0, 4.0, 4.0]])
    ids = np.array([[1, 2, -1], [1, 2, 3]])
    np.testing.assert_allclose(
        fusion.normalise_scores(scores, ids), [[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
    )


def test_fuse_rejects_mismatched_input():
    a = ranking([[1.0]], [[1]])
    with pytest.raises(ValueError, match="same queries"):
        fusion.fuse([a, ranking([[1.0], [2.0]], [[1], [2]])], k=1)
    with pytest.raises(ValueError, match="weights"):
        fusion.fuse([a, a], k=1, rule="weighted", weights=[1.0])
    with pytest.raises(ValueError, match="unknown"):
        fusion.fuse([a], k=1, rule="borda")


class FixedRetriever:
    def __init__(self, ids):
        self.ids = np.asarray(ids)
        self.asked = []

    def search(self, queries, k, *, exclude=None):
        self.asked.append(k)
        ids = self.ids[:, :k]
        return -np.arange(ids.shape[1], dtype=np.float64)[None, :].repeat(len(ids), 0), ids


def test_fused_retriever_searches_deeper_and_fuses():
    a = FixedRetriever([[1, 2, 3, 4]])
    b = FixedRetriever([[4, 3, 9, 8]])
    fused = FusedRetriever([a, b], rule="rrf", depth_factor=2)
    scores, ids = fused.search(queries=None, k=2)
    assert a.asked == [4] and b.asked == [4]
    # 4: 1/64 + 1/61 and 3: 1/63 + 1/62 beat 1: 1/61 alone.
    np.testing.assert_array_equal(ids, [[4, 3]])
    np.testing.assert_allclose(scores, [[1 / 64 + 1 / 61, 1 / 63 + 1 / 62]])


def test_choose_weight_picks_the_best_grid_weight():
    # Query 0 wants item 1 (a: 1, b: 0) over item 2 (a: 0.6, b: 1): w > 1/1.4.
    # Query 1 wants item 4 (a: 0.9, b: 1) over item 3 (a: 1, b: 0): w < 1/1.1.
    a = ranking([[1.0, 0.6, 0.0], [1.0, 0.9, 0.0]], [[1, 2, 6], [3, 4, 5]])
    b = ranking([[1.0, 0.0], [1.0, 0.0]], [[2, 1], [4, 3]])
    wanted = np.array([1, 4])
    seen = []

    def precision_at_1(ids):
        seen.append(ids.shape)
        return float(np.mean(ids[:, 0] == wanted))

    weight, values = fusion.choose_weight(a, b, precision_at_1, k=2)
    assert weight == pytest.approx(0.8)
    np.testing.assert_allclose(values, [0.5] * 8 + [1.0, 1.0, 0.5])
    assert seen == [(2, 2)] * 11
