"""Fusion of several rankings into one, in the retriever protocol of this project (the `fused`
method, iwan/retrieval/fused.py, fuses its members' rankings with these).

A ranking is a pair (scores, ids) of shape (q, k_i): scores higher = better, ids int64, -1
padding. Every fused ranking has shape (q, k); an item's fused score ties are broken by the lower
id, and rows with fewer than k distinct items are padded with id -1 and score -inf. Ids within
one ranking are taken to be distinct, as a nearest-neighbour index returns them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from iwan.config import DEFAULT_FUSION_RULE, FUSION_RULES, RRF_K0

Ranking = tuple[np.ndarray, np.ndarray]
RULES = FUSION_RULES


def reciprocal_rank_fusion(
    rankings: Sequence[Ranking],
    k: int,
    k0: float = RRF_K0,
    weights: Sequence[float] | None = None,
) -> Ranking:
    """RRF (Cormack et al. 2009): score(d) = sum_r w_r / (k0 + rank_r(d)), ranks from 1.

    A ranking that lacks d adds nothing; weights default to 1 each (plain RRF).
    """
    scores_ids = _check_rankings(rankings)
    w = check_weights(weights, len(scores_ids))
    if k0 < 0:
        raise ValueError(f"k0={k0} must be >= 0 (60 is the usual choice)")
    contributions = [
        np.broadcast_to(w_r / (k0 + np.arange(1, ids.shape[1] + 1)), ids.shape)
        for w_r, (_, ids) in zip(w, scores_ids, strict=True)
    ]
    return _accumulate([ids for _, ids in scores_ids], contributions, k)


def weighted_fusion(
    rankings: Sequence[Ranking], k: int, weights: Sequence[float] | None = None
) -> Ranking:
    """score(d) = sum_r w_r * norm_r(d), with each retriever's scores min-max normalised per query.

    norm_r maps a query's best listed score to 1 and its worst to 0; an item that retriever did
    not list gets 0, its minimum. When all of a query's listed scores are equal the retriever
    still prefers them to anything it left out, so they get 1. Weights default to 1 each.
    """
    scores_ids = _check_rankings(rankings)
    w = check_weights(weights, len(scores_ids))
    contributions = [
        w_r * normalise_scores(scores, ids)
        for w_r, (scores, ids) in zip(w, scores_ids, strict=True)
    ]
    return _accumulate([ids for _, ids in scores_ids], contributions, k)


def normalise_scores(scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Per-query min-max normalisation over the listed (id >= 0) entries; padding gets 0."""
    listed = ids >= 0
    if not np.isfinite(scores[listed]).all():
        raise ValueError(
            "a listed item has a non-finite score: only padding (id -1) may be ±inf/nan"
        )
    low = np.where(listed, scores, np.inf).min(axis=1, keepdims=True)
    high = np.where(listed, scores, -np.inf).max(axis=1, keepdims=True)
    spread = high - low
    flat = ~(spread > 0)
    normalised = (scores - np.where(flat, 0.0, low)) / np.where(flat, 1.0, spread)
    return np.where(listed, np.where(flat, 1.0, normalised), 0.0)


def fuse(
    rankings: Sequence[Ranking],
    k: int,
    rule: str = DEFAULT_FUSION_RULE,
    weights: Sequence[float] | None = None,
    k0: float = RRF_K0,
) -> Ranking:
    """Dispatch to `reciprocal_rank_fusion` (rule "rrf") or `weighted_fusion` ("weighted")."""
    if rule == "rrf":
        return reciprocal_rank_fusion(rankings, k, k0=k0, weights=weights)
    if rule == "weighted":
        return weighted_fusion(rankings, k, weights=weights)
    raise ValueError(f"fusion rule {rule!r} is unknown: use one of {RULES}")


