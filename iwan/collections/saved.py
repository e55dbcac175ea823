"""`iwan search --index-name`: the images of a saved IWAN index searched by any registered
method, queried by words, an image file or a registered image (a collection is searched through
iwan.collections.pipeline instead).

Every method answers through the retriever protocol (iwan.retrieval): the saved index is the
`iwan` method as it is, and the other methods are built over its images by name. A query is a
one-row `Batch`: words and weights (any query), plus the stored embedding and code of a
registered image for the methods that read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
from sqlalchemy.engine import Engine

from iwan.config import DECODE_MIN_SIDE, Settings
from iwan.network.index import Query, parse_text_query
from iwan.network.saved import BuiltIndex, class_words
from iwan.retrieval.protocol import WORD_FIELDS, Batch, Retriever
from iwan.retrieval.registry import Corpus, get_retriever
from iwan.retrieval.stored import StoreData


@dataclass(frozen=True)
class PlannedQuery:
    batch: Batch
    """One query row."""
    exclude: int = -1
    """The query image's id, left out of its own results (-1: none)."""
    unknown: tuple[str, ...] = ()
    """Words of a text query that the norms do not have (left out)."""

    def describe(self, built: BuiltIndex) -> list[tuple[str, float]]:
        """The query's start words with their weights (1 / cost)."""
        if self.batch.word_ids is None:
            return []
        weights = cast(np.ndarray, self.batch.weights)  # a query with words has their weights
        query = Query.from_weights(self.batch.word_ids[0], weights[0])
        return [(built.index.words[w], 1.0 / c) for w, c in zip(query.word_ids, query.costs)]


def saved_retriever(built: BuiltIndex):
    """The `iwan` method over a saved index, as it was saved (no rebuild)."""
    from iwan.retrieval.iwan import IwanRetriever

    return IwanRetriever(built.index, built.meta.unmapped_classes)


def corpus_of(built: BuiltIndex, hash_model: str | None = None) -> Corpus:
    m = built.meta
    return Corpus(
        image_ids=built.image_ids, predictor=m.model, hash_model=hash_model, top_iwk=m.top_iwk,
        top_wwk=m.top_wwk, strength=m.strength, source=m.source,
    )


def retriever_for(engine: Engine, built: BuiltIndex, method: str, hash_model: str | None = None) -> Retriever:
    """Method `method` over the saved index's images; fusion fuses the saved IWAN with `hashes`."""
    if method == "iwan":
        return saved_retriever(built)
    corpus = corpus_of(built, hash_model)
    data = StoreData(engine, corpus)
    if method == "fused":
        return get_retriever("fused", corpus, data, members=[saved_retriever(built), "hashes"])
    return get_retriever(method, corpus, data)


def text_query(built: BuiltIndex, text: str) -> PlannedQuery:
    """"cat:0.8,dog:0.2" as a query; ValueError when no word is in the norms."""
    terms = parse_text_query(text)
    mapping = built.index.word_mapping([w for w, _ in terms])
    weights = np.array([p for _, p in terms], dtype=np.float64)
    batch = Batch(word_ids=mapping.word_ids[None, :], weights=weights[None, :])
    return PlannedQuery(batch, unknown=tuple(n for n, w in zip(mapping.names, mapping.word_ids) if w < 0))


def _predicted(built: BuiltIndex, class_indices: np.ndarray, probabilities: np.ndarray, what: str) -> Batch:
    top = built.meta.top_iwk
    word_ids = class_words(built.class_word_ids, np.asarray(class_indices)[None, :top])
    if not (word_ids >= 0).any():
        raise ValueError(
            f"none of the top {top} classes of {what} maps to a word of the norms; "
            "try --words, or an index built with a larger --top-iwk"
        )
    return Batch(word_ids=word_ids, weights=np.asarray(probabilities, dtype=np.float64)[None, :top])


