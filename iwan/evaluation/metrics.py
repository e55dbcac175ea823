"""Retrieval metrics, vectorised over queries: label arrays in, metric arrays out.

Every ranking metric takes `retrieved_labels`, an int array (q, k) holding the class label of
each ranked result (-1 marks padding, which is never relevant), and `query_labels` (q,).
Cut-offs `ks` are an int or a sequence of ints; a sequence gives one column per cut-off, all
read from the same ranking of length >= max(ks), and an int gives that axis squeezed away.

A query must never count among its own results. When the corpus holds the queries, search with
k + 1, strip the query with `remove_query_ids`, and pass `query_in_corpus=True` where a metric
needs the corpus, so that R (the number of relevant corpus items) and the ideal ranking of
hierarchical precision leave the query out as well. A query that leaves several items of its
class out (a query of examples held by the corpus) passes their count per query instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NORMALISATIONS = ("min_r_k", "r")


def labels_of(ids: np.ndarray, corpus_labels: np.ndarray) -> np.ndarray:
    """Class labels of ranked corpus ids; padding (-1) stays -1 instead of taking the last label."""
    ids = np.asarray(ids)
    corpus_labels = np.asarray(corpus_labels)
    if ids.size and ids.max() >= len(corpus_labels):
        raise ValueError(
            f"id {ids.max()} is outside a corpus of {len(corpus_labels)} labels: "
            "pass the labels of the corpus the retriever searched"
        )
    labels = corpus_labels[np.where(ids < 0, 0, ids)].astype(np.int64)
    labels[ids < 0] = -1
    return labels


def remove_query_ids(ids: np.ndarray, query_ids: np.ndarray, k: int | None = None) -> np.ndarray:
    """Drop each query's own id from its ranking, shift the later results up, keep `k` columns.

    `k` defaults to one less than the ranking's width: search with k + 1 so that k results remain
    whether or not the query was retrieved. Rows that run short are padded with -1.
    """
    ids = np.asarray(ids, dtype=np.int64)
    query_ids = np.asarray(query_ids, dtype=np.int64)
    if ids.ndim != 2 or query_ids.shape != (ids.shape[0],):
        raise ValueError(
            f"need ids of shape (q, k) and query_ids of shape (q,), got {ids.shape} and "
            f"{query_ids.shape}"
        )
    k = ids.shape[1] - 1 if k is None else k
    if not 0 <= k <= ids.shape[1]:
        raise ValueError(f"k={k} must lie in [0, {ids.shape[1]}], the width of the ranking")
    is_query = ids == query_ids[:, None]
    # A stable sort on the mask moves the query to the end and keeps the others in rank order.
    order = np.argsort(is_query, axis=1, kind="stable")
    kept = np.take_along_axis(ids, order, axis=1)
    kept[np.take_along_axis(is_query, order, axis=1)] = -1
    return kept[:, :k]


def label_histogram(corpus_labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Number of corpus items per class, the corpus information that R and HP@k need."""
    corpus_labels = np.asarray(corpus_labels)
    if corpus_labels.size and (corpus_labels.min() < 0 or corpus_labels.max() >= n_classes):
        raise ValueError(
            f"corpus labels span [{corpus_labels.min()}, {corpus_labels.max()}] but n_classes is "
            f"{n_classes}: labels must be 0..n_classes-1"
        )
    return np.bincount(corpus_labels, minlength=n_classes).astype(np.int64)


def relevant_counts(
    query_labels: np.ndarray, histogram: np.ndarray, query_in_corpus: bool | np.ndarray = False
) -> np.ndarray:
    """R per query: corpus items sharing the query's label, less the query itself when it is one."""
    query_labels = _check_query_labels(query_labels, len(histogram))
    r = histogram[query_labels] - _left_out(query_in_corpus, query_labels)
    if (r < 0).any():
        raise ValueError(
            "a query flagged as in the corpus has a label with no corpus items: pass "
            "query_in_corpus=False for queries from a separate split"
        )
    return r


