"""`hashes`: Barz & Denzler's retrieval, a Hamming shortlist over binary codes re-ranked by cosine.

Built from the corpus images' embeddings and codes (a hash model's); wraps
`hashing.search.HammingCosineIndex`, which holds rows by database id.
"""

from __future__ import annotations

import numpy as np

from hashing.search import HammingCosineIndex, hamming_distances
from iwan.config import DEFAULT_SHORTLIST_FACTOR
from iwan.retrieval.protocol import Batch, CorpusData, Explained
from iwan.retrieval.registry import Corpus, register_retriever, require_hash_model

READS: tuple[str, ...] = ("embeddings", "codes")


class HashesRetriever:
    name = "hashes"
    reads = READS

    def __init__(self, index: HammingCosineIndex):
        self.index = index

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    def add(self, image_ids: np.ndarray, images: Batch) -> None:
        embeddings, codes = images.need(*READS, method=self.name)
        self.index.add(image_ids, embeddings, codes)

    def remove(self, image_ids: np.ndarray) -> None:
        self.index.remove(image_ids)

    def search(self, queries: Batch, k: int, *, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        embeddings, codes = queries.need(*READS, method=self.name)
        return self.index.search(embeddings, k, query_codes=codes, exclude=exclude)

    def explain(self, queries: Batch, k: int, *, exclude: np.ndarray | None = None) -> Explained:
        """Each hit's Hamming distance to the query's code and its cosine (the score)."""
        scores, ids = self.search(queries, k, exclude=exclude)
        return Explained(scores, ids, code_reasons(scores, ids, queries.codes, self.index.codes_of))


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
def build(corpus: Corpus, data: CorpusData, *, shortlist_factor: int = DEFAULT_SHORTLIST_FACTOR) -> HashesRetriever:
    require_hash_model(corpus, "hashes")
    index = HammingCosineIndex(shortlist_factor=shortlist_factor)
    if len(corpus.image_ids):
        embeddings, codes = data.images(corpus.image_ids, READS).need(*READS, method="hashes")
        index.add(corpus.image_ids, embeddings, codes)
    return HashesRetriever(index)