def image_query(built: BuiltIndex, path: Path, backend: str = "torch", *, settings: Settings) -> PlannedQuery:
    """A query image file (at most the settings' pixel limit), classified by the index's predictor."""
    from iwan.datasets.loaders import load_image
    from iwan.vision.predictors import load_predictor

    # The classifiers resize to about 224 pixels; a query decoded at >= 512 loses nothing.
    image = load_image(path, min_side=DECODE_MIN_SIDE, max_pixels=settings.max_image_pixels)
    predictor = load_predictor(built.meta.model, backend=backend, settings=settings)
    prediction = predictor.predict(image[None], top=built.meta.top_iwk)
    return PlannedQuery(_predicted(built, prediction.indices[0], prediction.probabilities[0], str(path)))


def split_image_query(
    engine: Engine, built: BuiltIndex, spec: str, split: str, position: int, *,
    fields=WORD_FIELDS, hash_model: str | None = None, backend: str = "torch", settings: Settings,
) -> PlannedQuery:
    """A data set image as the query, with the `fields` a method reads: its stored predictions
    when it has them (else it is classified now) and its stored embedding and code. When it is
    one of the searched images it is left out of the results. `settings`: where the data set and
    the predictor's files are."""
    from iwan.datasets.loaders import load_dataset
    from iwan.db.images import image_id_at
    from iwan.db.predictions import predictions_of

    dataset = load_dataset(spec, split, settings=settings)
    if not 0 <= position < len(dataset):
        raise ValueError(
            f"--position {position} is outside {dataset.name}/{split}, which has {len(dataset)} images "
            f"(0..{len(dataset) - 1})"
        )
    image_id = image_id_at(engine, dataset.name, split, position)
    what = f"{dataset.name}/{split} image {position}"
    ids = np.array([-1 if image_id is None else image_id], dtype=np.int64)
    parts: dict[str, np.ndarray | None] = {}
    if set(fields) & set(WORD_FIELDS):
        try:
            stored = predictions_of(engine, built.meta.model, ids, built.meta.top_iwk)
            indices, probabilities = stored.class_indices[0], stored.probabilities[0]
        except LookupError:
            from iwan.vision.predictors import load_predictor

            predictor = load_predictor(built.meta.model, backend=backend, settings=settings)
            prediction = predictor.predict(dataset.images[position : position + 1], top=built.meta.top_iwk)
            indices, probabilities = prediction.indices[0], prediction.probabilities[0]
        words = _predicted(built, indices, probabilities, what)
        parts.update(word_ids=words.word_ids, weights=words.weights)
    if set(fields) - set(WORD_FIELDS):
        if image_id is None:
            raise LookupError(f"{what} is not registered, so it has no stored hash code: run `iwan hash encode` for its split")
        parts["embeddings"], parts["codes"] = StoreData(engine, corpus_of(built, hash_model)).codes(ids)
    return PlannedQuery(Batch(**parts, image_ids=None if image_id is None else ids), exclude=int(ids[0]))


def labelled_hits(engine: Engine, built: BuiltIndex, retriever: Retriever, planned: PlannedQuery, k: int) -> list[dict]:
    """The k best images of saved index `built` by `retriever`, with their data set, position, label
    name and score; IWAN's hits with their distance and word path instead."""
    from iwan.db.images import image_labels

    explained = retriever.explain(planned.batch, k, exclude=np.array([planned.exclude]))
    found = explained.ids[0] >= 0
    scores, ids = explained.scores[0][found], explained.ids[0][found]
    reasons = [why for why, ok in zip(explained.reasons[0], found.tolist()) if ok]
    labels = image_labels(engine, ids)
    missing = [image_id for image_id in ids.tolist() if image_id not in labels]
    if missing:
        m = built.meta
        raise LookupError(
            f"index {m.name!r} is out of step with the database: {len(missing)} of its images "
            f"(first: id {missing[0]}) are not in it (the database was reset, or the index was built "
            f"against another one); rebuild it with `iwan index build --dataset {m.dataset} --split {m.split} "
            f"--name {m.name}`"
        )
    out = []
    for rank, (score, image_id) in enumerate(zip(scores.tolist(), ids.tolist())):
        image = labels[image_id]
        hit = {
            "image_id": image_id, "dataset": image.dataset, "split": image.split,
            "position": image.position, "label": image.label,
        }
        if retriever.name == "iwan":
            hit.update(distance=round(-score, 6), path=reasons[rank]["path"])
        else:
            hit["score"] = round(score, 6)
        out.append(hit)
    return out
