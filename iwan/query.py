"""Queries against a built IWAN in the database's terms: image files, registered images, words."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from iwan.network import BuiltIndex
from iwan.search import Query


@dataclass(frozen=True)
class PlannedQuery:
    query: Query

    def describe(self, built: BuiltIndex) -> list[tuple[str, float]]:
        """The query's start words with their weights (1 / cost)."""
        words = built.index.words
        return [(words[w], 1.0 / c) for w, c in zip(self.query.word_ids, self.query.costs)]


def text_query(built: BuiltIndex, text: str) -> PlannedQuery:
    return PlannedQuery(built.index.text_query(text))


def _from_predictions(built: BuiltIndex, class_indices: np.ndarray, probabilities: np.ndarray, what: str) -> PlannedQuery:
    word_ids, weights = built.query_words(class_indices[None, :], probabilities[None, :])
    query = Query.from_weights(word_ids[0], weights[0])
    if not query.word_ids:
        raise ValueError(
            f"none of the top {built.meta.top_iwk} classes of {what} maps to a word of the norms; "
            "try --words, or an index built with a larger --top-iwk"
        )
    return PlannedQuery(query)


def image_query(built: BuiltIndex, path: Path, backend: str = "torch") -> PlannedQuery:
    """A query image file, classified by the index's model."""
    from iwan.datasets import load_image
    from iwan.predictors import load_predictor

    image = load_image(path)
    predictor = load_predictor(built.meta.model, backend=backend)
    prediction = predictor.predict(image[None], top=built.meta.top_iwk)
    return _from_predictions(built, prediction.indices[0], prediction.probabilities[0], str(path))


def split_image_query(
    engine: Engine, built: BuiltIndex, spec: str, split: str, index: int, backend: str = "torch"
) -> tuple[PlannedQuery, tuple[int, ...]]:
    """A data set image as the query: its stored predictions when it has them, else classified now.

    When it belongs to the indexed corpus it is left out of the results.
    """
    from iwan.datasets import load_dataset

    dataset = load_dataset(spec, split)
    if not 0 <= index < len(dataset):
        raise ValueError(f"--index {index} is outside {dataset.name}/{split}, which has {len(dataset)} images (0..{len(dataset) - 1})")
    with engine.connect() as conn:
        image_id = conn.scalar(
            sa.text("SELECT id FROM images WHERE dataset = :d AND split = :s AND index = :i"),
            {"d": dataset.name, "s": split, "i": index},
        )
        stored = conn.execute(
            sa.text("SELECT class_index, probability FROM predictions WHERE model = :m AND image_id = :id ORDER BY rank"),
            {"m": built.meta.model, "id": image_id},
        ).all()
    what = f"{dataset.name}/{split} image {index}"
    if stored:
        table = np.array(stored, dtype=np.float64)
        planned = _from_predictions(built, table[:, 0].astype(np.int64), table[:, 1], what)
    else:
        from iwan.predictors import load_predictor

        prediction = load_predictor(built.meta.model, backend=backend).predict(dataset.images[index : index + 1], top=built.meta.top_iwk)
        planned = _from_predictions(built, prediction.indices[0], prediction.probabilities[0], what)
    exclude = tuple(np.flatnonzero(built.image_ids == image_id)) if image_id is not None else ()
    return planned, exclude


def labelled_hits(engine: Engine, built: BuiltIndex, planned: PlannedQuery, k: int, exclude=()) -> list[dict]:
    """The k nearest images with their data set, index, label name, distance and word path."""
    hits = built.index.search_one(planned.query, k, exclude=exclude)
    if not hits:
        return []
    ids = [int(built.image_ids[h.image_id]) for h in hits]
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT i.id, i.dataset, i.split, i.index, i.fine_label, c.name FROM images i "
                "LEFT JOIN dataset_classes c ON c.dataset = i.dataset AND c.granularity = 'fine' "
                "AND c.label = i.fine_label WHERE i.id = ANY(:ids)"
            ),
            {"ids": ids},
        ).all()
    by_id = {r[0]: r for r in rows}
    out = []
    for hit, image_id in zip(hits, ids):
        _, dataset, split, index, label, name = by_id[image_id]
        out.append(
            {
                "image_id": image_id,
                "dataset": dataset,
                "split": split,
                "index": index,
                "label": name if name is not None else str(label),
                "distance": round(hit.distance, 6),
                "path": built.index.path_labels(hit.path),
            }
        )
    return out
