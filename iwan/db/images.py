"""Images of data sets in PostgreSQL, so that predictions and codes refer to them by id."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

if TYPE_CHECKING:
    import psycopg


@dataclass(frozen=True)
class RegisteredSplit:
    dataset: str
    split: str
    ids: np.ndarray  # int64 image ids in index order
    added: int


def register(engine: Engine, dataset) -> RegisteredSplit:
    """Insert the split's images and class names (idempotent); return their ids in position order.

    `dataset` is an `iwan.datasets.loaders.ImageDataset`. A rerun adds nothing; labels that disagree
    with an earlier registration are an error, since predictions and codes refer to those rows.
    """
    n = len(dataset.fine_labels)
    coarse = dataset.coarse_labels
    paths = dataset.paths
    with engine.begin() as conn:
        _register_classes(conn, dataset.name, "fine", dataset.class_names)
        if dataset.coarse_class_names is not None:
            _register_classes(conn, dataset.name, "coarse", dataset.coarse_class_names)
        before = _count(conn, dataset.name, dataset.split)
        conn.execute(
            sa.text(
                "CREATE TEMP TABLE staging_images (position integer, fine_label integer, "
                "coarse_label integer, path text) ON COMMIT DROP"
            )
        )
        # An open connection of the psycopg dialect always holds its DBAPI connection (None only once closed).
        driver = cast("psycopg.Connection[Any]", conn.connection.driver_connection)
        cursor = driver.cursor()
        with cursor.copy("COPY staging_images FROM STDIN") as copy:
            for i in range(n):
                copy.write_row(
                    (
                        i,
                        int(dataset.fine_labels[i]),
                        None if coarse is None else int(coarse[i]),
                        None if paths is None else str(paths[i]),
                    )
                )
        conflict = conn.execute(
            sa.text(
                "SELECT s.position, i.fine_label, s.fine_label FROM staging_images s JOIN images i "
                "ON i.dataset = :d AND i.split = :s AND i.position = s.position "
                "WHERE i.fine_label <> s.fine_label LIMIT 1"
            ),
            {"d": dataset.name, "s": dataset.split},
        ).first()
        if conflict is not None:
            raise ValueError(
                f"{dataset.name}/{dataset.split} image {conflict[0]} is registered with label "
                f"{conflict[1]} but the data set now says {conflict[2]}: the data changed; "
                "register it under another name, or delete the old rows first"
            )
        conn.execute(
            sa.text(
                "INSERT INTO images (dataset, split, position, fine_label, coarse_label, path) "
                "SELECT :d, :s, position, fine_label, coarse_label, path FROM staging_images "
                "ON CONFLICT (dataset, split, position) DO NOTHING"
            ),
            {"d": dataset.name, "s": dataset.split},
        )
        added = _count(conn, dataset.name, dataset.split) - before
    return RegisteredSplit(dataset.name, dataset.split, image_ids(engine, dataset.name, dataset.split, n), added)


def _count(conn: sa.Connection, dataset: str, split: str) -> int:
    return conn.scalar(
        sa.text("SELECT count(*) FROM images WHERE dataset = :d AND split = :s"),
        {"d": dataset, "s": split},
    )


def _register_classes(conn: sa.Connection, dataset: str, granularity: str, names) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO dataset_classes (dataset, granularity, label, name) "
            "SELECT :d, :g, ord - 1, name FROM unnest(CAST(:names AS text[])) WITH ORDINALITY AS t(name, ord) "
            "ON CONFLICT (dataset, granularity, label) DO UPDATE SET name = EXCLUDED.name"
        ),
        {"d": dataset, "g": granularity, "names": list(names)},
    )


def image_ids(engine: Engine, dataset: str, split: str, limit: int | None = None) -> np.ndarray:
    """Ids of a registered split in position order (the first `limit`); error if none registered."""
    return split_labels(engine, dataset, split, limit).ids


@dataclass(frozen=True)
class SplitLabels:
    ids: np.ndarray
    positions: np.ndarray
    fine_labels: np.ndarray
    coarse_labels: np.ndarray | None
    class_names: list[str]


def split_labels(engine: Engine, dataset: str, split: str, limit: int | None = None) -> SplitLabels:
    """Labels of a registered split in position order, with the data set's fine class names."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT id, position, fine_label, coarse_label FROM images WHERE dataset = :d AND split = :s "
                "AND (CAST(:n AS integer) IS NULL OR position < :n) ORDER BY position"
            ),
            {"d": dataset, "s": split, "n": limit},
        ).all()
        names = conn.scalars(
            sa.text(
                "SELECT name FROM dataset_classes WHERE dataset = :d AND granularity = 'fine' ORDER BY label"
            ),
            {"d": dataset},
        ).all()
    if not rows:
        raise LookupError(
            f"no images of {dataset}/{split} are registered: run "
            f"`iwan predict --dataset {dataset} --split {split}` first"
        )
    table = np.array([(r[0], r[1], r[2], -1 if r[3] is None else r[3]) for r in rows], dtype=np.int64)
    has_coarse = rows[0][3] is not None
    return SplitLabels(table[:, 0], table[:, 1], table[:, 2], table[:, 3] if has_coarse else None, list(names))


def image_id_at(engine: Engine, dataset: str, split: str, position: int) -> int | None:
    """The id of a registered split's image at `position` (None: not registered)."""
    with engine.connect() as conn:
        return conn.scalar(
            sa.text("SELECT id FROM images WHERE dataset = :d AND split = :s AND position = :i"),
            {"d": dataset, "s": split, "i": int(position)},
        )


@dataclass(frozen=True)
class ImageLabel:
    image_id: int
    dataset: str
    split: str
    position: int
    label: str
    """The fine class name (the label number when the data set names no classes)."""


def image_labels(engine: Engine, image_ids) -> dict[int, ImageLabel]:
    """Where each image comes from and its class name, by image id (unknown ids are left out)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT i.id, i.dataset, i.split, i.position, i.fine_label, c.name FROM images i "
                "LEFT JOIN dataset_classes c ON c.dataset = i.dataset AND c.granularity = 'fine' "
                "AND c.label = i.fine_label WHERE i.id = ANY(:ids)"
            ),
            {"ids": [int(i) for i in image_ids]},
        ).all()
    return {
        r[0]: ImageLabel(r[0], r[1], r[2], r[3], r[5] if r[5] is not None else str(r[4]))
        for r in rows
    }