def precision_at_k(
    retrieved_labels: np.ndarray, query_labels: np.ndarray, ks: int | Sequence[int]
) -> np.ndarray:
    """P@k: the share of the top k that has the query's label; padding counts as a miss."""
    ks_arr, squeeze = _cutoffs(ks)
    rel = _relevance(retrieved_labels, query_labels, ks_arr)
    hits = np.cumsum(rel, axis=1)[:, ks_arr - 1]
    return _squeeze(hits / ks_arr, squeeze)


def average_precision(
    retrieved_labels: np.ndarray,
    query_labels: np.ndarray,
    n_relevant: np.ndarray,
    ks: int | Sequence[int],
    normalise: str = "min_r_k",
) -> np.ndarray:
    """AP@k per query = sum_{i<=k} P@i * rel(i) / Z.

    normalise="min_r_k" (default): Z = min(R, k), so a perfect top k scores 1 even when R > k.
    normalise="r": Z = R, the trec_eval form, which caps AP@k at k / R.
    A query with R = 0 scores 0. `n_relevant` is R per query (see `relevant_counts`).
    """
    if normalise not in NORMALISATIONS:
        raise ValueError(f"normalise={normalise!r} is unknown: use one of {NORMALISATIONS}")
    ks_arr, squeeze = _cutoffs(ks)
    rel = _relevance(retrieved_labels, query_labels, ks_arr)
    n_relevant = np.asarray(n_relevant, dtype=np.int64)
    if n_relevant.shape != (rel.shape[0],):
        raise ValueError(f"n_relevant has shape {n_relevant.shape}, expected ({rel.shape[0]},)")
    hits = np.cumsum(rel, axis=1)
    if (hits[:, -1] > n_relevant).any():
        raise ValueError(
            "a ranking holds more relevant items than its R: strip the query's own id with "
            "remove_query_ids, or check the corpus histogram and query_in_corpus"
        )
    ranks = np.arange(1, rel.shape[1] + 1)
    summed = np.cumsum(np.where(rel, hits / ranks, 0.0), axis=1)[:, ks_arr - 1]
    z = n_relevant[:, None] if normalise == "r" else np.minimum(n_relevant[:, None], ks_arr)
    ap = np.divide(summed, z, out=np.zeros_like(summed), where=z > 0)
    return _squeeze(ap, squeeze)


def mean_average_precision(
    retrieved_labels: np.ndarray,
    query_labels: np.ndarray,
    n_relevant: np.ndarray,
    ks: int | Sequence[int],
    normalise: str = "min_r_k",
) -> np.ndarray:
    """mAP@k for every cut-off in `ks`: the mean over queries of `average_precision`."""
    return average_precision(retrieved_labels, query_labels, n_relevant, ks, normalise).mean(axis=0)


def hierarchical_precision(
    retrieved_labels: np.ndarray,
    query_labels: np.ndarray,
    similarity: np.ndarray,
    histogram: np.ndarray,
    ks: int | Sequence[int],
    query_in_corpus: bool | np.ndarray = False,
) -> np.ndarray:
    """HP@k (Deng, Berg & Fei-Fei 2011) per query.

    HP@k = sum_{i<=k} S[q, r_i] / (the largest such sum any ranking of this corpus could reach:
    the k highest similarities of corpus items to the query's class, the query itself left out
    when it is in the corpus). S is the class similarity matrix (n_classes x n_classes), e.g.
    1 - height(lcs(a, b)) / height(root); padding adds 0. A zero ideal gives HP = 0.
    """
    ks_arr, squeeze = _cutoffs(ks)
    gained, ideal = _hp_cumulative(
        retrieved_labels, query_labels, similarity, histogram, ks_arr.max(), query_in_corpus
    )
    hp = _ratio(gained[:, ks_arr - 1], ideal[:, ks_arr - 1])
    return _squeeze(hp, squeeze)


