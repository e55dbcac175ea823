"""This project's mAP@k and rank fusion against ranx, an independent implementation.

Small random cases (seeded numpy, 40 queries each). Every input ranking is unambiguous: its
scores are distinct draws from a continuous distribution, listed in descending order.

mAP@k. ranx's `map@k` sums the precision at each relevant item in the top k and divides by all
relevant items, R (every item of the query's qrels), as trec_eval does. `iwan.evaluation.metrics`
sums the same terms and divides by:

* `normalise="r"`: R, ranx's form, compared with ranx per query and for every k;
* `normalise="min_r_k"` (the default, the reported mAP@k): min(R, k). That equals ranx's AP@k
  times R / min(R, k), which is compared per query; on a corpus where no class has more than k
  items (R <= k) the two denominators coincide and the default mAP@k is compared with ranx's
  mean directly.

The query-in-corpus protocol (search k + 1, `remove_query_ids`, `relevant_counts(...,
query_in_corpus=True)`) is compared with ranx given the run and qrels without the query.

Fusion (`iwan.retrieval.fusion`), each fused ranking compared score by score and in order:

* `reciprocal_rank_fusion` (k0) = `ranx.fuse(method="rrf", norm=None, params={"k": k0})`: both
  give a document sum_r 1 / (k0 + rank_r) over the runs that list it, ranks from 1 in score
  order (iwan takes the column as the rank, ranx sorts by score: the same for these inputs).
  ranx's rrf takes no weights; iwan's weighted RRF with integer weights is compared with
  ranx's plain rrf over each run repeated weight times (the same sum).
* `weighted_fusion` = `ranx.fuse(method="wsum", norm="min-max", params={"weights": w})`: both
  min-max normalise each run per query over the documents it lists and give a document a run
  does not list 0. One difference is left out by the inputs: when all of a query's listed scores
  are equal iwan gives them 1 (the run still prefers them to what it left out), ranx 0 (it
  divides by max(spread, 1e-9)). ranx's `wmnz` (the sum times the number of runs listing the
  document) is not what iwan does and is not compared.

Fused scores can tie even so (in plain RRF, a document at rank r of one run only and another at
rank r of the other run only). ranx leaves the order of tied documents open; iwan puts the lower
id first, so exactly equal scores must come in ascending id order. Sums that are equal only in
exact arithmetic (1/12 + 1/12 and 1/6) may differ in the last bit and come in either order: along
iwan's ranking ranx's scores must never rise by more than 1e-12.
"""

from __future__ import annotations

import numpy as np
import pytest
from ranx import Qrels, Run, evaluate, fuse

from iwan.evaluation.metrics import (
    average_precision,
    label_histogram,
    labels_of,
    mean_average_precision,
    relevant_counts,
    remove_query_ids,
)
from iwan.retrieval.fusion import fuse as iwan_fuse
from iwan.retrieval.fusion import reciprocal_rank_fusion, weighted_fusion

# ranx's compiled AP warns about an integer cast of its own.
pytestmark = pytest.mark.filterwarnings("ignore:unsafe cast")

N_QUERIES = 40  # ranx.evaluate changes numba's thread count process-wide below 10 queries
KS = (1, 5, 10, 20, 50)
TOL = 1e-12


# -- mAP@k ---------------------------------------------------------------------------------------


def _case(rng, n_corpus, n_classes, kmax, class_sizes=None):
    """Corpus labels, query labels and each query's ranking (ids, scores) of its top kmax."""
    if class_sizes is None:
        extra = rng.integers(0, n_classes, n_corpus - n_classes)
        labels = np.concatenate([np.arange(n_classes), extra])  # every class occurs
    else:
        labels = np.repeat(np.arange(n_classes), class_sizes)
    labels = rng.permutation(labels)
    query_labels = rng.integers(0, n_classes, N_QUERIES)
    # Relevant items tend to score higher, so AP spans more than a few small values.
    relevant = labels[None, :] == query_labels[:, None]
    scores = rng.normal(size=(N_QUERIES, len(labels))) + 1.5 * relevant * rng.random((N_QUERIES, 1))
    ids = np.argsort(-scores, axis=1)[:, :kmax]
    return labels, query_labels, ids, np.take_along_axis(scores, ids, axis=1)


def _ranx_ap(qrels: dict, run: dict, ks) -> np.ndarray:
    """ranx's AP@k per query (rows in the order of `run`), one column per k."""
    ranx_run = Run(run)
    evaluate(Qrels(qrels), ranx_run, [f"map@{k}" for k in ks], return_mean=False)
    return np.array([[ranx_run.scores[f"map@{k}"][q] for k in ks] for q in run])


def _ranx_inputs(labels, query_labels, ids, scores):
    qrels = {
        f"q{i}": {str(d): 1 for d in np.flatnonzero(labels == c)}
        for i, c in enumerate(query_labels)
    }
    run = {
        f"q{i}": {str(d): float(s) for d, s in zip(row_ids, row_scores, strict=True)}
        for i, (row_ids, row_scores) in enumerate(zip(ids, scores, strict=True))
    }
    return qrels, run