def choose_weight(
    ranking_a: Ranking,
    ranking_b: Ranking,
    metric: Callable[[np.ndarray], float],
    k: int,
    grid: Sequence[float] = tuple(np.linspace(0.0, 1.0, 11)),
) -> tuple[float, np.ndarray]:
    """Pick w for the two-way weighted fusion (w * a + (1 - w) * b) that maximises `metric`.

    Choose on a validation split, never on the queries being scored: a weight tuned on the test
    queries inflates the reported numbers. `metric(ids)` scores a fused (q, k) id array, higher
    = better. Returns the best weight (the first in grid order on a tie) and the metric value of
    every grid weight.
    """
    grid_arr = np.asarray(grid, dtype=np.float64)
    if grid_arr.ndim != 1 or grid_arr.size == 0 or (grid_arr < 0).any() or (grid_arr > 1).any():
        raise ValueError(f"grid must be a non-empty list of weights in [0, 1], got {grid!r}")
    values = np.array(
        [
            metric(weighted_fusion([ranking_a, ranking_b], k, weights=(w, 1.0 - w))[1])
            for w in grid_arr
        ],
        dtype=np.float64,
    )
    return float(grid_arr[np.argmax(values)]), values


def _check_rankings(rankings: Sequence[Ranking]) -> list[Ranking]:
    if not rankings:
        raise ValueError("need at least one (scores, ids) ranking to fuse")
    checked = []
    for i, (scores, ids) in enumerate(rankings):
        scores = np.asarray(scores, dtype=np.float64)
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 2 or scores.shape != ids.shape:
            raise ValueError(
                f"ranking {i}: scores {scores.shape} and ids {ids.shape} must share a (q, k) shape"
            )
        if ids.shape[0] != np.shape(rankings[0][1])[0]:
            raise ValueError(
                f"ranking {i} has {ids.shape[0]} queries but ranking 0 has "
                f"{np.shape(rankings[0][1])[0]}: fuse rankings of the same queries"
            )
        checked.append((scores, ids))
    return checked


def check_weights(weights: Sequence[float] | None, n: int) -> np.ndarray:
    """n finite non-negative weights as an array (None: 1 each); ValueError otherwise."""
    if weights is None:
        return np.ones(n)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or (w < 0).any() or not np.isfinite(w).all():
        raise ValueError(f"need {n} finite non-negative weights, one per ranking, got {weights!r}")
    return w


def _accumulate(ids_list: list[np.ndarray], contributions: list[np.ndarray], k: int) -> Ranking:
    """Sum each (query, id)'s contributions and keep the k best per query."""
    if k < 1:
        raise ValueError(f"k={k} must be >= 1")
    ids = np.concatenate(ids_list, axis=1)
    gain = np.concatenate([np.asarray(c, dtype=np.float64) for c in contributions], axis=1)
    q, width = ids.shape
    # Row-wise sorts beat one global sort by far. A stable sort keeps an id's contributions in
    # ranking order, so equal contributions add up to bit-identical totals and tie exactly.
    order = np.argsort(ids, axis=1, kind="stable")
    ids = np.take_along_axis(ids, order, axis=1)
    gain = np.take_along_axis(gain, order, axis=1)
    first = np.ones((q, width), dtype=bool)
    first[:, 1:] = ids[:, 1:] != ids[:, :-1]
    # Every row opens a new group, so no group spans two queries.
    starts = np.flatnonzero(first)
    total = np.full((q, width), -np.inf)
    total.ravel()[starts] = np.add.reduceat(gain.ravel(), starts) if starts.size else 0.0
    total[ids < 0] = -np.inf
    # Ids ascend along each row, so a stable sort on the score puts the lower id first on a tie.
    best = np.argsort(-total, axis=1, kind="stable")[:, :k]
    fused_scores = np.full((q, k), -np.inf)
    fused_ids = np.full((q, k), -1, dtype=np.int64)
    fused_scores[:, : best.shape[1]] = np.take_along_axis(total, best, axis=1)
    fused_ids[:, : best.shape[1]] = np.take_along_axis(ids, best, axis=1)
    fused_ids[np.isneginf(fused_scores)] = -1
    return fused_scores, fused_ids