def mhp_at_k(
    retrieved_labels: np.ndarray,
    query_labels: np.ndarray,
    similarity: np.ndarray,
    histogram: np.ndarray,
    ks: int | Sequence[int],
    query_in_corpus: bool | np.ndarray = False,
) -> np.ndarray:
    """mHP@k, the mean over queries of HP@k: what the original IWAN work calls "mAHP@k"."""
    return hierarchical_precision(
        retrieved_labels, query_labels, similarity, histogram, ks, query_in_corpus
    ).mean(axis=0)


def ahp_barz(
    retrieved_labels: np.ndarray,
    query_labels: np.ndarray,
    similarity: np.ndarray,
    histogram: np.ndarray,
    ks: int | Sequence[int],
    query_in_corpus: bool | np.ndarray = False,
) -> np.ndarray:
    """AHP@k per query as Barz & Denzler compute it (cvjena/semantic-embeddings).

    Reading of `ClassHierarchy.hierarchical_precision(..., compute_ahp=k)` in class_hierarchy.py:
    `np.trapz(HP[:k], dx=1/k)` with HP[i] = HP@(i+1), that is
        AHP@k = (1/k) * (HP@1/2 + HP@2 + ... + HP@(k-1) + HP@k/2)
              = mean(HP@1..HP@k) - (HP@1 + HP@k) / (2k),
    the trapezoid rule over k' = 1..k with step 1/k. It spans k - 1 intervals but divides by k,
    so a perfect ranking scores (k - 1) / k, not 1, and AHP@1 = 0; this keeps their numbers
    rather than normalising the area to 1. An earlier revision of that file wrote the end-point
    correction with the k-th result's own similarity over the ideal sum at k in place of HP@k;
    the np.trapz form is the later one (it sits beside the `compute_ap` option that their
    `evaluate_retrieval.py --clip_ahp 250`, the "mAHP@250" run, passes) and is followed here.
    Query removal: they delete the query from the ranking and take 1.0 off the ideal sums from
    the rank where it was retrieved on. With S[c, c] = 1 that equals leaving the query out of the
    ideal ranking, as done here, whenever it was retrieved within its first R + 1 ranks.
    """
    ks_arr, squeeze = _cutoffs(ks)
    gained, ideal = _hp_cumulative(
        retrieved_labels, query_labels, similarity, histogram, ks_arr.max(), query_in_corpus
    )
    hp = _ratio(gained, ideal)
    running = np.cumsum(hp, axis=1)[:, ks_arr - 1]
    ahp = running / ks_arr - (hp[:, :1] + hp[:, ks_arr - 1]) / (2 * ks_arr)
    return _squeeze(ahp, squeeze)


def mahp_barz_at_k(
    retrieved_labels: np.ndarray,
    query_labels: np.ndarray,
    similarity: np.ndarray,
    histogram: np.ndarray,
    ks: int | Sequence[int],
    query_in_corpus: bool | np.ndarray = False,
) -> np.ndarray:
    """Barz & Denzler's mAHP@k (their "mAHP@250" at k=250): the mean over queries of `ahp_barz`."""
    return ahp_barz(
        retrieved_labels, query_labels, similarity, histogram, ks, query_in_corpus
    ).mean(axis=0)


def majority_label(retrieved_labels: np.ndarray, k: int) -> np.ndarray:
    """Most frequent label among each query's top k; a tie goes to the label ranked first.

    A row of padding only predicts -1.
    """
    top = np.asarray(retrieved_labels, dtype=np.int64)[:, :k]
    if k < 1 or top.ndim != 2 or top.shape[1] < k:
        raise ValueError(
            f"need k >= 1 and a ranking of shape (q, >= k), got k={k} and "
            f"{np.shape(retrieved_labels)}"
        )
    q = top.shape[0]
    n_classes = int(top.max(initial=-1)) + 1
    valid = top >= 0
    # One flat histogram for all queries: query i's class c sits at i * n_classes + c.
    cell = np.arange(q)[:, None] * n_classes + np.where(valid, top, 0)
    counts = np.bincount(cell[valid], minlength=q * n_classes)
    per_position = np.where(valid, counts[cell], -1)
    # argmax returns the first maximum, i.e. the best-ranked position among the tied labels.
    best = np.argmax(per_position, axis=1)
    return top[np.arange(q), best]


