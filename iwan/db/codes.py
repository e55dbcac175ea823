"""Hash codes and embeddings of images in PostgreSQL (pgvector `bit(48)` and `vector`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from iwan.config import HASH_BITS
from iwan.db import binary
from iwan.db.collections import MEMBER_PAGE

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


COPY_BATCH = 16384
"""Rows per binary COPY block (a few MiB with 100-dimensional embeddings)."""


def _fields(model: str, dim: int) -> list[binary.Field]:
    return [binary.Field("model", "bytes", len(model.encode())), binary.Field("image_id", "int8"),
            binary.Field("code", "bit", HASH_BITS), binary.Field("embedding", "vector", dim)]


def write_codes(conn: sa.Connection, model: str, image_ids: np.ndarray, embeddings: np.ndarray, codes: np.ndarray) -> None:
    """Insert codes and embeddings of images that have none of `model`, inside the caller's
    transaction, in one binary COPY (iwan.db.binary)."""
    _copy_codes(conn, "hash_codes", model, image_ids, embeddings, codes)


def _copy_codes(conn: sa.Connection, table: str, model: str, image_ids: np.ndarray, embeddings: np.ndarray,
                codes: np.ndarray) -> None:
    image_ids = np.asarray(image_ids, dtype=np.int64)
    embeddings = np.asarray(embeddings, dtype=np.float32).reshape(len(image_ids), -1)
    codes = np.asarray(codes, dtype=np.uint64)
    if not np.isfinite(embeddings).all():
        raise ValueError(f"hash codes of {model}: an embedding holds NaN or infinity; PostgreSQL's vector refuses them")
    def fill(rows: np.ndarray, part: slice) -> None:
        rows["model"] = model.encode()
        rows["image_id"] = image_ids[part]
        rows["code"]["value"] = binary.bits_to_bytes(codes[part], HASH_BITS)
        rows["embedding"]["value"] = embeddings[part]

    binary.copy_in(conn, f"COPY {table} (model, image_id, code, embedding) FROM STDIN (FORMAT BINARY)",
                   _fields(model, embeddings.shape[1]), len(image_ids), COPY_BATCH, fill)


def merge_codes(conn: sa.Connection, model: str, image_ids: np.ndarray, embeddings: np.ndarray, codes: np.ndarray) -> int:
    """Insert the codes and embeddings of those of these images that have none of `model` yet,
    inside the caller's transaction; the number of images written. A batch written twice (a
    retried task of a cluster's worker) leaves the rows of the first: COPY into a temporary
    table, then one INSERT ... ON CONFLICT DO NOTHING (as iwan.db.predictions.merge_predictions)."""
    conn.execute(sa.text(
        "CREATE TEMP TABLE IF NOT EXISTS staged_hash_codes (LIKE hash_codes INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    ))
    _copy_codes(conn, "staged_hash_codes", model, image_ids, embeddings, codes)
    return conn.execute(sa.text(
        "INSERT INTO hash_codes (model, image_id, code, embedding) SELECT model, image_id, code, embedding "
        "FROM staged_hash_codes ON CONFLICT (model, image_id) DO NOTHING"
    )).rowcount


def vector_literal(vector: np.ndarray) -> str:
    """A pgvector text literal, "[x,y,...]", exact for float32 values (repr round-trips)."""
    return "[" + ",".join(map(repr, np.asarray(vector, dtype=np.float32).tolist())) + "]"


def load_codes(engine: Engine, model: str, image_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings float32 (n, d), codes uint64 (n,)) of `model` for `image_ids`, in their order."""
    image_ids = np.asarray(image_ids, dtype=np.int64)
    with engine.connect() as conn:
        dim = embedding_dim(conn, model)
        driver = cast("psycopg.Connection[Any]", conn.connection.driver_connection)
        row = driver.execute(f"SELECT {_PAGE_COLUMNS.format(id='h.image_id')} FROM hash_codes h "
                             "WHERE h.model = %(m)s AND h.image_id = ANY(%(ids)s)",
                             {"m": model, "ids": image_ids.tolist()}).fetchone()
    found = _chunk(binary.parse_array(row[0], "int8"), row, dim) if row is not None and row[0] is not None else None
    held = found.ids if found is not None else np.zeros(0, dtype=np.int64)
    at = np.minimum(np.searchsorted(held, image_ids), max(len(held) - 1, 0))
    missing = np.flatnonzero(held[at] != image_ids) if len(held) else np.arange(len(image_ids))
    if len(missing):
        raise LookupError(
            f"{len(missing)} images have no hash codes of model {model!r} (first image id {image_ids[missing[0]]}): "
            f"run `iwan hash encode` for their split with that model"
        )
    if found is None:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.uint64)
    return found.embeddings[at], found.codes[at]


@dataclass(frozen=True)
class CodeChunk:
    ids: np.ndarray  # (n,) int64 image ids
    embeddings: np.ndarray  # (n, d) float32
    codes: np.ndarray  # (n,) uint64 (hashing.codes' bit order)


def embedding_dim(conn: sa.Connection, model: str) -> int:
    """The width of `model`'s stored embeddings (0 without any)."""
    return int(conn.scalar(sa.text("SELECT vector_dims(embedding) FROM hash_codes WHERE model = :m LIMIT 1"),
                           {"m": model}) or 0)


PAGE_ROWS = 16384
"""Images per page read (about 7 MiB with 100-dimensional embeddings)."""

_PAGE_COLUMNS = ("array_send(array_agg({id} ORDER BY {id})), array_send(array_agg(h.code ORDER BY {id})), "
                 "array_send(array_agg(h.embedding ORDER BY {id}))")


def iter_member_codes(conn: sa.Connection, model: str, collection_id: int,
                      page_rows: int = PAGE_ROWS) -> Iterator[CodeChunk]:
    """The codes and embeddings of `model` of every image of a collection, ids ascending, a page
    at a time (read as iwan.db.predictions reads). An image without a code is an error naming it."""
    dim = embedding_dim(conn, model)
    query = (
        f"{MEMBER_PAGE}SELECT {_PAGE_COLUMNS.format(id='page.image_id')}, "
        "array_send(array_agg(page.image_id) FILTER (WHERE h.image_id IS NULL)) FROM page "
        "LEFT JOIN hash_codes h ON h.model = %(m)s AND h.image_id = page.image_id AND h.image_id > %(after)s "
        "AND h.image_id <= (SELECT max(image_id) FROM page)"
    )
    for row in binary.iter_pages(conn, query, {"c": collection_id, "m": model}, page_rows):
        if row[3] is not None:
            missing = binary.parse_array(row[3], "int8")
            raise LookupError(
                f"{len(missing):,} images of the collection have no hash codes of model {model!r} (first image id "
                f"{int(missing.min())}): run `iwan hash encode` for their split with that model"
            )
        yield _chunk(row[0], row, dim)


def _chunk(ids: np.ndarray, row: tuple, dim: int) -> CodeChunk:
    """A page's arrays: its parsed ids, and the codes and embeddings of `row` (_PAGE_COLUMNS)."""
    return CodeChunk(ids.astype(np.int64), binary.parse_array(row[2], "vector", dim).astype(np.float32),
                     binary.bytes_to_bits(binary.parse_array(row[1], "bit", HASH_BITS), HASH_BITS))


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
