"""`hashes`: Barz & Denzler's retrieval, the cosine of a hash model's embeddings, searched at scale.

Built from the corpus images' embeddings and codes (a hash model's); wraps
`hashing.cells.CellCosineIndex`, which holds rows by database id: int8 embeddings in k-means
cells, visited until the top k is stable (recall@100 against exhaustive cosine 0.95 or more where
a fixed Hamming shortlist fell to 0.30 at 1M images; that module's doc says why the search is no
longer a Hamming shortlist). The codes explain each hit (its Hamming distance to the query's code).

A query of several examples (`explain_examples`, here and in `exhaustive`) is one Rocchio query:
the mean of the positives' unit embeddings minus ROCCHIO_NEGATIVE_WEIGHT times the negatives',
and its code bit by bit the same over the codes' bits as +1/-1 (a tie keeps the bit of the
positive nearest the query embedding), which the hits' Hamming distances are measured from. A hit's `example` is the positive whose embedding is nearest to the hit's (cosine).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, cast

import numpy as np

from hashing import HASH_BITS
from hashing.cells import DEFAULT_PATIENCE, CellCosineIndex
from hashing.codes import pack_bits
from hashing.search import check_k, empty_results, hamming_distances
from iwan.config import DEFAULT_SHORTLIST_FACTOR, ROCCHIO_NEGATIVE_WEIGHT
from iwan.retrieval.protocol import Batch, CorpusData, Examples, Explained
from iwan.retrieval.registry import Corpus, register_retriever, require_hash_model

READS: tuple[str, ...] = ("embeddings", "codes")


class CellRetrieval:
    """The explanations and queries of several examples of a retriever over a cell index
    (`index`, a CellSearch): `hashes`, and a collection's `exhaustive` over the same index."""

    name: str
    reads: tuple[str, ...]
    index: CellSearch

    def search(self, queries: Batch, k: int, *, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        embeddings = queries.need(*self.reads, method=self.name)[0]  # the codes, if read: for the explanations
        return self.index.search(embeddings, check_k(k), exclude=exclude)

    def explain(self, queries: Batch, k: int, *, exclude: np.ndarray | None = None) -> Explained:
        """Each hit's cosine (the score) and, where the query has a code, its Hamming distance."""
        scores, ids = self.search(queries, k, exclude=exclude)
        return Explained(scores, ids, code_reasons(scores, ids, queries.codes, self.index.codes_of))

    def explain_examples(self, examples: Examples, k: int, *, among: np.ndarray | None = None,
                         exclude: np.ndarray | None = None) -> Explained:
        """The Rocchio query's nearest by cosine (the module doc); its code from the positives'
        (required where the method reads codes)."""
        with_code = "codes" in self.reads or examples.positive.codes is not None
        query = rocchio_query(examples, self.name, with_code=with_code)
        (embeddings,) = query.need("embeddings", method=self.name)
        # The cells leave out several ids per query themselves: no mask over every id held.
        leave = None if exclude is None or not len(exclude) else np.asarray(exclude, dtype=np.int64)[None, :]
        scores, ids = self.index.search(embeddings, check_k(k), exclude=leave, among=among)
        reasons = code_reasons(scores, ids, query.codes, self.index.codes_of)
        return Explained(scores, ids, with_examples(reasons, ids, examples.positive, self.index.embeddings_of))

    def search_examples(self, queries: Sequence[Examples], k: int, *,
                        exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`explain_examples`'s scores and ids for many queries at once, without the reasons."""
        def search(embeddings, codes, leave, among):  # the codes only explain hits: none here
            return self.index.search(embeddings, k, exclude=leave, among=among)

        return rocchio_search(queries, check_k(k), exclude, self.name, self.index.ids, search, with_code=False,
                              several=True)


class HashesRetriever(CellRetrieval):
    name = "hashes"
    reads = READS
    index: CellCosineIndex

    def __init__(self, index: CellCosineIndex):
        self.index = index

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict]:
        """The index's arrays and settings (CellCosineIndex.to_arrays), for a snapshot."""
        return self.index.to_arrays()

    @classmethod
    def load(cls, folder: Path, *, mmap: bool = False) -> HashesRetriever:
        """The retriever of an index saved in `folder` (CellCosineIndex.load; `mmap`: its arrays map the files)."""
        return cls(CellCosineIndex.load(folder, mmap=mmap))

    def add(self, image_ids: np.ndarray, images: Batch) -> None:
        embeddings, codes = images.need(*READS, method=self.name)
        self.index.add(image_ids, embeddings, codes)

    def remove(self, image_ids: np.ndarray) -> None:
        self.index.remove(image_ids)


class CellSearch(Protocol):
    """What CellRetrieval reads of a cell index (hashing.cells: CellCosineIndex, CellScan)."""

    @property
    def ids(self) -> np.ndarray: ...

    def search(self, query_embeddings: np.ndarray, k: int, *, exclude: np.ndarray | None = None,
               among: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]: ...

    def codes_of(self, ids: np.ndarray) -> np.ndarray: ...

    def embeddings_of(self, ids: np.ndarray) -> np.ndarray: ...


def rocchio_query(examples: Examples, method: str, *, with_code: bool) -> Batch:
    """One query's embedding (and code) from the examples (the module doc); one positive and no
    negative is that positive as it is."""
    (positive,) = examples.positive.need("embeddings", method=method)
    if len(positive) == 1 and not examples.has_negative:
        return Batch(embeddings=positive, codes=examples.positive.codes if with_code else None)
    vector = _unit(positive).mean(axis=0)
    if examples.has_negative:
        (negative,) = cast(Batch, examples.negative).need("embeddings", method=method)
        vector = vector - ROCCHIO_NEGATIVE_WEIGHT * _unit(negative).mean(axis=0)
    if not np.linalg.norm(vector) > 1e-6:
        raise ValueError("the negative examples cancel the positive ones: give other examples")
    code = None
    if with_code:
        (codes,) = examples.positive.need("codes", method=method)
        votes = _signs(codes).mean(axis=0)
        if examples.has_negative:
            (against,) = cast(Batch, examples.negative).need("codes", method=method)
            votes = votes - ROCCHIO_NEGATIVE_WEIGHT * _signs(against).mean(axis=0)
        central = int(np.argmax(_unit(positive) @ vector))  # the positive nearest the query embedding
        bits = np.where(votes == 0, _signs(codes[central:central + 1])[0] > 0, votes > 0)
        code = pack_bits(bits[None, :].astype(np.uint8))
    return Batch(embeddings=vector[None, :].astype(np.float32), codes=code)


def rocchio_search(queries: Sequence[Examples], k: int, exclude: np.ndarray | None, method: str, held: np.ndarray,
                   search, *, with_code: bool, several: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Many queries' Rocchio queries searched as `explain_examples` searches one. With `several`
    (an index that leaves out several ids per query), `search(embeddings, codes, exclude, None)`
    once with `exclude` (q, e) ids, -1 none; else once for the rows that leave out at most one id,
    and once per row that leaves out more (as an `among`)."""
    built = [rocchio_query(e, method, with_code=with_code) for e in queries]
    embeddings = np.concatenate([cast(np.ndarray, b.embeddings) for b in built])
    codes = np.concatenate([cast(np.ndarray, b.codes) for b in built]) if with_code else None
    q = len(built)
    if several:
        rows = None if exclude is None else np.asarray(exclude, np.int64).reshape(q, -1)
        return search(embeddings, codes, rows, None)
    skips = ([np.empty(0, np.int64)] * q if exclude is None
             else [row[row >= 0] for row in np.asarray(exclude, np.int64).reshape(q, -1)])
    scores, ids = empty_results(q, k)
    simple = np.array([r for r, skip in enumerate(skips) if len(skip) <= 1], dtype=np.int64)
    if len(simple):
        one = np.array([skips[r][0] if len(skips[r]) else -1 for r in simple], dtype=np.int64)
        scores[simple], ids[simple] = search(embeddings[simple], None if codes is None else codes[simple], one, None)
    for r in sorted(set(range(q)) - set(simple.tolist())):
        among, _ = filters(held, None, skips[r])
        scores[r], ids[r] = (a[0] for a in search(embeddings[r:r + 1], None if codes is None else codes[r:r + 1],
                                                 None, among))
    return scores, ids


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if not (norms > 0).all():
        raise ValueError("an example's embedding is zero: it points nowhere")
    return vectors / norms


def _signs(codes: np.ndarray) -> np.ndarray:
    """(n, HASH_BITS) +1/-1 of each code's bits, most significant first (hashing.codes's order)."""
    shifts = np.arange(HASH_BITS - 1, -1, -1, dtype=np.uint64)
    bits = (np.asarray(codes, dtype=np.uint64)[:, None] >> shifts) & np.uint64(1)
    return bits.astype(np.float64) * 2 - 1


def filters(held: np.ndarray, among: np.ndarray | None,
            exclude: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(among, exclude) for hashing.search: the ids a search may return (None: all `held`), and
    the one id to leave out (a stored example, without a filter to fold it into: no copy of the ids)."""
    if exclude is None or not len(exclude):
        return among, None
    if among is None and len(exclude) == 1:
        return None, np.asarray(exclude, dtype=np.int64)
    # A mask over the ids, not setdiff1d: that sorts (hashes) all of them, for a handful of examples.
    base = held if among is None else np.asarray(among, dtype=np.int64)
    return base[np.isin(base, exclude, invert=True)], None


def with_examples(reasons: list[list[dict]], ids: np.ndarray, positive: Batch, embeddings_of) -> list[list[dict]]:
    """`reasons` with each hit's `example`: the positive whose embedding is nearest the hit's."""
    if positive.embeddings is None:
        return reasons
    examples = _unit(positive.embeddings)
    for row, row_ids in zip(reasons, ids):
        found = row_ids >= 0
        if not found.any():
            continue
        nearest = (embeddings_of(row_ids[found]) @ examples.T).argmax(axis=1).tolist()
        for why, example in zip([r for r, ok in zip(row, found.tolist()) if ok], nearest):
            why["example"] = int(example)
    return reasons


def code_reasons(scores: np.ndarray, ids: np.ndarray, query_codes: np.ndarray | None, codes_of) -> list[list[dict]]:
    """{"hamming", "cosine"} of each hit (the cosine is the score; the Hamming distance when both
    the query and the index have codes)."""
    out = []
    for r, (row_scores, row_ids) in enumerate(zip(scores, ids)):
        found = row_ids >= 0
        codes = distances_to = None
        if query_codes is not None:
            codes = codes_of(row_ids[found])
            distances_to = hamming_to(codes, query_codes[r]).tolist()
        distances = iter(distances_to or [])
        row: list[dict] = []
        for score, ok in zip(row_scores.tolist(), found.tolist()):
            if not ok:
                row.append({})
                continue
            why = {"cosine": float(score)}
            if codes is not None:
                why = {"hamming": next(distances), **why}
            row.append(why)
        out.append(row)
    return out


def hamming_to(codes: np.ndarray, code) -> np.ndarray:
    return hamming_distances(np.asarray(codes, dtype=np.uint64), np.array([code], dtype=np.uint64))[0].astype(np.int64)


@register_retriever("hashes")
def build(corpus: Corpus, data: CorpusData, *, shortlist_factor: int = DEFAULT_SHORTLIST_FACTOR,
          patience: int = DEFAULT_PATIENCE) -> HashesRetriever:
    """`patience`: cells in a row that leave the top k unchanged before a search stops (more:
    higher recall, slower; hashing.cells)."""
    require_hash_model(corpus, "hashes")
    index = CellCosineIndex(shortlist_factor=shortlist_factor, patience=patience)
    if len(corpus.image_ids):
        embeddings, codes = data.images(corpus.image_ids, READS).need(*READS, method="hashes")
        index.add(corpus.image_ids, embeddings, codes)
    return HashesRetriever(index)
