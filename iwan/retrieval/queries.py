"""Query batches of stored images: what every method reads, from the database.

A stored image asks with what the database holds for it: its predictor's top `top_iwk` classes as
words of the norms (through the predictor's class-to-word mapping, as its graph edges are made)
and their probabilities as weights, and its hash model's embedding and code. The same batch is
what a method's `add` takes for the image, so a query and an added image read alike.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
from sqlalchemy.engine import Engine

from iwan.retrieval import Batch, Corpus

FIELDS = ("word_ids", "weights", "embeddings", "codes")
"""What a stored image can give a batch."""


def require_predictor(corpus: Corpus, method: str) -> str:
    if not corpus.predictor:
        raise ValueError(f"the {method} method needs a predictor (whose stored word predictions name the images)")
    return corpus.predictor


def require_hash_model(corpus: Corpus, method: str) -> str:
    if not corpus.hash_model:
        raise ValueError(f"the {method} method needs a hash model (whose stored codes represent the images): give --hash-model")
    return corpus.hash_model


def stored_codes(engine: Engine, corpus: Corpus, image_ids: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings (n, d) float32, codes (n,) uint64) of the corpus's hash model for `image_ids`."""
    from iwan.db.codes import load_codes

    model = require_hash_model(corpus, method)
    image_ids = np.asarray(image_ids, dtype=np.int64)
    if not len(image_ids):
        return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.uint64)
    return load_codes(engine, model, image_ids)


class StoredQueries:
    """Batches for stored images in the terms of one corpus: its predictor's words (when it has a
    predictor) and its hash model's embeddings and codes (when it has a hash model)."""

    def __init__(self, engine: Engine, corpus: Corpus, *, class_word_ids: np.ndarray | None = None):
        self.engine, self.corpus = engine, corpus
        self._class_word_ids = class_word_ids

    @property
    def class_word_ids(self) -> np.ndarray:
        """Word id of each of the predictor's classes (-1: none), loaded once."""
        if self._class_word_ids is None:
            from iwan.network.saved import class_word_mapping

            predictor = require_predictor(self.corpus, "iwan")
            self._class_word_ids = class_word_mapping(self.engine, predictor, self.corpus.source).word_ids
        return self._class_word_ids

    def words(self, class_indices: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predictions (n, >= top_iwk) as the (word ids, weights) of a Batch, top_iwk of each."""
        from iwan.network.saved import class_words

        top = self.corpus.top_iwk
        class_indices = np.asarray(class_indices)[:, :top]
        return class_words(self.class_word_ids, class_indices), np.asarray(probabilities, dtype=np.float64)[:, :top]

    def __call__(self, image_ids: np.ndarray, fields: Collection[str] | None = None) -> Batch:
        """A batch for these images, in their order, with the `fields` asked (default: all the
        corpus has); LookupError naming an image without its data."""
        from iwan.db.predictions import predictions_of

        image_ids = np.asarray(image_ids, dtype=np.int64)
        wanted = set(FIELDS if fields is None else fields)
        word_ids = weights = embeddings = codes = None
        if self.corpus.predictor and wanted & {"word_ids", "weights"}:
            stored = predictions_of(self.engine, self.corpus.predictor, image_ids, self.corpus.top_iwk)
            word_ids, weights = self.words(stored.class_indices, stored.probabilities)
        if self.corpus.hash_model and wanted & {"embeddings", "codes"}:
            embeddings, codes = stored_codes(self.engine, self.corpus, image_ids, "hashes")
        return Batch(word_ids=word_ids, weights=weights, embeddings=embeddings, codes=codes, image_ids=image_ids)


def stored_queries(engine: Engine, corpus: Corpus, image_ids: np.ndarray) -> Batch:
    """The batch of stored images `image_ids` in the terms of `corpus` (see StoredQueries)."""
    return StoredQueries(engine, corpus)(image_ids)
