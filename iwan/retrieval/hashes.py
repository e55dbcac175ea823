"""`hashes`: Barz & Denzler's retrieval, a Hamming shortlist over binary codes re-ranked by cosine.

Built from the stored codes and embeddings of a hash model (iwan/db/codes.py) over a corpus; wraps
`hashing.search.HammingCosineIndex`, which holds rows by database id.
"""

from __future__ import annotations

import numpy as np

from hashing.search import HammingCosineIndex
from iwan.config import DEFAULT_SHORTLIST_FACTOR
from iwan.retrieval import Batch, Corpus, register_retriever


class HashesRetriever:
    name = "hashes"
    reads = ("embeddings", "codes")
    """The fields of a query batch (and of added images) this method reads."""

    def __init__(self, index: HammingCosineIndex):
        self.index = index

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    def add(self, image_ids: np.ndarray, images: Batch) -> None:
        images.need("embeddings", "codes", method=self.name)
        self.index.add(images.embeddings, images.codes, ids=image_ids)

    def remove(self, image_ids: np.ndarray) -> None:
        self.index.remove(image_ids)

    def search(self, queries: Batch, k: int, *, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        queries.need("embeddings", "codes", method=self.name)
        return self.index.search(queries.embeddings, k, query_codes=queries.codes, exclude=exclude)


@register_retriever("hashes")
def build(engine, corpus: Corpus, *, shortlist_factor: int = DEFAULT_SHORTLIST_FACTOR) -> HashesRetriever:
    from iwan.retrieval.queries import stored_codes

    embeddings, codes = stored_codes(engine, corpus, corpus.image_ids, method="hashes")
    index = HammingCosineIndex(shortlist_factor=shortlist_factor)
    if len(corpus.image_ids):
        index.add(embeddings, codes, ids=corpus.image_ids)
    return HashesRetriever(index)
