"""In-memory retrieval over image embeddings and hash codes, with a FAISS-like protocol.

`index.add(ids, ...)`, then `index.search(queries, k) -> (scores, ids)`, batch first: queries (q, d)
give float32 scores and int64 ids of shape (q, k), best first. Ids are the caller's (database image
ids), given first to `add`; given as None they continue from the highest id held, so they are
positions in the order added. Scores are cosine similarities (higher is better). Ties are broken by the lower id, so
results are deterministic. A row with fewer than k results is padded with id -1 and score -inf, as
FAISS does. `remove(ids)` drops rows by mask and compacts the arrays, so a search never visits them.

`exclude` (q,) int64 removes one id per query from its results (-1: none; an id not held leaves
nothing out), for corpora that contain their own queries. `among` (ids, any order) restricts every
query's results to those ids (a filter, applied before the top k is taken, as FAISS's IDSelector):
a search returns k of them whenever k are held.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hashing import DEFAULT_SHORTLIST_FACTOR, HASH_BITS
from hashing.arrays import read_arrays, save_folder

SCORE_BLOCK_CELLS = 1 << 24
"""Exhaustive search scores blocks of queries whose (queries x corpus) float32 matrix has at most
this many cells: large enough for BLAS to reuse each corpus row, bounded (64 MiB) for any batch."""

HAMMING_CHUNK = 1 << 16
"""Codes XORed and counted per step: the 512 KiB XOR buffer stays in the L2 cache."""

SAMPLE_HITS = 16
"""The Hamming cut is estimated from a sample expected to hold this many shortlisted codes..."""
SAMPLE_MIN = 4096
"""...and at least this many codes."""
CUT_SLACK = 8
"""An estimated cut gathering more than this many times the shortlist is refined on what it gathered."""

EXHAUSTIVE_FORMAT = "exhaustive-cosine/1"
"""A folder (hashing.arrays) of ids, the rows as given, their norms and, if given, the codes."""

_EXCLUDED = np.uint8(255)  # a Hamming distance above any real one, so excluded ids never qualify


def check_k(k: int) -> int:
    """k as an int; a ValueError unless it is a whole number >= 1."""
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k={k!r} must be a whole number >= 1")
    return int(k)


def empty_results(n_queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of padding: scores -inf, ids -1."""
    return np.full((n_queries, k), -np.inf, dtype=np.float32), np.full((n_queries, k), -1, dtype=np.int64)


