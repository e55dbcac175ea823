"""What the PostgreSQL-backed methods share: the corpus is a set of image ids, the rows live in the
`hash_codes` table (iwan/db/pgsearch.py), so adding or removing an image changes only the set."""

from __future__ import annotations

import numpy as np

from hashing.search import kept_rows, merge_ids
from iwan.retrieval import Batch


class PgCorpusRetriever:
    """A method over `index` (a iwan.db.pgsearch index) whose `image_ids` is the corpus."""

    name: str

    def __init__(self, index):
        self.index = index
        self.index.image_ids = np.asarray(index.image_ids, dtype=np.int64)

    @property
    def ntotal(self) -> int:
        return len(self.index.image_ids)

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
        self.index.image_ids, _ = merge_ids(self.index.image_ids, image_ids, len(np.asarray(image_ids)), self.name)

    def remove(self, image_ids: np.ndarray) -> None:
        self.index.image_ids = self.index.image_ids[kept_rows(self.index.image_ids, image_ids, self.name)]
