"""`exhaustive-pg`: the `exhaustive` method run inside PostgreSQL (pgvector) on the corpus's rows
of `hash_codes`; same results as `exhaustive`."""

from __future__ import annotations

import numpy as np

from iwan.db.pgsearch import PgExhaustiveCosineIndex
from iwan.retrieval.pg import PgCorpusRetriever, engine_of
from iwan.retrieval.protocol import Batch, CorpusData
from iwan.retrieval.registry import Corpus, register_retriever, require_hash_model


class PgExhaustiveRetriever(PgCorpusRetriever):
    name = "exhaustive-pg"
    reads: tuple[str, ...] = ("embeddings",)

    def search(self, queries: Batch, k: int, *, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        (embeddings,) = queries.need("embeddings", method=self.name)
        return self.index.search(embeddings, k, exclude=exclude, image_ids=self.image_ids)


@register_retriever("exhaustive-pg")
def build(corpus: Corpus, data: CorpusData) -> PgExhaustiveRetriever:
    model = require_hash_model(corpus, "exhaustive-pg")
    return PgExhaustiveRetriever(PgExhaustiveCosineIndex(model, engine_of(data, "exhaustive-pg")), corpus.image_ids)
