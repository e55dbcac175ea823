"""The two retrievers of hashing.search, run inside PostgreSQL (pgvector) on the `hash_codes` table,
for corpora that do not fit one process.

Same protocol as hashing.search: `search(queries, k) -> (scores, ids)`, (q, k) float32 cosines and
int64 ids, best first, ties to the lower id, rows padded with id -1 and score -inf; here the ids
are `image_id`s and `exclude` holds image ids (-1: none). The rows are those of one `model`, and of
the images in `image_ids` when it is given (a corpus: a split, a collection).

Hamming: the `shortlist` codes nearest by `code <~> query` (ties: lower image_id), re-ranked by
`embedding <=> query`. Exhaustive: `ORDER BY embedding <=> query`, which an HNSW index on
`(embedding::vector(d))` can serve (see `create_hnsw_index`); it is approximate, the scan is exact.
A batch runs QUERIES_PER_STATEMENT queries per statement, each through a LATERAL join.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import sqlalchemy as sa
from psycopg import sql
from sqlalchemy.engine import Engine

from hashing.codes import to_bit_strings
from hashing.search import _check_exclude, _unit_rows, check_k
from iwan.config import DEFAULT_SHORTLIST_FACTOR, HASH_BITS
from iwan.db.codes import vector_literal

if TYPE_CHECKING:
    import psycopg

QUERIES_PER_STATEMENT = 256
"""Queries sent in one statement: one round trip each, with a bounded result set."""

HNSW_EF_SEARCH_MAX = 1000
"""pgvector's ceiling for hnsw.ef_search, the candidate list of an HNSW scan. k + 1 is asked (one
more for an excluded id), so an HNSW scan returns fewer than k rows only for k >= this."""

# A MATERIALIZED CTE parses each query vector once; inlined, the cast would run once per table row.
# The corpus is an uncorrelated subquery, so PostgreSQL hashes its ids once for every query.
_QUERIES = """
WITH q AS MATERIALIZED (
    SELECT ord, CAST(code AS bit({bits})) AS code, CAST(vector AS vector({dim})) AS vector, exclude
    FROM unnest(CAST(:codes AS text[]), CAST(:vectors AS text[]), CAST(:exclude AS bigint[]))
        WITH ORDINALITY AS u(code, vector, exclude, ord)
), corpus AS MATERIALIZED (
    SELECT unnest(CAST(:corpus AS bigint[])) AS image_id
)
"""
_IN_CORPUS = "AND h.image_id IN (SELECT image_id FROM corpus)"

_HAMMING_SQL = (
    _QUERIES
    + """
SELECT q.ord, r.image_id, r.distance
FROM q CROSS JOIN LATERAL (
    SELECT s.image_id, s.embedding <=> q.vector AS distance
    FROM (
        SELECT h.image_id, CAST(h.embedding AS vector({dim})) AS embedding
        FROM hash_codes h
        WHERE h.model = :model AND h.image_id IS DISTINCT FROM q.exclude {in_corpus}
        ORDER BY h.code <~> q.code, h.image_id
        LIMIT :shortlist
    ) s
    ORDER BY distance, s.image_id
    LIMIT :k
) r
ORDER BY q.ord, r.distance, r.image_id
"""
)

# The ORDER BY expression is the HNSW index's, so the planner can use the index for it.
_EXHAUSTIVE_SQL = (
    _QUERIES
    + """
