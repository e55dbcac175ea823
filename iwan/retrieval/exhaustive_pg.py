"""`exhaustive-pg`: the `exhaustive` method run inside PostgreSQL (pgvector) on the corpus's rows
of `hash_codes`; same results as `exhaustive`."""

from __future__ import annotations

import numpy as np

from iwan.db.pgsearch import PgExhaustiveCosineIndex
from iwan.retrieval import Batch, Corpus, register_retriever
from iwan.retrieval.pg import PgCorpusRetriever
from iwan.retrieval.queries import require_hash_model


class PgExhaustiveRetriever(PgCorpusRetriever):
    name = "exhaustive-pg"
    reads = ("embeddings",)
    """The fields of a query batch (and of added images) this method reads."""

    def search(self, queries: Batch, k: int, *, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        queries.need("embeddings", method=self.name)
        return self.index.search(queries.embeddings, k, exclude=exclude)


@register_retriever("exhaustive-pg")
def build(engine, corpus: Corpus) -> PgExhaustiveRetriever:
    model = require_hash_model(corpus, "exhaustive-pg")
    return PgExhaustiveRetriever(PgExhaustiveCosineIndex(model, engine, image_ids=corpus.image_ids))
