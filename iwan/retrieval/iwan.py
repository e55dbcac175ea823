"""`iwan`: images ranked by their shortest-path distance from the query words in the image-word
association network (iwan.network.index.IwanIndex, live: images are added and removed in place).

Built from the database: the norms, the corpus's stored predictions of its predictor, and the
mapping of the predictor's classes onto the norms' words (iwan.network.saved). Queries and added images
are batches of word ids and weights (iwan.retrieval.queries makes them for stored images).
"""

from __future__ import annotations

import numpy as np

from iwan.retrieval import Batch, Corpus, check_k, register_retriever
from iwan.retrieval.queries import require_predictor
from iwan.network.index import IwanIndex, Query


class IwanRetriever:
    name = "iwan"
    reads = ("word_ids", "weights")
    """The fields of a query batch (and of added images) this method reads."""

    def __init__(self, index: IwanIndex, class_word_ids: np.ndarray, unmapped_classes: list[str] | None = None):
        self.index = index
        self.class_word_ids = class_word_ids
        """Word id of each of the predictor's classes (-1: none), for queries and added images."""
        self.unmapped_classes = list(unmapped_classes or [])

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    def add(self, image_ids: np.ndarray, images: Batch) -> None:
        images.need("word_ids", "weights", method=self.name)
        self.index.add(np.asarray(image_ids, dtype=np.int64), images.word_ids, images.weights)

    def remove(self, image_ids: np.ndarray) -> None:
        self.index.remove(np.asarray(image_ids, dtype=np.int64))

    def search(self, queries: Batch, k: int, *, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """scores = -distance; a query without a usable word gets a row of padding."""
        queries.need("word_ids", "weights", method=self.name)
        return self.index.search(queries.word_ids, queries.weights, check_k(k), exclude=exclude)

    def explain(self, query: Batch, image_ids: np.ndarray, exclude: int = -1) -> list[dict | None]:
        """For one query, each image's distance and word path ("CAT", "image 12", "DOG"); None for
        an image the query does not reach."""
        query.need("word_ids", "weights", method=self.name)
        start = Query.from_weights(query.word_ids[0], query.weights[0])
        wanted = [int(i) for i in image_ids]
        skip = () if exclude < 0 else (int(exclude),)
        k = max(1, len(wanted))
        while True:
            hits = {h.image_id: h for h in self.index.search_one(start, k, exclude=skip)}
            if all(i in hits for i in wanted) or len(hits) < k or k >= self.ntotal:
                break
            k = min(2 * k, self.ntotal)
        return [
            {"distance": hits[i].distance, "path": self.index.path_labels(hits[i].path)} if i in hits else None
            for i in wanted
        ]


@register_retriever("iwan")
def build(engine, corpus: Corpus) -> IwanRetriever:
    from iwan.network.saved import graph_of

    predictor = require_predictor(corpus, "iwan")
    graph, mapping = graph_of(
        engine, predictor, corpus.image_ids, top_iwk=corpus.top_iwk, top_wwk=corpus.top_wwk,
        strength=corpus.strength, source=corpus.source,
    )
    return IwanRetriever(IwanIndex(graph), mapping.word_ids, mapping.unmapped)
