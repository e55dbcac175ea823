"""Word predictions of a whole data set split into PostgreSQL, chunk by chunk and resumable."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from iwan.config import STORED_PREDICTIONS
from iwan.db import binary
from iwan.db import images as image_store
from iwan.db.collections import MEMBER_PAGE
from iwan.vision.features import iter_chunks

if TYPE_CHECKING:
    import psycopg


@dataclass(frozen=True)
class PredictSummary:
    predictor: str
    dataset: str
    split: str
    images: int
    predicted: int
    skipped: int

    def as_dict(self) -> dict:
        return self.__dict__.copy()


PREDICTIONS_LOCK = 0x1A7A_0003
"""First key of the pg_advisory_xact_lock(key, hashtext(model)) that writers of a model's
predictions for images that may have some already take in turn (`iwan predict` runs, replacements)."""


def done_image_ids(bind: Engine | sa.Connection, model: str, ids: np.ndarray) -> np.ndarray:
    """Which of `ids` already have predictions of `model` (`bind`: an engine, or a connection
    whose transaction it reads in)."""
    query = sa.text("SELECT image_id FROM predictions WHERE model = :m AND image_id = ANY(:ids)")
    params = {"m": model, "ids": np.asarray(ids).tolist()}
    if isinstance(bind, sa.Connection):
        return np.asarray(bind.scalars(query, params).all(), dtype=np.int64)
    with bind.connect() as conn:
        return np.asarray(conn.scalars(query, params).all(), dtype=np.int64)


def lock_predictions(conn: sa.Connection, model: str) -> None:
    """Until the caller's transaction ends, be the one writer of `model`'s predictions that checks
    which images have some: two `iwan predict` runs of a split take turns chunk by chunk, and the
    second finds (and skips) what the first wrote instead of failing on the primary key."""
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k, hashtext(:m))"), {"k": PREDICTIONS_LOCK, "m": model})


def register_classes(engine: Engine, model: str, categories: list[str]) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO classifier_classes (model, class_index, name) "
                "SELECT :m, ord - 1, name FROM unnest(CAST(:names AS text[])) WITH ORDINALITY AS t(name, ord) "
                "ON CONFLICT (model, class_index) DO UPDATE SET name = EXCLUDED.name"
            ),
            {"m": model, "names": list(categories)},
        )


def predict_split(engine: Engine, predictor, dataset, batch_size: int, progress: bool = True, *,
                  cache_dir: Path) -> PredictSummary:
    """Register the split's images, then store the top classes of each image not done yet (the
    predictor's pass cached in `cache_dir`, Settings.cache_dir: iwan.vision.features).

    Each chunk of images is committed on its own, so an interrupted run loses at most one chunk
    and a rerun skips the images already in the database. Concurrent runs over the same images
    both succeed: each chunk is written under `lock_predictions`, leaving out the images another
    run stored meanwhile (counted as skipped).
    """
    registered = image_store.register(engine, dataset)
    register_classes(engine, predictor.name, predictor.categories)
    done = np.isin(registered.ids, done_image_ids(engine, predictor.name, registered.ids))
    predicted = 0
    if not done.all():
        skip = lambda start, stop: bool(done[start:stop].all())  # noqa: E731
        for chunk in iter_chunks(predictor, dataset, batch_size=batch_size, progress=progress, skip=skip,
                                 cache_dir=cache_dir):
            todo = ~done[chunk.start : chunk.stop]
            if not todo.any():
                continue
            ids = registered.ids[chunk.start : chunk.stop]
            with engine.begin() as conn:
                lock_predictions(conn, predictor.name)
                todo &= ~np.isin(ids, done_image_ids(conn, predictor.name, ids[todo]))
                write_predictions(conn, predictor.name, ids[todo], chunk.indices[todo], chunk.probabilities[todo])
            predicted += int(todo.sum())
    return PredictSummary(
        predictor=predictor.name,
        dataset=dataset.name,
        split=dataset.split,
        images=len(registered.ids),
        predicted=predicted,
        skipped=len(registered.ids) - predicted,
    )


def replace_predictions(engine: Engine, model: str, ids: np.ndarray, indices: np.ndarray, probabilities: np.ndarray) -> None:
    """Store (replacing any earlier) the top classes of `model` for these images."""
    with engine.begin() as conn:
        lock_predictions(conn, model)
        conn.execute(
            sa.text("DELETE FROM predictions WHERE model = :m AND image_id = ANY(:ids)"),
            {"m": model, "ids": np.asarray(ids).tolist()},
        )
        write_predictions(conn, model, ids, indices, probabilities)


def write_predictions(conn: sa.Connection, model: str, ids: np.ndarray, indices: np.ndarray, probabilities: np.ndarray) -> None:
    """Insert the top classes of these images inside the caller's transaction: one row per image,
    in one binary COPY."""
    _copy_predictions(conn, "predictions", model, ids, indices, probabilities)


def merge_predictions(conn: sa.Connection, model: str, ids: np.ndarray, indices: np.ndarray,
                      probabilities: np.ndarray) -> int:
    """Insert the top classes of those of these images that have none of `model` yet, inside the
    caller's transaction; the number of images written. A batch written twice (a retried task of
    a cluster's worker, two runs at once) leaves the rows of the first: COPY into a temporary
    table, then one INSERT ... ON CONFLICT DO NOTHING."""
    conn.execute(sa.text(
        "CREATE TEMP TABLE IF NOT EXISTS staged_predictions (LIKE predictions INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    ))
    _copy_predictions(conn, "staged_predictions", model, ids, indices, probabilities)
    return conn.execute(sa.text(
        "INSERT INTO predictions SELECT * FROM staged_predictions ON CONFLICT (model, image_id) DO NOTHING"
    )).rowcount


COPY_BATCH = 65536
"""Rows per binary COPY block: a few MiB, so that a 10M-image write never holds its whole encoding."""


def _fields(model: str, top: int) -> list[binary.Field]:
    return [binary.Field("model", "bytes", len(model.encode())), binary.Field("image_id", "int8"),
            binary.Field("class_indices", "int2[]", top), binary.Field("probabilities", "float4[]", top)]


def _copy_predictions(conn: sa.Connection, table: str, model: str, ids: np.ndarray, indices: np.ndarray,
                      probabilities: np.ndarray) -> None:
    ids, indices, probabilities = np.asarray(ids, dtype=np.int64), np.asarray(indices), np.asarray(probabilities)
    top = min(STORED_PREDICTIONS, indices.shape[1])
    if not (len(ids) == len(indices) == len(probabilities)) or probabilities.shape[1] < top:
        raise ValueError(
            f"predictions: {len(ids)} ids, {indices.shape} class indices and {probabilities.shape} probabilities; "
            "give one row of each per image"
        )
    if indices.size and (indices[:, :top].min() < 0 or indices[:, :top].max() > np.iinfo(np.int16).max):
        raise ValueError(f"predictions of {model}: class indices must be 0..{np.iinfo(np.int16).max}")
    def fill(rows: np.ndarray, part: slice) -> None:
        rows["model"] = model.encode()
        rows["image_id"] = ids[part]
        rows["class_indices"]["items"]["value"] = indices[part, :top]
        rows["probabilities"]["items"]["value"] = probabilities[part, :top]

    binary.copy_in(conn, f"COPY {table} (model, image_id, class_indices, probabilities) FROM STDIN (FORMAT BINARY)",
                   _fields(model, top), len(ids), COPY_BATCH, fill)


@dataclass(frozen=True)
class SplitPredictions:
    ids: np.ndarray  # (n,) image ids in index order
    class_indices: np.ndarray  # (n, top) int, -1 for a rank the model did not fill
    probabilities: np.ndarray  # (n, top) float32, 0 for such a rank
    categories: list[str]  # the model's class names by index


def load_predictions(engine: Engine, model: str, dataset: str, split: str, top: int, limit: int | None = None) -> SplitPredictions:
    """The top `top` predictions of every image of a split, in position order; error if any is missing."""
    ids = image_store.image_ids(engine, dataset, split, limit)
    predictions, missing = _stored(engine, model, ids, top)
    if len(missing):
        raise LookupError(
            f"{len(missing)} images of {dataset}/{split} have no {model} predictions (first: image at "
            f"position {missing[0]}): run `iwan predict --dataset {dataset} --split {split} --predictor {model}`"
        )
    return predictions


def predictions_of(engine: Engine, model: str, image_ids: np.ndarray, top: int) -> SplitPredictions:
    """The top `top` predictions of `model` for these images, in their order; LookupError naming
    the first image that has none."""
    ids = np.asarray(image_ids, dtype=np.int64)
    predictions, missing = _stored(engine, model, ids, top)
    if len(missing):
        raise LookupError(
            f"{len(missing)} images have no {model} predictions (first: image id {ids[missing[0]]}): "
            f"run `iwan predict --predictor {model}` for their split"
        )
    return predictions


def _stored(engine: Engine, model: str, ids: np.ndarray, top: int) -> tuple[SplitPredictions, np.ndarray]:
    """The stored predictions of `ids`, and the rows of those that have none.

    A classifier with fewer classes than `top` leaves the lower ranks empty (-1, probability 0)."""
    class_indices = np.full((len(ids), top), -1, dtype=np.int64)
    probabilities = np.zeros((len(ids), top), dtype=np.float32)
    with engine.connect() as conn:
        driver = cast("psycopg.Connection[Any]", conn.connection.driver_connection)
        row = driver.execute(f"SELECT {_PAGE_COLUMNS.format(id='p.image_id')} FROM predictions p "
                             "WHERE p.model = %(m)s AND p.image_id = ANY(%(ids)s)",
                             {"m": model, "ids": ids.tolist(), "top": top}).fetchone()
    if row is not None and row[0] is not None:
        chunk = _chunk(binary.parse_array(row[0], "int8").astype(np.int64), row[1], row[2], top)
        # Ids follow registration order, which need not be index order: look them up through a sort.
        order = np.argsort(ids)
        rows = order[np.searchsorted(ids, chunk.ids, sorter=order)]
        class_indices[rows], probabilities[rows] = chunk.class_indices, chunk.probabilities
    categories = classifier_categories(engine, model)
    missing = np.flatnonzero(class_indices[:, 0] < 0)
    return SplitPredictions(ids, class_indices, probabilities, list(categories)), missing


@dataclass(frozen=True)
class PredictionChunk:
    ids: np.ndarray  # (n,) int64 image ids
    class_indices: np.ndarray  # (n, top) int16, -1 for a rank the model did not fill (or an image without predictions)
    probabilities: np.ndarray  # (n, top) float32, 0 for such a rank


PAGE_ROWS = 65536
"""Images per page read: a few MiB of arrays."""

# Padded in the query to exactly `top` ranks, so that the rows aggregate into one (n, top) array.
_PAGE_COLUMNS = (
    "array_send(array_agg({id} ORDER BY {id})), "
    "array_send(array_agg((coalesce(p.class_indices, '{{}}') || array_fill(CAST(-1 AS smallint), ARRAY[%(top)s]))"
    "[1:%(top)s] ORDER BY {id})), "
    "array_send(array_agg((coalesce(p.probabilities, '{{}}') || array_fill(CAST(0 AS real), ARRAY[%(top)s]))"
    "[1:%(top)s] ORDER BY {id}))"
)


def iter_member_predictions(conn: sa.Connection, model: str, top: int, collection_id: int,
                            page_rows: int = PAGE_ROWS) -> Iterator[PredictionChunk]:
    """The top `top` predictions of `model` of every image of a collection, ids ascending, a page
    of at most `page_rows` images at a time, each page one result of binary arrays parsed by numpy
    (iwan.db.binary.iter_pages): a collection of 10M images costs neither a Python object nor a
    message per image. An image without predictions comes with class index -1 in every rank."""
    query = (
        f"{MEMBER_PAGE}SELECT {_PAGE_COLUMNS.format(id='page.image_id')} FROM page LEFT JOIN predictions p ON p.model = %(m)s "
        # The range lets PostgreSQL read the page's rows of the primary key in order, not probe each.
        "AND p.image_id = page.image_id AND p.image_id > %(after)s AND p.image_id <= (SELECT max(image_id) FROM page)"
    )
    for ids, class_indices, probabilities in binary.iter_pages(conn, query, {"c": collection_id, "m": model, "top": top},
                                                               page_rows):
        yield _chunk(ids, class_indices, probabilities, top)


def _chunk(ids: np.ndarray, class_indices: bytes, probabilities: bytes, top: int) -> PredictionChunk:
    return PredictionChunk(ids, binary.parse_array(class_indices, "int2").reshape(len(ids), top).astype(np.int16),
                           binary.parse_array(probabilities, "float4").reshape(len(ids), top).astype(np.float32))


def predictions_digest(engine: Engine, model: str) -> str | None:
    """An md5 of every stored prediction of `model` (None without any), to tell when they change."""
    with engine.connect() as conn:
        return conn.scalar(
            # The text of the rows as they were one per rank, so that a digest survives migration 0006.
            sa.text(
                "SELECT md5(string_agg(concat_ws(':', p.image_id, t.ord - 1, t.class_index, t.probability), ',' "
                "ORDER BY p.image_id, t.ord)) FROM predictions p, "
                "unnest(p.class_indices, p.probabilities) WITH ORDINALITY AS t(class_index, probability, ord) "
                "WHERE p.model = :m"
            ),
            {"m": model},
        )


def classifier_categories(engine: Engine, model: str) -> list[str]:
    """The class names of a predictor, by class index."""
    with engine.connect() as conn:
        return list(
            conn.scalars(
                sa.text("SELECT name FROM classifier_classes WHERE model = :m ORDER BY class_index"), {"m": model}
            ).all()
        )
