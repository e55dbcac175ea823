"""What the PostgreSQL-backed methods share: the corpus is a set of image ids and the rows live in
the `hash_codes` table (iwan/db/pgsearch.py), so adding or removing an image changes only the set.

These methods search inside the store, so their builders need the store itself: a `CorpusData`
with an `engine` (iwan.retrieval.stored.StoreData).
"""

from __future__ import annotations

import numpy as np

from hashing.search import kept_rows, merge_ids
from iwan.retrieval.hashes import code_reasons
from iwan.retrieval.protocol import Batch, CorpusData, Explained


class PgCorpusRetriever:
    """A method over `index` (an iwan.db.pgsearch index) restricted to the ids it holds."""

    name: str
    reads: tuple[str, ...]

    def __init__(self, index, image_ids: np.ndarray):
        self.index = index
        self.image_ids = np.asarray(image_ids, dtype=np.int64)
        """The corpus: the images searched, ascending."""

    @property
    def ntotal(self) -> int:
        return len(self.image_ids)

    def add(self, image_ids: np.ndarray, images: Batch) -> None:
        """Take images whose codes the database holds already (`images` is not read); LookupError
        naming an image without them."""
        from iwan.db.codes import images_without_codes

        missing = images_without_codes(self.index.engine, self.index.model, image_ids)
        if len(missing):
            raise LookupError(
                f"{self.name}: {len(missing)} images have no hash codes of model {self.index.model!r} "
                f"(first image id {missing[0]}): store them (`iwan hash encode`) before adding them"
            )
        self.image_ids, _ = merge_ids(self.image_ids, image_ids, len(np.asarray(image_ids)), self.name)

    def remove(self, image_ids: np.ndarray) -> None:
        self.image_ids = self.image_ids[kept_rows(self.image_ids, image_ids, self.name)]

    def search(self, queries: Batch, k: int, *, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def explain(self, queries: Batch, k: int, *, exclude: np.ndarray | None = None) -> Explained:
        """Each hit's cosine (the score) and Hamming distance, the codes read from the store."""
        scores, ids = self.search(queries, k, exclude=exclude)
        return Explained(scores, ids, code_reasons(scores, ids, queries.codes, self._codes_of))

    def _codes_of(self, image_ids: np.ndarray) -> np.ndarray:
        from iwan.db.codes import load_codes

        return load_codes(self.index.engine, self.index.model, np.asarray(image_ids, dtype=np.int64))[1]


def engine_of(data: CorpusData, method: str):
    """The engine of a store reader; a ValueError for data held elsewhere."""
    engine = getattr(data, "engine", None)
    if engine is None:
        raise ValueError(f"the {method} method searches inside PostgreSQL: build it over the store "
                         "(iwan.retrieval.stored.StoreData), not over arrays in memory")
    return engine