class ExhaustiveCosineIndex:
    """Cosine similarity of every query to every embedding; the exact reference. Codes given to
    `add` are kept beside the embeddings (not searched), so that a hit can be explained by its
    Hamming distance too.

    The embeddings are kept as given (float32) with their norms, not normalised: `rows_of` gives
    them back as they came, so that a holder needs no copy of its own, and a normalised copy would
    not give the same bits back. The search scores every row as (query . row) / norm to
    preselect, then the candidates' unit rows, divided exactly as a normalised copy would have
    been, give the exact scores and order."""

    def __init__(self) -> None:
        self._rows = np.zeros((0, 0), dtype=np.float32)
        self._norms = np.zeros(0, dtype=np.float32)
        self._ids = np.zeros(0, dtype=np.int64)
        self._codes: np.ndarray | None = None

    @property
    def ntotal(self) -> int:
        return len(self._rows)

    @property
    def ids(self) -> np.ndarray:
        """The ids held, ascending."""
        return self._ids

    @property
    def has_codes(self) -> bool:
        """Whether every row came with its code."""
        return self._codes is not None and self.ntotal > 0

    def add(self, ids: np.ndarray | None, embeddings: np.ndarray, codes: np.ndarray | None = None) -> None:
        """Take in (n,) ids, none of them held (None: continuing from the highest id held), with
        their (n, d) embeddings and, optionally, their (n,) uint64 codes."""
        rows, norms = _rows_and_norms(embeddings, "embeddings", self._rows.shape[1] if self.ntotal else None)
        held_codes = self._codes if self.ntotal else np.zeros(0, dtype=np.uint64)
        self._ids, order = merge_ids(self._ids, ids, len(rows), "ExhaustiveCosineIndex")
        self._rows = _merged_rows(self._rows, rows, order)
        self._norms = _merged_rows(self._norms, norms, order)
        if codes is not None and held_codes is not None and len(codes) == len(rows):
            self._codes = _merged_rows(held_codes, np.asarray(codes, dtype=np.uint64), order)
        else:
            self._codes = None

    def remove(self, ids: np.ndarray) -> None:
        """Drop the rows of `ids`; an id not held is a ValueError naming it."""
        keep = kept_rows(self._ids, ids, "ExhaustiveCosineIndex")
        self._ids, self._rows, self._norms = self._ids[keep], self._rows[keep], self._norms[keep]
        if self._codes is not None:
            self._codes = self._codes[keep]

    def embeddings_of(self, ids: np.ndarray) -> np.ndarray:
        """The (unit) embeddings of held ids (a LookupError for an id not held)."""
        rows = _rows_of(self._ids, ids, "ExhaustiveCosineIndex")
        return self._rows[rows] / self._norms[rows, None]

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """The embeddings of held ids as `add` was given them, in float32 (a LookupError for an
        id not held)."""
        return self._rows[_rows_of(self._ids, ids, "ExhaustiveCosineIndex")]

    def codes_of(self, ids: np.ndarray) -> np.ndarray:
        """The codes of held ids (a LookupError without codes or for an id not held)."""
        if self._codes is None:
            raise LookupError("ExhaustiveCosineIndex: the rows were added without codes")
        return self._codes[_rows_of(self._ids, ids, "ExhaustiveCosineIndex")]

    @property
    def nbytes(self) -> int:
        """Bytes of every array the index holds."""
        return self._rows.nbytes + self._norms.nbytes + self._ids.nbytes + (0 if self._codes is None else self._codes.nbytes)

    def save(self, path: str | Path) -> Path:
        """Write the index into folder `path` atomically (hashing.arrays); `load` reads it back."""
        return save_folder(path, *self.to_arrays())

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict]:
        """(arrays, meta) of the index as it is now, for hashing.arrays.write_arrays: its own
        arrays, which changes replace and never rewrite (so this is cheap)."""
        arrays: dict[str, np.ndarray] = {"ids": self._ids, "rows": self._rows, "norms": self._norms}
        if self._codes is not None:
            arrays["codes"] = self._codes
        return arrays, {"format": EXHAUSTIVE_FORMAT}

    @classmethod
    def load(cls, path: str | Path, *, mmap: bool = False) -> ExhaustiveCosineIndex:
        """An index `save` wrote; ValueError naming the folder if it is damaged or of another kind.
        `mmap`: its arrays map the files (hashing.arrays; the index never writes into its arrays)."""
        path = Path(path)
        arrays, meta = read_arrays(path, {"ids": ("int64", 1), "rows": ("float32", 2), "norms": ("float32", 1),
                                          "codes": ("uint64", 1)}, optional=("codes",), mmap=mmap)
        if meta.get("format") != EXHAUSTIVE_FORMAT:
            raise ValueError(f"{path}: not an exhaustive index of format {EXHAUSTIVE_FORMAT} (found {meta.get('format')})")
        ids, rows, norms, codes = arrays["ids"], arrays["rows"], arrays["norms"], arrays.get("codes")
        if len(rows) != len(ids) or len(norms) != len(ids) or (codes is not None and len(codes) != len(ids)):
            raise ValueError(f"{path}: {len(ids)} ids but {len(rows)} embeddings and {len(norms)} norms"
                             f"{'' if codes is None else f' and {len(codes)} codes'}")
        if len(ids) and (ids[0] < 0 or (np.diff(ids) <= 0).any()):
            raise ValueError(f"{path}: the ids are not ascending database ids")
        if not ((norms > 0) & (norms < np.inf)).all():
            raise ValueError(f"{path}: the norms are not all finite and positive")
        index = cls()
        index._ids, index._rows, index._norms, index._codes = ids, rows, norms, codes
        return index

    def search(
        self, queries: np.ndarray, k: int, exclude: np.ndarray | None = None, among: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        queries = _unit_rows(queries, "queries", self._rows.shape[1] if self.ntotal else None)
        exclude = _positions(self._ids, _check_exclude(exclude, len(queries)))
        scores, ids = empty_results(len(queries), check_k(k))
        if not self.ntotal:
            return scores, ids
        eligible = _eligible(self._ids, among)
        exclude = np.where((exclude >= 0) & eligible[np.maximum(exclude, 0)], exclude, -1)
        # The division by the norm rounds once more than a product with unit rows would: a few
        # float32 epsilons on top of the BLAS margin.
        margin = _score_margin(queries.shape[1]) + 4.0 * float(np.finfo(np.float32).eps)
        for rows in _blocks(len(queries), self.ntotal):
            sims = queries[rows] @ self._rows.T
            sims /= self._norms
            _exclude_rows(sims, exclude[rows], -np.inf)
            sims[:, ~eligible] = -np.inf
            n_take = np.minimum(k, int(eligible.sum()) - (exclude[rows] >= 0))
            thresholds = _kth_largest(sims, n_take)
            for r, row in enumerate(sims):
                if n_take[r]:
                    # BLAS rounds differently at its block edges, so its scores only preselect
                    # everything that could be in the top k; _cosines then gives the exact order.
                    near = np.flatnonzero((row >= thresholds[r] - margin) & (row > -np.inf))
                    i = rows.start + r
                    ids[i, : n_take[r]], scores[i, : n_take[r]] = _rank(
                        near, _cosines(self._rows[near] / self._norms[near, None], queries[i]), n_take[r]
                    )
        return scores, _held_ids(self._ids, ids)


class HammingCosineIndex:
    """Barz & Denzler's retrieval: a Hamming-distance shortlist over binary codes, re-ranked by the
    cosine of the embeddings.

    Distances are small integers (0..n_bits), so the shortlist is cut by counting instead of a
    partial sort of the corpus: cumulative counts over a sample of the distances estimate the cut,
    one pass gathers the ids within it, and only those are sorted (a bisection over counts repairs
    an estimate that gathers too few or far too many). Queries run one at a time, vectorised over
    the corpus, which keeps each query's distances in cache from the XOR to the cut.
    """

    def __init__(self, n_bits: int = HASH_BITS, shortlist_factor: int = DEFAULT_SHORTLIST_FACTOR) -> None:
        if not 0 < n_bits <= 64:
            raise ValueError(f"HammingCosineIndex: n_bits must be 1..64 (one uint64 per code), got {n_bits}")
        if shortlist_factor < 1:
            raise ValueError(f"HammingCosineIndex: shortlist_factor must be >= 1, got {shortlist_factor}")
        self.n_bits = n_bits
        self.shortlist_factor = shortlist_factor
        self._embeddings = np.zeros((0, 0), dtype=np.float32)
        self._codes = np.zeros(0, dtype=np.uint64)
        self._ids = np.zeros(0, dtype=np.int64)

    @property
    def ntotal(self) -> int:
        return len(self._codes)

    @property
    def ids(self) -> np.ndarray:
        """The ids held, ascending."""
        return self._ids

    def add(self, ids: np.ndarray | None, embeddings: np.ndarray, codes: np.ndarray) -> None:
        """Take in (n,) ids, none of them held (None: continuing from the highest id held), with
        their (n, d) embeddings and (n,) uint64 codes (see hashing.codes)."""
        codes = check_codes(codes, self.n_bits, f"{type(self).__name__}: codes")
        if len(codes) != len(embeddings):
            raise ValueError(
                f"HammingCosineIndex.add: {len(embeddings)} embeddings but {len(codes)} codes; "
                "pass one code per embedding"
            )
        rows = _unit_rows(embeddings, "embeddings", self._embeddings.shape[1] if self.ntotal else None)
        self._ids, order = merge_ids(self._ids, ids, len(rows), "HammingCosineIndex")
        self._embeddings = _merged_rows(self._embeddings, rows, order)
        self._codes = _merged_rows(self._codes, codes, order)

    def remove(self, ids: np.ndarray) -> None:
        """Drop the rows of `ids`; an id not held is a ValueError naming it."""
        keep = kept_rows(self._ids, ids, "HammingCosineIndex")
        self._ids, self._embeddings, self._codes = self._ids[keep], self._embeddings[keep], self._codes[keep]

    def embeddings_of(self, ids: np.ndarray) -> np.ndarray:
        """The (unit) embeddings of held ids (a LookupError for an id not held)."""
        return self._embeddings[_rows_of(self._ids, ids, "HammingCosineIndex")]

    def codes_of(self, ids: np.ndarray) -> np.ndarray:
        """The codes of held ids (a LookupError for an id not held)."""
        return self._codes[_rows_of(self._ids, ids, "HammingCosineIndex")]

    def search(
        self,
        query_embeddings: np.ndarray,
        k: int,
        *,
        query_codes: np.ndarray,
        shortlist: int | None = None,
        exclude: np.ndarray | None = None,
        among: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The `shortlist` (default shortlist_factor * k) codes nearest in Hamming distance, ties to
        the lower id, re-ranked by cosine; the best k of them (of the ids `among`, when given)."""
        k = check_k(k)
        shortlist = self.shortlist_factor * k if shortlist is None else shortlist
        if shortlist < k:
            raise ValueError(f"HammingCosineIndex.search: shortlist ({shortlist}) must be >= k ({k})")
        queries = _unit_rows(query_embeddings, "query_embeddings", self._embeddings.shape[1] if self.ntotal else None)
        query_codes = check_codes(query_codes, self.n_bits, f"{type(self).__name__}: query_codes")
        if len(query_codes) != len(queries):
            raise ValueError(
                f"HammingCosineIndex.search: {len(queries)} query embeddings but {len(query_codes)} "
                "query codes; pass one code per query"
            )
        exclude = _positions(self._ids, _check_exclude(exclude, len(queries)))
        scores, ids = empty_results(len(queries), k)
        if not self.ntotal:
            return scores, ids
        eligible = None if among is None else _eligible(self._ids, among)
        n_eligible = self.ntotal if eligible is None else int(eligible.sum())
        distances = np.empty(self.ntotal, dtype=np.uint8)
        buffer = np.empty(min(HAMMING_CHUNK, self.ntotal), dtype=np.uint64)
        for i in range(len(queries)):
            _hamming_row(self._codes, query_codes[i], distances, buffer)
            n_take = min(shortlist, n_eligible)
            if eligible is not None:
                distances[~eligible] = _EXCLUDED
            if exclude[i] >= 0 and distances[exclude[i]] != _EXCLUDED:
                distances[exclude[i]] = _EXCLUDED
                n_take = min(shortlist, n_eligible - 1)
            if n_take:
                near = self._nearest(distances, n_take)
                top = min(k, n_take)
                ids[i, :top], scores[i, :top] = _rank(near, _cosines(self._embeddings[near], queries[i]), k)
        return scores, _held_ids(self._ids, ids)

    def _nearest(self, distances: np.ndarray, n_take: int) -> np.ndarray:
        """Ascending ids of the n_take smallest distances, the lower ids first among equal ones."""
        # Distances are integers 0..n_bits, so cumulative counts over a strided sample estimate the
        # cut t; one pass then gathers everything within t, and only that short list is sorted.
        stride = max(1, min(n_take // SAMPLE_HITS, len(distances) // SAMPLE_MIN))
        sampled = np.bincount(distances[::stride], minlength=self.n_bits + 1)[: self.n_bits + 1]
        t = min(int(np.searchsorted(np.cumsum(sampled) * stride, n_take)), self.n_bits)
        ids = np.flatnonzero(distances <= t)
        if len(ids) < n_take:  # the sample over-counted the near codes: find the cut by counting
            ids = np.flatnonzero(distances <= _smallest_cut(distances, n_take, t, self.n_bits))
        elif len(ids) > CUT_SLACK * n_take:  # it under-counted: cut the gathered ids, not the corpus
            gathered = distances[ids]
            ids = ids[gathered <= _smallest_cut(gathered, n_take, -1, t)]
        nearest = ids[np.argsort(distances[ids], kind="stable")[:n_take]]
        return np.sort(nearest)


def _same(own: np.ndarray, given: np.ndarray, what: str) -> np.ndarray:
    """`given` if it equals `own` in dtype, shape and values; ValueError otherwise."""
    if given.dtype != own.dtype or not np.array_equal(given, own):
        raise ValueError(f"share: the {what} given are not the index's own")
    return given


def check_codes(codes: np.ndarray, n_bits: int, what: str) -> np.ndarray:
    """`codes` as a 1-D uint64 array of `n_bits`-bit codes; a ValueError naming `what` otherwise."""
    codes = np.asarray(codes)
    if codes.ndim != 1 or codes.dtype != np.uint64:
        raise ValueError(f"{what} must be a 1-D uint64 array (hashing.codes.pack_bits), got {codes.dtype} of shape "
                         f"{codes.shape}")
    if n_bits < 64 and codes.size and (codes >> np.uint64(n_bits)).any():
        bad = int(np.flatnonzero(codes >> np.uint64(n_bits))[0])
        raise ValueError(f"{what}[{bad}] = {int(codes[bad]):#x} has bits above the index's {n_bits}; build the index "
                         "with the codes' n_bits")
    return codes


def hamming_distances(codes: np.ndarray, query_codes: np.ndarray) -> np.ndarray:
    """(q, n) uint8 Hamming distances between (q,) query codes and (n,) codes, both uint64."""
    out = np.empty((len(query_codes), len(codes)), dtype=np.uint8)
    buffer = np.empty(min(HAMMING_CHUNK, len(codes)), dtype=np.uint64)
    for row, query in zip(out, query_codes):
        _hamming_row(codes, query, row, buffer)
    return out


def _hamming_row(codes: np.ndarray, query: np.uint64, out: np.ndarray, buffer: np.ndarray) -> None:
    for start in range(0, len(codes), len(buffer)):
        stop = min(start + len(buffer), len(codes))
        xor = np.bitwise_xor(codes[start:stop], query, out=buffer[: stop - start])
        np.bitwise_count(xor, out=out[start:stop])


def _smallest_cut(distances: np.ndarray, n_take: int, lo: int, hi: int) -> int:
    """The smallest t in (lo, hi] with at least n_take distances <= t, by bisection over counts;
    requires count(<= lo) < n_take <= count(<= hi)."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if np.count_nonzero(distances <= mid) >= n_take:
            hi = mid
        else:
            lo = mid
    return hi


def _kth_largest(scores: np.ndarray, n_take: np.ndarray) -> np.ndarray:
    """Per row, the n_take-th largest score (rows with n_take == 0 get -inf)."""
    positions = np.unique(scores.shape[1] - n_take[n_take > 0])
    if not len(positions):
        return np.full(len(scores), -np.inf, dtype=scores.dtype)
    parted = np.partition(scores, positions, axis=1)
    at = np.minimum(scores.shape[1] - n_take, scores.shape[1] - 1)
    return np.take_along_axis(parted, at[:, None], axis=1)[:, 0]


def _cosines(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Dot products of unit rows with a unit query. einsum sums every row in the same order, so
    equal vectors get equal scores wherever they are stored (BLAS gemv/gemm do not)."""
    return np.einsum("nd,d->n", vectors, query)


def _rank(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best k of ascending `ids` by score, the lower id first among equal scores."""
    order = np.argsort(-scores, kind="stable")[:k]
    return ids[order], scores[order]


def _score_margin(dim: int) -> float:
    """How far below the k-th best BLAS score a top-k item's BLAS score can be. Any float32 dot
    product of unit vectors is within dim * eps / 2 of the exact value (Higham's gamma_n), so two
    computations of one cosine differ by at most dim * eps; the k-th best moves by that much, and
    each item by that much again."""
    return 2.0 * dim * float(np.finfo(np.float32).eps)


def _eligible(held: np.ndarray, among: np.ndarray | None) -> np.ndarray:
    """(n,) bool: the held rows whose ids are in `among` (None: every row)."""
    if among is None:
        return np.ones(len(held), dtype=bool)
    rows = _positions(held, np.asarray(among, dtype=np.int64).ravel())
    eligible = np.zeros(len(held), dtype=bool)
    eligible[rows[rows >= 0]] = True
    return eligible


def _exclude_rows(keys: np.ndarray, exclude: np.ndarray, worst) -> None:
    rows = np.flatnonzero(exclude >= 0)
    keys[rows, exclude[rows]] = worst


def _blocks(n_queries: int, n_corpus: int):
    step = max(1, SCORE_BLOCK_CELLS // max(1, n_corpus))
    return (slice(s, min(s + step, n_queries)) for s in range(0, n_queries, step))


def _check_exclude(exclude: np.ndarray | None, n_queries: int) -> np.ndarray:
    """(q,) int64 ids to leave out per query, -1 for none."""
    if exclude is None:
        return np.full(n_queries, -1, dtype=np.int64)
    exclude = np.asarray(exclude)
    if exclude.shape != (n_queries,) or not np.issubdtype(exclude.dtype, np.integer):
        raise ValueError(
            f"search: exclude must be an integer array of shape ({n_queries},), one id per query "
            f"(-1 for none), got {exclude.dtype} of shape {exclude.shape}"
        )
    bad = np.flatnonzero(exclude < -1)
    if len(bad):
        raise ValueError(f"search: exclude[{bad[0]}] = {exclude[bad[0]]} is not an id (>= 0) nor -1 (none)")
    return exclude.astype(np.int64)


def _check_exclusions(exclude: np.ndarray | None, n_queries: int) -> np.ndarray:
    """(q, e) int64 ids to leave out per query (-1 pads), from (q,) one id per query or (q, e)."""
    if exclude is not None and np.ndim(exclude) == 2:
        rows = np.asarray(exclude)
        if rows.shape[0] != n_queries:
            raise ValueError(f"search: exclude has {rows.shape[0]} rows for {n_queries} queries")
        return _check_exclude(rows.ravel(), rows.size).reshape(rows.shape)
    return _check_exclude(exclude, n_queries)[:, None]


def _positions(held: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Row of each id in the ascending `held` ids; -1 for -1 and for an id not held."""
    if not len(held):
        return np.full(len(ids), -1, dtype=np.int64)
    at = np.minimum(np.searchsorted(held, ids), len(held) - 1)
    return np.where((ids >= 0) & (held[at] == ids), at, -1)


def _rows_of(held: np.ndarray, ids: np.ndarray, what: str) -> np.ndarray:
    """Rows of held ids; LookupError naming one not held."""
    ids = np.asarray(ids, dtype=np.int64)
    rows = _positions(held, ids)
    if (rows < 0).any():
        raise LookupError(f"{what}: id {int(ids[rows < 0][0])} is not held")
    return rows


def _held_ids(held: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The ids at result rows, keeping -1 padding."""
    if not len(held):
        return rows
    return np.where(rows >= 0, held[np.maximum(rows, 0)], -1)


def _check_ids(ids: np.ndarray, what: str) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(f"{what}: ids must be a 1-D integer array, got {ids.dtype} of shape {ids.shape}")
    ids = ids.astype(np.int64)
    if ids.size and ids.min() < 0:
        raise ValueError(f"{what}: id {int(ids.min())} is negative; ids are database image ids (>= 0)")
    return ids


def merge_ids(held: np.ndarray, new: np.ndarray | None, n: int, what: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The held ids with `new` ones (default: continuing from the highest held) in ascending order,
    and the order that sorts the concatenated rows (None: appending keeps them sorted)."""
    start = int(held[-1]) + 1 if len(held) else 0
    new = np.arange(start, start + n, dtype=np.int64) if new is None else _check_ids(new, f"{what}.add")
    if len(new) != n:
        raise ValueError(f"{what}.add: {n} rows but {len(new)} ids; pass one id per row")
    if len(np.unique(new)) != len(new):
        values, counts = np.unique(new, return_counts=True)
        raise ValueError(f"{what}.add: id {int(values[counts > 1][0])} is given twice")
    held_again = new[np.isin(new, held)]
    if len(held_again):
        raise ValueError(f"{what}.add: id {int(held_again[0])} is already held; remove it first")
    ids = np.concatenate([held, new])
    if not len(new) or ((not len(held) or new[0] > held[-1]) and (np.diff(new) > 0).all()):
        return ids, None
    order = np.argsort(ids, kind="stable")
    return ids[order], order


def _merged_rows(existing: np.ndarray, new: np.ndarray, order: np.ndarray | None) -> np.ndarray:
    rows = np.concatenate([existing, new]) if len(existing) else new
    return rows if order is None else rows[order]


def kept_rows(held: np.ndarray, ids: np.ndarray, what: str) -> np.ndarray:
    """The mask of held rows that stay when `ids` go; ValueError naming ids not held."""
    ids = _check_ids(ids, f"{what}.remove")
    missing = ids[~np.isin(ids, held)]
    if len(missing):
        raise ValueError(
            f"{what}.remove: {len(missing)} ids are not held (first: {int(missing[0])}); "
            "remove only images the index holds"
        )
    return ~np.isin(held, ids)


def _unit_rows(x: np.ndarray, what: str, dim: int | None = None) -> np.ndarray:
    x, norms = _rows_and_norms(x, what, dim)
    return x / norms[:, None]


def _rows_and_norms(x: np.ndarray, what: str, dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(x as float32, its rows' float32 norms), checked: `_unit_rows` is x / norms[:, None]."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or (dim and x.shape[1] != dim):
        want = f"(n, {dim})" if dim else "(n, d)"
        raise ValueError(f"{what} must have shape {want}, got {x.shape}; reshape one vector to (1, d)")
    norms = np.sqrt(np.einsum("nd,nd->n", x, x))
    usable = (norms > 0) & (norms < np.inf)  # NaN fails both
    if not usable.all():
        bad = np.flatnonzero(~usable)[0]
        raise ValueError(f"{what}[{bad}] has norm {norms[bad]}; cosine needs finite, non-zero vectors")
    return x, norms