SELECT q.ord, r.image_id, r.distance
FROM q CROSS JOIN LATERAL (
    SELECT h.image_id, CAST(h.embedding AS vector({dim})) <=> q.vector AS distance
    FROM hash_codes h
    WHERE h.model = :model AND h.image_id IS DISTINCT FROM q.exclude {in_corpus}
    ORDER BY CAST(h.embedding AS vector({dim})) <=> q.vector, h.image_id
    LIMIT :k
) r
ORDER BY q.ord, r.distance, r.image_id
"""
)


class PgExhaustiveCosineIndex:
    """Cosine over every row of `model` in hash_codes (of the images `image_ids`, if given)."""

    def __init__(self, model: str, engine: Engine, image_ids: np.ndarray | None = None) -> None:
        self.model = model
        self.engine = engine
        self.image_ids = image_ids

    def search(
        self, queries: np.ndarray, k: int, exclude: np.ndarray | None = None, image_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """`image_ids`: the images searched this time (default: the index's own, or all)."""
        queries = _unit_rows(queries, "queries")
        among = self.image_ids if image_ids is None else image_ids
        return _run(self.engine, _EXHAUSTIVE_SQL, self.model, among, queries, None, k, k, exclude)

    def create_hnsw_index(self, dim: int, m: int = 16, ef_construction: int = 64) -> str:
        """Create (if missing) an HNSW cosine index on this model's embeddings, cast to vector(dim)
        because the column has no fixed dimension; returns its name."""
        if int(dim) != dim or dim < 1:
            raise ValueError(f"create_hnsw_index: dim must be the positive embedding dimension, got {dim!r}")
        name = f"hash_codes_hnsw_{hashlib.sha1(self.model.encode()).hexdigest()[:12]}_{int(dim)}"
        statement = sql.SQL(
            "CREATE INDEX IF NOT EXISTS {name} ON hash_codes USING hnsw "
            "((CAST(embedding AS vector({dim}))) vector_cosine_ops) "
            "WITH (m = {m}, ef_construction = {ef}) WHERE model = {model}"
        ).format(
            name=sql.Identifier(name),
            dim=sql.Literal(int(dim)),
            m=sql.Literal(int(m)),
            ef=sql.Literal(int(ef_construction)),
            model=sql.Literal(self.model),  # DDL takes no parameters: a quoted literal
        )
        with self.engine.begin() as conn:
            # An open connection of the psycopg dialect always holds its DBAPI connection (None only once closed).
            driver = cast("psycopg.Connection[Any]", conn.connection.driver_connection)
            driver.execute(statement)
        return name


class PgHammingCosineIndex:
    """Hamming shortlist over `code`, cosine re-rank over `embedding`, for the rows of `model` (of
    the images `image_ids`, if given)."""

    def __init__(
        self,
        model: str,
        engine: Engine,
        shortlist_factor: int = DEFAULT_SHORTLIST_FACTOR,
        image_ids: np.ndarray | None = None,
    ) -> None:
        if shortlist_factor < 1:
            raise ValueError(f"PgHammingCosineIndex: shortlist_factor must be >= 1, got {shortlist_factor}")
        self.model = model
        self.engine = engine
        self.shortlist_factor = shortlist_factor
        self.image_ids = image_ids

    def search(
        self,
        query_embeddings: np.ndarray,
        k: int,
        *,
        query_codes: np.ndarray,
        shortlist: int | None = None,
        exclude: np.ndarray | None = None,
        image_ids: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """`image_ids`: the images searched this time (default: the index's own, or all)."""
        k = check_k(k)
        shortlist = self.shortlist_factor * k if shortlist is None else shortlist
        if shortlist < k:
            raise ValueError(f"PgHammingCosineIndex.search: shortlist ({shortlist}) must be >= k ({k})")
        queries = _unit_rows(query_embeddings, "query_embeddings")
        codes = to_bit_strings(np.asarray(query_codes), HASH_BITS)
        if len(codes) != len(queries):
            raise ValueError(
                f"PgHammingCosineIndex.search: {len(queries)} query embeddings but {len(codes)} query "
                "codes; pass one code per query"
            )
        among = self.image_ids if image_ids is None else image_ids
        return _run(self.engine, _HAMMING_SQL, self.model, among, queries, codes, k, shortlist, exclude)


def _run(
    engine: Engine,
    template: str,
    model: str,
    image_ids: np.ndarray | None,
    queries: np.ndarray,
    codes: list[str] | None,
    k: int,
    shortlist: int,
    exclude: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    k = check_k(k)
    exclude = _check_exclude(exclude, len(queries))
    in_corpus = "" if image_ids is None else _IN_CORPUS
    statement = sa.text(template.format(bits=HASH_BITS, dim=queries.shape[1], in_corpus=in_corpus))
    corpus = [] if image_ids is None else np.asarray(image_ids, dtype=np.int64).tolist()
    vectors = [vector_literal(row) for row in queries]
    codes = codes if codes is not None else ["0" * HASH_BITS] * len(queries)
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    ids = np.full((len(queries), k), -1, dtype=np.int64)
    with engine.begin() as conn:
        # Custom plans see the model name, so a partial HNSW index (WHERE model = ...) qualifies.
        conn.execute(sa.text("SELECT set_config('plan_cache_mode', 'force_custom_plan', true)"))
        conn.execute(
            sa.text("SELECT set_config('hnsw.ef_search', :ef, true)"),
            {"ef": str(min(HNSW_EF_SEARCH_MAX, max(40, k + 1)))},
        )
        for start in range(0, len(queries), QUERIES_PER_STATEMENT):
            stop = min(start + QUERIES_PER_STATEMENT, len(queries))
            rows = conn.execute(
                statement,
                {
                    "codes": codes[start:stop],
                    "vectors": vectors[start:stop],
                    "exclude": [None if e < 0 else e for e in exclude[start:stop].tolist()],
                    "model": model,
                    "corpus": corpus,
                    "shortlist": shortlist,
                    "k": k,
                },
            ).all()
            _fill(rows, start, scores, ids)
    return scores, ids


def _fill(rows, offset: int, scores: np.ndarray, ids: np.ndarray) -> None:
    if not rows:
        return
    ords, image_ids, distances = (np.asarray(col) for col in zip(*rows))
    query = offset + ords.astype(np.int64) - 1  # WITH ORDINALITY counts from 1
    starts = np.flatnonzero(np.r_[True, query[1:] != query[:-1]])
    rank = np.arange(len(query)) - np.repeat(starts, np.diff(np.r_[starts, len(query)]))
    ids[query, rank] = image_ids
    scores[query, rank] = 1.0 - distances.astype(np.float64)
