"""`hashes-pg`: the `hashes` method run inside PostgreSQL (pgvector) on the corpus's rows of
`hash_codes`, for corpora that should not be held in a process; same results as `hashes`."""

from __future__ import annotations

import numpy as np

from iwan.db.pgsearch import PgHammingCosineIndex
from iwan.config import DEFAULT_SHORTLIST_FACTOR
from iwan.retrieval import Batch, Corpus, register_retriever
from iwan.retrieval.pg import PgCorpusRetriever
from iwan.retrieval.queries import require_hash_model


class PgHashesRetriever(PgCorpusRetriever):
    name = "hashes-pg"
    reads = ("embeddings", "codes")
    """The fields of a query batch (and of added images) this method reads."""

    def search(self, queries: Batch, k: int, *, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        queries.need("embeddings", "codes", method=self.name)
        return self.index.search(queries.embeddings, k, query_codes=queries.codes, exclude=exclude)


@register_retriever("hashes-pg")
def build(engine, corpus: Corpus, *, shortlist_factor: int = DEFAULT_SHORTLIST_FACTOR) -> PgHashesRetriever:
    model = require_hash_model(corpus, "hashes-pg")
    return PgHashesRetriever(PgHammingCosineIndex(model, engine, shortlist_factor, image_ids=corpus.image_ids))