def test_average_precision_over_r_is_ranx_map_at_k():
    rng = np.random.default_rng(20261207)
    labels, query_labels, ids, scores = _case(rng, n_corpus=300, n_classes=8, kmax=max(KS))
    r = relevant_counts(query_labels, label_histogram(labels, 8))
    assert (r[:, None] > KS).any() and (r[:, None] < KS).any()  # both sides of min(R, k) occur

    ours = average_precision(labels_of(ids, labels), query_labels, r, KS, normalise="r")
    theirs = _ranx_ap(*_ranx_inputs(labels, query_labels, ids, scores), KS)

    assert theirs.max() > 0.1  # not a case of zeros
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=TOL)
    np.testing.assert_allclose(
        mean_average_precision(labels_of(ids, labels), query_labels, r, KS, normalise="r"),
        theirs.mean(axis=0), rtol=0, atol=TOL,
    )


def test_reported_average_precision_is_ranx_rescaled_from_r_to_min_r_k():
    rng = np.random.default_rng(7)
    labels, query_labels, ids, scores = _case(rng, n_corpus=300, n_classes=8, kmax=max(KS))
    r = relevant_counts(query_labels, label_histogram(labels, 8))

    ours = average_precision(labels_of(ids, labels), query_labels, r, KS)  # the default, min(R, k)
    theirs = _ranx_ap(*_ranx_inputs(labels, query_labels, ids, scores), KS)
    rescale = r[:, None] / np.minimum(r[:, None], np.array(KS))

    assert (rescale > 1).any()  # the denominators do differ here
    np.testing.assert_allclose(ours, theirs * rescale, rtol=1e-12, atol=TOL)
    assert not np.allclose(ours, theirs, rtol=0, atol=1e-6)


def test_reported_map_at_k_is_ranx_map_at_k_when_no_class_exceeds_k():
    rng = np.random.default_rng(11)
    k = 20
    sizes = rng.integers(1, k + 1, 12)  # every R <= k: min(R, k) = R
    labels, query_labels, ids, scores = _case(rng, int(sizes.sum()), 12, kmax=k, class_sizes=sizes)
    r = relevant_counts(query_labels, label_histogram(labels, 12))
    assert r.max() <= k

    ours = mean_average_precision(labels_of(ids, labels), query_labels, r, k)
    qrels, run = _ranx_inputs(labels, query_labels, ids, scores)
    theirs = evaluate(Qrels(qrels), Run(run), f"map@{k}")

    assert 0.1 < theirs < 1
    assert ours == pytest.approx(theirs, rel=0, abs=TOL)


def test_query_in_corpus_protocol_is_ranx_without_the_query():
    rng = np.random.default_rng(3)
    kmax = max(KS)
    labels = rng.permutation(np.concatenate([np.arange(6), rng.integers(0, 6, 194)]))
    query_ids = rng.choice(len(labels), N_QUERIES, replace=False)
    query_labels = labels[query_ids]
    relevant = labels[None, :] == query_labels[:, None]
    scores = rng.normal(size=relevant.shape) + relevant
    scores[np.arange(N_QUERIES), query_ids] += rng.choice([0.0, 10.0], N_QUERIES)  # often first
    searched = np.argsort(-scores, axis=1)[:, : kmax + 1]  # k + 1, as the metrics module says

    ids = remove_query_ids(searched, query_ids)
    r = relevant_counts(query_labels, label_histogram(labels, 6), query_in_corpus=True)
    ours = {
        norm: average_precision(labels_of(ids, labels), query_labels, r, KS, normalise=norm)
        for norm in ("r", "min_r_k")
    }

    qrels = {
        f"q{i}": {str(d): 1 for d in np.flatnonzero(labels == c) if d != q}
        for i, (q, c) in enumerate(zip(query_ids, query_labels, strict=True))
    }
    run = {
        f"q{i}": {str(d): float(scores[i, d]) for d in row}
        for i, row in enumerate(ids)
    }
    theirs = _ranx_ap(qrels, run, KS)
    np.testing.assert_allclose(ours["r"], theirs, rtol=0, atol=TOL)
    rescale = r[:, None] / np.minimum(r[:, None], np.array(KS))
    np.testing.assert_allclose(ours["min_r_k"], theirs * rescale, rtol=1e-12, atol=TOL)


# -- fusion --------------------------------------------------------------------------------------


def _rankings(rng, n_runs, pool=60, lengths=(5, 30)):
    """n_runs (scores, ids) rankings of N_QUERIES rows over ids 0..pool-1, -1/-inf padded.

    Each run lists a random number of distinct ids per query, with distinct scores in
    descending order on a scale of its own (one run's scores are negative, like distances).
    """
    width = lengths[1]
    out = []
    for r in range(n_runs):
        ids = np.full((N_QUERIES, width), -1, dtype=np.int64)
        scores = np.full((N_QUERIES, width), -np.inf)
        for q in range(N_QUERIES):
            n = int(rng.integers(lengths[0], lengths[1] + 1))
            ids[q, :n] = rng.choice(pool, n, replace=False)
            drawn = np.sort(rng.normal(size=n) * (r + 1) * 3)[::-1]
            scores[q, :n] = drawn - 10 if r == 1 else drawn
        out.append((scores, ids))
    return out


