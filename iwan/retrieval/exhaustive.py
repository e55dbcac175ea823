"""`exhaustive`: the cosine of every query embedding to every image embedding, the exact reference.

Built from the stored embeddings of a hash model (iwan/db/codes.py) over a corpus; wraps
`hashing.search.ExhaustiveCosineIndex`, which holds rows by database id.
"""

from __future__ import annotations

import numpy as np

from hashing.search import ExhaustiveCosineIndex
from iwan.retrieval import Batch, Corpus, register_retriever


class ExhaustiveRetriever:
    name = "exhaustive"
    reads = ("embeddings",)
    """The fields of a query batch (and of added images) this method reads."""

    def __init__(self, index: ExhaustiveCosineIndex):
        self.index = index

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    def add(self, image_ids: np.ndarray, images: Batch) -> None:
        images.need("embeddings", method=self.name)
        self.index.add(images.embeddings, ids=image_ids)

    def remove(self, image_ids: np.ndarray) -> None:
        self.index.remove(image_ids)

    def search(self, queries: Batch, k: int, *, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        queries.need("embeddings", method=self.name)
        return self.index.search(queries.embeddings, k, exclude=exclude)


@register_retriever("exhaustive")
def build(engine, corpus: Corpus) -> ExhaustiveRetriever:
    from iwan.retrieval.queries import stored_codes

    embeddings, _ = stored_codes(engine, corpus, corpus.image_ids, method="exhaustive")
    index = ExhaustiveCosineIndex()
    if len(corpus.image_ids):
        index.add(embeddings, ids=corpus.image_ids)
    return ExhaustiveRetriever(index)
