"""iwan.db.pgsearch: the searches inside PostgreSQL return what the in-memory ones return."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa

from hashing.search import ExhaustiveCosineIndex, HammingCosineIndex
from iwan.db.codes import store_codes, vector_literal
from iwan.db.pgsearch import PgExhaustiveCosineIndex, PgHammingCosineIndex

FIRST_ID = 1000  # image ids are FIRST_ID + position, so ids differ from positions but sort alike


def corpus(seed: int, n: int, dim: int):
    """Copies of a few prototypes (exact cosine ties, distinct cosines far apart) and codes drawn
    from a few 48-bit values (exact Hamming ties)."""
    rng = np.random.default_rng(seed)
    prototypes = rng.normal(size=(10, dim))
    embeddings = prototypes[rng.integers(0, 10, n)].astype(np.float32)
    code_values = rng.integers(0, 2**48, 12, dtype=np.uint64)
    codes = code_values[rng.integers(0, 12, n)] ^ (np.uint64(1) << rng.integers(0, 48, n).astype(np.uint64))
    return embeddings, codes


@pytest.fixture
def stored(engine):
    n, dim = 300, 6
    embeddings, codes = corpus(0, n, dim)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO images (id, dataset, split, position, fine_label) "
                "VALUES (:id, 'synthetic', 'test', :i, 0)"
            ),
            [{"id": FIRST_ID + i, "i": i} for i in range(n)],
        )
    store_codes(engine, "m", FIRST_ID + np.arange(n), embeddings, codes)
    other_embeddings, other_codes = corpus(1, 50, dim)  # another model's rows must not leak in
    store_codes(engine, "other", FIRST_ID + np.arange(50), other_embeddings, other_codes)
    return embeddings, codes


def in_db_ids(ids):
    return np.where(ids >= 0, ids + FIRST_ID, -1)


def queries_for(embeddings, codes):
    rng = np.random.default_rng(9)
    picked = rng.integers(0, len(embeddings), 7)
    queries = embeddings[picked] + rng.normal(scale=0.3, size=(7, embeddings.shape[1])).astype(np.float32)
    exclude = np.where(np.arange(7) % 2 == 0, picked, -1)
    return queries, codes[picked], exclude


def test_hamming_search_in_database_equals_in_memory(engine, stored):
    embeddings, codes = stored
    queries, query_codes, exclude = queries_for(embeddings, codes)
    memory = HammingCosineIndex()
    memory.add(None, embeddings, codes)
    db = PgHammingCosineIndex("m", engine)
    for k, shortlist in [(10, None), (25, 40), (350, 400)]:
        m_scores, m_ids = memory.search(queries, k, query_codes=query_codes, shortlist=shortlist, exclude=exclude)
        db_exclude = np.where(exclude >= 0, exclude + FIRST_ID, -1)
        d_scores, d_ids = db.search(queries, k, query_codes=query_codes, shortlist=shortlist, exclude=db_exclude)
        np.testing.assert_array_equal(d_ids, in_db_ids(m_ids))
        np.testing.assert_allclose(d_scores, m_scores, atol=1e-5)
    assert (d_ids[:, -1] == -1).all() and np.isneginf(d_scores[:, -1]).all()  # 350 > 300 rows: padded


def test_exhaustive_search_in_database_equals_in_memory(engine, stored):
    embeddings, codes = stored
    queries, _, exclude = queries_for(embeddings, codes)
    memory = ExhaustiveCosineIndex()
    memory.add(None, embeddings)
    db = PgExhaustiveCosineIndex("m", engine)
    m_scores, m_ids = memory.search(queries, 40, exclude=exclude)
    d_scores, d_ids = db.search(queries, 40, exclude=np.where(exclude >= 0, exclude + FIRST_ID, -1))
    np.testing.assert_array_equal(d_ids, in_db_ids(m_ids))
    np.testing.assert_allclose(d_scores, m_scores, atol=1e-5)


def test_hnsw_index_serves_the_exhaustive_query(engine, stored):
    embeddings, _ = stored
    db = PgExhaustiveCosineIndex("m", engine)
    name = db.create_hnsw_index(embeddings.shape[1])
    assert db.create_hnsw_index(embeddings.shape[1]) == name  # IF NOT EXISTS
    statement, params = explainable_exhaustive_query(embeddings[:2], k=5)
    with engine.begin() as conn:
        conn.execute(sa.text("ANALYZE hash_codes"))
        # 300 rows are cheaper to sort than to walk a graph; make the planner show it can use it.
        conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
        conn.execute(sa.text("SET LOCAL enable_bitmapscan = off"))
        conn.execute(sa.text("SET LOCAL enable_sort = off"))
        plan = "\n".join(row[0] for row in conn.execute(sa.text("EXPLAIN " + statement), params))
    assert name in plan
    scores, ids = db.search(embeddings[:1], 5)
    assert ids[0, 0] >= FIRST_ID and scores[0, 0] == pytest.approx(1.0, abs=1e-6)


def explainable_exhaustive_query(queries, k):
    from iwan.db import pgsearch

    statement = pgsearch._EXHAUSTIVE_SQL.format(bits=48, dim=queries.shape[1], in_corpus="")
    vectors = [vector_literal(row) for row in queries]
    n = len(queries)
    params = {"codes": ["0" * 48] * n, "vectors": vectors, "exclude": [None] * n, "corpus": [], "model": "m", "k": k}
    return statement, params


def test_searches_restricted_to_a_corpus_equal_in_memory_ones_over_it(engine, stored):
    embeddings, codes = stored
    queries, query_codes, exclude = queries_for(embeddings, codes)
    rows = np.flatnonzero(np.random.default_rng(3).random(len(embeddings)) < 0.5)
    hashes, exhaustive = HammingCosineIndex(), ExhaustiveCosineIndex()
    hashes.add(FIRST_ID + rows, embeddings[rows], codes[rows])
    exhaustive.add(FIRST_ID + rows, embeddings[rows])
    db_exclude = np.where(exclude >= 0, exclude + FIRST_ID, -1)
    pg_hashes = PgHammingCosineIndex("m", engine, image_ids=FIRST_ID + rows)
    pg_exhaustive = PgExhaustiveCosineIndex("m", engine, image_ids=FIRST_ID + rows)
    for k in (5, 30, 200):
        m_scores, m_ids = hashes.search(queries, k, query_codes=query_codes, exclude=db_exclude)
        d_scores, d_ids = pg_hashes.search(queries, k, query_codes=query_codes, exclude=db_exclude)
        np.testing.assert_array_equal(d_ids, m_ids)
        np.testing.assert_allclose(d_scores, m_scores, atol=1e-5)
        m_scores, m_ids = exhaustive.search(queries, k, exclude=db_exclude)
        d_scores, d_ids = pg_exhaustive.search(queries, k, exclude=db_exclude)
        np.testing.assert_array_equal(d_ids, m_ids)
        np.testing.assert_allclose(d_scores, m_scores, atol=1e-5)
    assert np.isin(d_ids[d_ids >= 0], FIRST_ID + rows).all() and (d_ids[:, -1] == -1).all()


def test_unknown_model_gives_padded_results(engine, stored):
    embeddings, codes = stored
    scores, ids = PgHammingCosineIndex("nope", engine).search(embeddings[:2], 3, query_codes=codes[:2])
    assert (ids == -1).all() and np.isneginf(scores).all()
    with pytest.raises(ValueError, match=r"shortlist \(2\) must be >= k \(3\)"):
        PgHammingCosineIndex("m", engine).search(embeddings[:1], 3, query_codes=codes[:1], shortlist=2)
