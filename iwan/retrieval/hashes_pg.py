"""`hashes-pg`: the `hashes` method run inside PostgreSQL (pgvector) on the corpus's rows of
`hash_codes`, for corpora that should not be held in a process; same results as `hashes`."""

from __future__ import annotations

import numpy as np

from iwan.config import DEFAULT_SHORTLIST_FACTOR
from iwan.db.pgsearch import PgHammingCosineIndex
from iwan.retrieval.hashes import READS
from iwan.retrieval.pg import PgCorpusRetriever, engine_of
from iwan.retrieval.protocol import Batch, CorpusData
from iwan.retrieval.registry import Corpus, register_retriever, require_hash_model


class PgHashesRetriever(PgCorpusRetriever):
    name = "hashes-pg"
    reads: tuple[str, ...] = READS

    def search(self, queries: Batch, k: int, *, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        embeddings, codes = queries.need(*READS, method=self.name)
        return self.index.search(embeddings, k, query_codes=codes, exclude=exclude, image_ids=self.image_ids)


@register_retriever("hashes-pg")
def build(corpus: Corpus, data: CorpusData, *, shortlist_factor: int = DEFAULT_SHORTLIST_FACTOR) -> PgHashesRetriever:
    model = require_hash_model(corpus, "hashes-pg")
    return PgHashesRetriever(PgHammingCosineIndex(model, engine_of(data, "hashes-pg"), shortlist_factor), corpus.image_ids)
