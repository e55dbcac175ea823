"""Hash codes and embeddings of images in PostgreSQL (pgvector `bit(48)` and `vector`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from hashing.codes import from_bit_strings, to_bit_strings
from iwan.config import HASH_BITS

if TYPE_CHECKING:
    import psycopg


def store_codes(engine: Engine, model: str, image_ids: np.ndarray, embeddings: np.ndarray, codes: np.ndarray) -> int:
    """Write (replace) the codes and embeddings of `model` for these images, in one transaction."""
    image_ids = np.asarray(image_ids, dtype=np.int64)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if not (len(image_ids) == len(embeddings) == len(codes)):
        raise ValueError(
            f"store_codes: {len(image_ids)} image ids, {len(embeddings)} embeddings and {len(codes)} "
            "codes; give one of each per image"
        )
    with engine.begin() as conn:
        conn.execute(
            sa.text("DELETE FROM hash_codes WHERE model = :m AND image_id = ANY(:ids)"),
            {"m": model, "ids": image_ids.tolist()},
        )
        write_codes(conn, model, image_ids, embeddings, codes)
    return len(image_ids)


def write_codes(conn: sa.Connection, model: str, image_ids: np.ndarray, embeddings: np.ndarray, codes: np.ndarray) -> None:
    """Insert codes and embeddings of images that have none of `model`, inside the caller's transaction."""
    bits = to_bit_strings(np.asarray(codes, dtype=np.uint64), HASH_BITS)
    # An open connection of the psycopg dialect always holds its DBAPI connection (None only once closed).
    driver = cast("psycopg.Connection[Any]", conn.connection.driver_connection)
    cursor = driver.cursor()
    with cursor.copy("COPY hash_codes (model, image_id, code, embedding) FROM STDIN") as copy:
        for image_id, code, vector in zip(np.asarray(image_ids).tolist(), bits, np.asarray(embeddings, dtype=np.float32)):
            copy.write_row((model, image_id, code, vector_literal(vector)))


def vector_literal(vector: np.ndarray) -> str:
    """A pgvector text literal, "[x,y,...]", exact for float32 values (repr round-trips)."""
    return "[" + ",".join(map(repr, np.asarray(vector, dtype=np.float32).tolist())) + "]"


def load_codes(engine: Engine, model: str, image_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings float32 (n, d), codes uint64 (n,)) of `model` for `image_ids`, in their order."""
    image_ids = np.asarray(image_ids, dtype=np.int64)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT image_id, code::text, embedding::real[] FROM hash_codes "
                "WHERE model = :m AND image_id = ANY(:ids)"
            ),
            {"m": model, "ids": image_ids.tolist()},
        ).all()
    found = {row[0]: row for row in rows}
    missing = [int(i) for i in image_ids if int(i) not in found]
    if missing:
        raise LookupError(
            f"{len(missing)} images have no hash codes of model {model!r} (first image id {missing[0]}): "
            f"run `iwan hash encode` for their split with that model"
        )
    ordered = [found[int(i)] for i in image_ids]
    embeddings = np.array([row[2] for row in ordered], dtype=np.float32).reshape(len(ordered), -1)
    codes = from_bit_strings([row[1] for row in ordered], HASH_BITS)
    return embeddings, codes


def codes_digest(engine: Engine, model: str) -> str | None:
    """An md5 of every stored code and embedding of `model` (None without any), to tell when they change."""
    with engine.connect() as conn:
        return conn.scalar(
            sa.text(
                "SELECT md5(string_agg(concat_ws(':', image_id, code::text, embedding::text), ',' ORDER BY image_id)) "
                "FROM hash_codes WHERE model = :m"
            ),
            {"m": model},
        )


def images_without_codes(engine: Engine, model: str, image_ids: np.ndarray) -> np.ndarray:
    """Those of `image_ids` that have no stored code of `model`, ascending."""
    with engine.connect() as conn:
        held = conn.scalars(
            sa.text("SELECT image_id FROM hash_codes WHERE model = :m AND image_id = ANY(:ids)"),
            {"m": model, "ids": np.asarray(image_ids, dtype=np.int64).tolist()},
        ).all()
    return np.setdiff1d(np.asarray(image_ids, dtype=np.int64), np.asarray(held, dtype=np.int64))
