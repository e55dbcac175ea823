"""The store as a `CorpusData`: what builders and queries read of stored images, from PostgreSQL.

A stored image is read in the terms of one corpus: its predictor's top `top_iwk` classes as words
of the norms (through the predictor's class-to-word mapping, as its graph edges are made) and
their probabilities as weights, and its hash model's embedding and code. The same batch is what a
method's `add` takes for the image, so a query and an added image read alike.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
from sqlalchemy.engine import Engine

from iwan.retrieval.protocol import FIELDS, WORD_FIELDS, Batch
from iwan.retrieval.registry import Corpus, require_hash_model, require_predictor


class StoreData:
    """Batches of stored images and the norm set's associations, for one corpus; the engine is
    kept for the methods that search inside PostgreSQL."""

    def __init__(self, engine: Engine, corpus: Corpus):
        self.engine, self.corpus = engine, corpus
        self._mapping = None
        self._associations = None

    def associations(self):
        if self._associations is None:
            from iwan.db.norms import association_arrays

            self._associations = association_arrays(self.engine, self.corpus.source)
        return self._associations

    @property
    def class_word_ids(self) -> np.ndarray:
        """Word id of each of the predictor's classes (-1: none), loaded once."""
        return self._word_mapping().word_ids

    @property
    def unmapped_classes(self) -> Sequence[str]:
        return self._word_mapping().unmapped

    def _word_mapping(self):
        if self._mapping is None:
            from iwan.db.predictions import classifier_categories
            from iwan.network.saved import word_mapping

            predictor = require_predictor(self.corpus, "iwan")
            self._mapping = word_mapping(self.associations().words, classifier_categories(self.engine, predictor))
        return self._mapping

    def words(self, class_indices: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predictions (n, >= top_iwk) as the (word ids, weights) of a Batch, top_iwk of each."""
        from iwan.network.saved import class_words

        top = self.corpus.top_iwk
        class_indices = np.asarray(class_indices)[:, :top]
        return class_words(self.class_word_ids, class_indices), np.asarray(probabilities, dtype=np.float64)[:, :top]

    def images(self, image_ids: np.ndarray, fields: Collection[str] | None = None) -> Batch:
        """A batch for these images, in their order, with the `fields` asked (default: all the
        corpus has); LookupError naming an image without its data."""
        from iwan.db.predictions import predictions_of

        image_ids = np.asarray(image_ids, dtype=np.int64)
        wanted = set(FIELDS if fields is None else fields)
        word_ids = weights = embeddings = codes = None
        if self.corpus.predictor and wanted & set(WORD_FIELDS):
            stored = predictions_of(self.engine, self.corpus.predictor, image_ids, self.corpus.top_iwk)
            word_ids, weights = self.words(stored.class_indices, stored.probabilities)
        if self.corpus.hash_model and wanted & {"embeddings", "codes"}:
            embeddings, codes = self.codes(image_ids)
        return Batch(word_ids=word_ids, weights=weights, embeddings=embeddings, codes=codes, image_ids=image_ids)

    def codes(self, image_ids: np.ndarray, method: str = "hashes") -> tuple[np.ndarray, np.ndarray]:
        """(embeddings (n, d) float32, codes (n,) uint64) of the corpus's hash model for `image_ids`."""
        from iwan.db.codes import load_codes

        model = require_hash_model(self.corpus, method)
        image_ids = np.asarray(image_ids, dtype=np.int64)
        if not len(image_ids):
            return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.uint64)
        return load_codes(self.engine, model, image_ids)
