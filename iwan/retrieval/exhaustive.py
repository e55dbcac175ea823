"""`exhaustive`: the cosine of every query embedding to every image embedding, the exact reference.

Built from the corpus images' embeddings (a hash model's); wraps
`hashing.search.ExhaustiveCosineIndex`, which holds rows by database id (and their codes, when
given, to explain a hit by its Hamming distance too): float32, exact, 400 bytes per image at 100
dimensions. That is what `iwan evaluate` measures the other methods against.

A live collection holds the `hashes` index anyway, and its int8 rows stand for the same
embeddings: there `exhaustive` is `CellScanRetriever`, every one of those rows scored
(hashing.cells.CellScan), holding nothing of its own (issue 18: 200 bytes per image for all the
methods together). Its scores are the int8 rows' cosines, as `hashes` gives them; its top 100
agrees with the float32 one at 0.99 (benchmarks/bench_scale.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hashing.cells import CellCosineIndex, CellScan
from hashing.search import ExhaustiveCosineIndex, check_k
from iwan.retrieval.hashes import (
    CellRetrieval,
    code_reasons,
    filters,
    rocchio_query,
    rocchio_search,
    with_examples,
)
from iwan.retrieval.protocol import Batch, CorpusData, Examples, Explained
from iwan.retrieval.registry import Corpus, register_retriever, require_hash_model


class ExhaustiveRetriever:
    name = "exhaustive"
    reads: tuple[str, ...] = ("embeddings",)

    def __init__(self, index: ExhaustiveCosineIndex):
        self.index = index

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    def add(self, image_ids: np.ndarray, images: Batch) -> None:
        (embeddings,) = images.need("embeddings", method=self.name)
        self.index.add(image_ids, embeddings, images.codes)

    def remove(self, image_ids: np.ndarray) -> None:
        self.index.remove(image_ids)

    def search(self, queries: Batch, k: int, *, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        (embeddings,) = queries.need("embeddings", method=self.name)
        return self.index.search(embeddings, k, exclude=exclude)

    def explain(self, queries: Batch, k: int, *, exclude: np.ndarray | None = None) -> Explained:
        """Each hit's cosine (the score) and, where codes are known, its Hamming distance."""
        scores, ids = self.search(queries, k, exclude=exclude)
        codes = queries.codes if self.index.has_codes else None
        return Explained(scores, ids, code_reasons(scores, ids, codes, self.index.codes_of))


    def explain_examples(self, examples: Examples, k: int, *, among: np.ndarray | None = None,
                         exclude: np.ndarray | None = None) -> Explained:
        """The cosine of every image to the Rocchio query (iwan.retrieval.hashes's module doc)."""
        query = rocchio_query(examples, self.name, with_code=self.index.has_codes and examples.positive.codes is not None)
        (embeddings,) = query.need("embeddings", method=self.name)
        among, one = filters(self.index.ids, among, exclude)
        scores, ids = self.index.search(embeddings, k, exclude=one, among=among)
        reasons = code_reasons(scores, ids, query.codes, self.index.codes_of)
        return Explained(scores, ids, with_examples(reasons, ids, examples.positive, self.index.embeddings_of))


    def search_examples(self, queries: Sequence[Examples], k: int, *,
                        exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`explain_examples`'s scores and ids for many queries at once, without the reasons."""
        def search(embeddings, codes, one, among):
            return self.index.search(embeddings, k, exclude=one, among=among)

        return rocchio_search(queries, check_k(k), exclude, self.name, self.index.ids, search, with_code=False)


class CellScanRetriever(CellRetrieval):
    """`exhaustive` over the int8 rows of a `hashes` index it shares (the module doc). It takes no
    changes itself (`add` and `remove` do nothing): the index it reads takes them from its own
    retriever, and a snapshot saves nothing of it."""

    name = "exhaustive"
    reads: tuple[str, ...] = ("embeddings",)

    index: CellScan

    def __init__(self, cells: CellCosineIndex):
        self.index = CellScan(cells)

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    def add(self, image_ids: np.ndarray, images: Batch) -> None:
        """Nothing: the shared index takes the images from its own retriever."""

    def remove(self, image_ids: np.ndarray) -> None:
        """Nothing: the shared index lets them go through its own retriever."""


@register_retriever("exhaustive")
def build(corpus: Corpus, data: CorpusData) -> ExhaustiveRetriever:
    require_hash_model(corpus, "exhaustive")
    index = ExhaustiveCosineIndex()
    if len(corpus.image_ids):
        images = data.images(corpus.image_ids, ("embeddings", "codes"))
        (embeddings,) = images.need("embeddings", method="exhaustive")
        index.add(corpus.image_ids, embeddings, images.codes)
    return ExhaustiveRetriever(index)