def _ranx_run(ranking) -> Run:
    scores, ids = ranking
    return Run(
        {
            f"q{q}": {str(d): float(s) for d, s in zip(ids[q], scores[q], strict=True) if d >= 0}
            for q in range(len(ids))
        }
    )


def _assert_same_ranking(fused, ranx_fused: Run, k: int) -> int:
    """iwan's fused (scores, ids) hold ranx's fused scores, in ranx's order, ties by lower id.

    Returns how many neighbours in iwan's rankings have exactly equal scores.
    """
    scores, ids = fused
    theirs = ranx_fused.to_dict()
    ties = 0
    for q in range(len(ids)):
        ref = {int(d): s for d, s in theirs[f"q{q}"].items()}
        listed = ids[q][ids[q] >= 0]
        kept = scores[q][: len(listed)]
        assert len(listed) == min(k, len(ref)), q
        assert (ids[q][len(listed):] == -1).all() and np.isneginf(scores[q][len(listed):]).all()
        expected = np.array([ref[d] for d in listed])
        np.testing.assert_allclose(kept, expected, rtol=TOL, atol=TOL)
        # In iwan's order ranx's scores never rise (beyond rounding: sums of different terms can
        # be equal in exact arithmetic, 1/12 + 1/12 = 1/6, and differ in the last bit).
        assert (np.diff(expected) <= TOL).all(), q
        # Exactly equal scores: the lower id first.
        equal = kept[1:] == kept[:-1]
        ties += int(equal.sum())
        assert (listed[1:][equal] > listed[:-1][equal]).all(), q
        left_out = [s for d, s in ref.items() if d not in set(listed.tolist())]
        if left_out:
            assert max(left_out) <= expected[-1] + TOL, q
    return ties


@pytest.mark.parametrize("k", [10, 100])
@pytest.mark.parametrize("n_runs", [2, 3])
def test_rrf_is_ranx_rrf(n_runs, k):
    rng = np.random.default_rng(100 + n_runs)
    rankings = _rankings(rng, n_runs)
    ranx_fused = fuse([_ranx_run(r) for r in rankings], norm=None, method="rrf", params={"k": 60})

    _assert_same_ranking(reciprocal_rank_fusion(rankings, k), ranx_fused, k)
    _assert_same_ranking(iwan_fuse(rankings, k, rule="rrf"), ranx_fused, k)


def test_rrf_k0_is_ranx_k():
    rng = np.random.default_rng(5)
    rankings = _rankings(rng, 2)
    ranx_fused = fuse([_ranx_run(r) for r in rankings], norm=None, method="rrf", params={"k": 3})
    _assert_same_ranking(reciprocal_rank_fusion(rankings, 100, k0=3), ranx_fused, 100)


def test_weighted_rrf_is_ranx_rrf_over_repeated_runs():
    rng = np.random.default_rng(6)
    rankings = _rankings(rng, 2)
    weights = (3, 1)
    repeated = [_ranx_run(r) for r, w in zip(rankings, weights, strict=True) for _ in range(w)]
    ranx_fused = fuse(repeated, norm=None, method="rrf", params={"k": 60})

    fused = reciprocal_rank_fusion(rankings, 100, weights=weights)
    ties = _assert_same_ranking(fused, ranx_fused, 100)
    assert ties == 0  # unequal weights leave no ties in these cases


@pytest.mark.parametrize("k", [10, 100])
@pytest.mark.parametrize("n_runs", [2, 3])
def test_weighted_fusion_is_ranx_min_max_wsum(n_runs, k):
    rng = np.random.default_rng(200 + n_runs)
    rankings = _rankings(rng, n_runs)
    weights = rng.uniform(0.1, 1.0, n_runs).tolist()
    ranx_fused = fuse(
        [_ranx_run(r) for r in rankings], norm="min-max", method="wsum", params={"weights": weights}
    )

    _assert_same_ranking(weighted_fusion(rankings, k, weights=weights), ranx_fused, k)
    _assert_same_ranking(iwan_fuse(rankings, k, rule="weighted", weights=weights), ranx_fused, k)


def test_two_way_weight_grid_is_ranx_wsum():
    """The (w, 1 - w) fusion that `choose_weight` scans, at a few grid points."""
    rng = np.random.default_rng(8)
    rankings = _rankings(rng, 2)
    runs = [_ranx_run(r) for r in rankings]
    for w in (0.0, 0.3, 0.9, 1.0):
        ranx_fused = fuse(runs, norm="min-max", method="wsum", params={"weights": [w, 1.0 - w]})
        _assert_same_ranking(weighted_fusion(rankings, 100, weights=(w, 1.0 - w)), ranx_fused, 100)
