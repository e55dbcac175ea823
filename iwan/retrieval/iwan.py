"""`iwan`: images ranked by their shortest-path distance from the query words in the image-word
association network (iwan.network.index.IwanIndex, live: images are added and removed in place).

Built from the norm set's associations and the corpus images' words (their predictor's top classes
mapped onto the norms' words, with the probabilities as weights). Queries and added images are
batches of word ids and weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hashing.search import check_k
from iwan.network.index import IwanIndex
from iwan.retrieval.protocol import WORD_FIELDS, Batch, CorpusData, Explained
from iwan.retrieval.registry import Corpus, register_retriever, require_predictor


class IwanRetriever:
    name = "iwan"
    reads: tuple[str, ...] = WORD_FIELDS

    def __init__(self, index: IwanIndex, unmapped_classes: Sequence[str] = ()):
        self.index = index
        self.unmapped_classes = list(unmapped_classes)
        """The predictor's classes that map to no word (reported by evaluations)."""

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    def add(self, image_ids: np.ndarray, images: Batch) -> None:
        word_ids, weights = images.need(*WORD_FIELDS, method=self.name)
        self.index.add(np.asarray(image_ids, dtype=np.int64), word_ids, weights)

    def remove(self, image_ids: np.ndarray) -> None:
        self.index.remove(np.asarray(image_ids, dtype=np.int64))

    def search(self, queries: Batch, k: int, *, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """scores = -distance; a query without a usable word gets a row of padding."""
        word_ids, weights = queries.need(*WORD_FIELDS, method=self.name)
        return self.index.search(word_ids, weights, check_k(k), exclude=exclude)

    def explain(self, queries: Batch, k: int, *, exclude: np.ndarray | None = None) -> Explained:
        """Each hit's distance and word path ("CAT", "image 12", "DOG"), from the same search."""
        word_ids, weights = queries.need(*WORD_FIELDS, method=self.name)
        scores, ids, paths = self.index.search(word_ids, weights, check_k(k), exclude=exclude, paths=True)
        reasons = [
            [{"distance": float(-s), "path": self.index.path_labels(p)} if i >= 0 else {}
             for s, i, p in zip(row_scores.tolist(), row_ids.tolist(), row_paths)]
            for row_scores, row_ids, row_paths in zip(scores, ids, paths)
        ]
        return Explained(scores, ids, reasons)


@register_retriever("iwan")
def build(corpus: Corpus, data: CorpusData) -> IwanRetriever:
    from iwan.network.graph import build_graph
    from iwan.network.saved import check_top_iwk

    require_predictor(corpus, "iwan")
    check_top_iwk(corpus.top_iwk)
    word_ids, weights = data.images(corpus.image_ids, WORD_FIELDS).need(*WORD_FIELDS, method="iwan")
    graph = build_graph(data.associations(), word_ids, weights, top_wwk=corpus.top_wwk,
                        strength=corpus.strength, image_ids=np.asarray(corpus.image_ids, dtype=np.int64))
    return IwanRetriever(IwanIndex(graph), data.unmapped_classes)