def balanced_accuracy_at_k(
    retrieved_labels: np.ndarray, query_labels: np.ndarray, ks: int | Sequence[int]
) -> np.ndarray:
    """Balanced accuracy of `majority_label` as a classifier: mean per-class recall over the
    classes that occur among the queries."""
    ks_arr, squeeze = _cutoffs(ks)
    query_labels = _check_query_labels(query_labels)
    _relevance(retrieved_labels, query_labels, ks_arr)
    classes, per_query_class = np.unique(query_labels, return_inverse=True)
    class_sizes = np.bincount(per_query_class, minlength=len(classes))
    result = np.empty(len(ks_arr))
    for j, k in enumerate(ks_arr):
        correct = majority_label(retrieved_labels, int(k)) == query_labels
        result[j] = np.mean(np.bincount(per_query_class, weights=correct) / class_sizes)
    return result[0] if squeeze else result


def latency_summary(per_query_seconds: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Median and 95th percentile in milliseconds, and throughput in queries per second."""
    seconds = np.asarray(per_query_seconds, dtype=np.float64)
    if seconds.ndim != 1 or seconds.size == 0 or (seconds < 0).any():
        raise ValueError("need a non-empty 1-D list of non-negative per-query seconds")
    total = seconds.sum()
    return {
        "median_ms": float(np.median(seconds) * 1e3),
        "p95_ms": float(np.percentile(seconds, 95) * 1e3),
        "throughput_qps": float(seconds.size / total) if total > 0 else float("inf"),
    }


def batch_latency_summary(total_seconds: float, n_queries: int) -> dict[str, float]:
    """The same summary from one timing of a batch of queries.

    A batch timing only knows the mean, so median and p95 both report the mean per query.
    """
    if n_queries <= 0 or total_seconds <= 0:
        raise ValueError(
            f"need a positive batch time and query count, got {total_seconds} s for {n_queries}"
        )
    per_query_ms = total_seconds / n_queries * 1e3
    return {
        "median_ms": per_query_ms,
        "p95_ms": per_query_ms,
        "throughput_qps": n_queries / total_seconds,
    }


def _cutoffs(ks: int | Sequence[int]) -> tuple[np.ndarray, bool]:
    ks_arr = np.atleast_1d(np.asarray(ks, dtype=np.int64))
    if ks_arr.ndim != 1 or ks_arr.size == 0 or (ks_arr < 1).any():
        raise ValueError(f"cut-offs must be positive integers, got {ks!r}")
    return ks_arr, np.ndim(ks) == 0


def _squeeze(values: np.ndarray, squeeze: bool) -> np.ndarray:
    return values[:, 0] if squeeze else values


def _check_query_labels(query_labels: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    query_labels = np.asarray(query_labels, dtype=np.int64)
    if query_labels.ndim != 1:
        raise ValueError(f"query_labels must be 1-D, got shape {query_labels.shape}")
    if query_labels.size and query_labels.min() < 0:
        raise ValueError("query labels must be >= 0; -1 is reserved for padding")
    if n_classes is not None and query_labels.size and query_labels.max() >= n_classes:
        raise ValueError(
            f"query label {query_labels.max()} has no entry in a histogram/similarity of "
            f"{n_classes} classes"
        )
    return query_labels


def _relevance(
    retrieved_labels: np.ndarray, query_labels: np.ndarray, ks: np.ndarray
) -> np.ndarray:
    """Boolean (q, max k) relevance; checks shapes and that the ranking is long enough."""
    retrieved_labels = np.asarray(retrieved_labels)
    query_labels = _check_query_labels(query_labels)
    if retrieved_labels.ndim != 2 or retrieved_labels.shape[0] != query_labels.shape[0]:
        raise ValueError(
            f"retrieved_labels must be (q, k) with q={query_labels.shape[0]}, got "
            f"{retrieved_labels.shape}"
        )
    kmax = int(ks.max())
    if retrieved_labels.shape[1] < kmax:
        raise ValueError(
            f"the ranking has {retrieved_labels.shape[1]} columns but k={kmax} was asked: search "
            "with k >= max(ks)"
        )
    return retrieved_labels[:, :kmax] == query_labels[:, None]


def _hp_cumulative(
    retrieved_labels, query_labels, similarity, histogram, kmax, query_in_corpus
) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative gained and ideal similarity sums, each (q, kmax)."""
    similarity = np.asarray(similarity, dtype=np.float64)
    histogram = np.asarray(histogram, dtype=np.int64)
    n_classes = len(histogram)
    if similarity.shape != (n_classes, n_classes):
        raise ValueError(
            f"similarity has shape {similarity.shape} but the histogram has {n_classes} classes: "
            "both must cover the same classes"
        )
    _relevance(retrieved_labels, query_labels, np.array([kmax]))
    query_labels = _check_query_labels(query_labels, n_classes)
    top = np.asarray(retrieved_labels, dtype=np.int64)[:, :kmax]
    if top.max(initial=-1) >= n_classes:
        raise ValueError(f"retrieved label {top.max()} is outside the {n_classes} classes")
    left_out = _left_out(query_in_corpus, query_labels)
    relevant_counts(query_labels, histogram, left_out)

    gains = np.where(top >= 0, similarity[query_labels[:, None], np.maximum(top, 0)], 0.0)
    ideal = np.empty((len(query_labels), kmax))
    for count in np.unique(left_out).tolist():
        rows = left_out == count
        ideal[rows] = _ideal_cumulative(similarity, histogram, kmax, count)[query_labels[rows]]
    gained = np.cumsum(gains, axis=1)
    if (gained > ideal + 1e-9 * np.maximum(ideal, 1.0)).any():
        raise ValueError(
            "a ranking beats the best ranking of its corpus: strip the query's own id with "
            "remove_query_ids, or check the corpus histogram and query_in_corpus"
        )
    return gained, ideal


def _ideal_cumulative(
    similarity: np.ndarray, histogram: np.ndarray, kmax: int, left_out: int
) -> np.ndarray:
    """Per query class, the best cumulative similarity at ranks 1..kmax, from class counts, with
    `left_out` corpus items of the query's own class out of reach.

    Sorting classes rather than corpus items keeps this O(C^2) whatever the corpus size.
    """
    n_classes = len(histogram)
    counts = np.tile(histogram, (n_classes, 1))
    counts[np.diag_indices(n_classes)] = np.maximum(histogram - left_out, 0)
    order = np.argsort(-similarity, axis=1, kind="stable")
    sorted_sims = np.take_along_axis(similarity, order, axis=1)
    ends = np.cumsum(np.take_along_axis(counts, order, axis=1), axis=1)
    # One searchsorted for all rows: offsetting row c by c * stride keeps the rows apart.
    stride = max(int(histogram.sum()), kmax) + 1
    offsets = np.arange(n_classes)[:, None] * stride
    positions = np.arange(kmax)[None, :] + offsets
    found = np.searchsorted((ends + offsets).ravel(), positions.ravel(), side="right")
    group = found.reshape(n_classes, kmax) - np.arange(n_classes)[:, None] * n_classes
    # Ranks past the end of the corpus (group == n_classes) add nothing.
    padded = np.hstack([sorted_sims, np.zeros((n_classes, 1))])
    return np.cumsum(np.take_along_axis(padded, group, axis=1), axis=1)


def _left_out(query_in_corpus: bool | np.ndarray, query_labels: np.ndarray) -> np.ndarray:
    """Per query, how many corpus items of its class it leaves out: 1 where `query_in_corpus` is
    True, or the counts it gives (a query of examples leaves each example the corpus holds out)."""
    given = np.asarray(query_in_corpus)
    if given.dtype != bool and (not np.issubdtype(given.dtype, np.integer) or (given < 0).any()):
        raise ValueError("query_in_corpus must be booleans or counts >= 0 of the items each query leaves out")
    return np.broadcast_to(given.astype(np.int64), query_labels.shape)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)
