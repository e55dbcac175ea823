"""hashing.search: both retrievers against brute force, with ties, exclusion and padding."""

from __future__ import annotations

import numpy as np
import pytest

from hashing.search import ExhaustiveCosineIndex, HammingCosineIndex, _unit_rows, hamming_distances


def prototype_corpus(rng, n, n_bits, n_prototypes=12, dim=5):
    """Embeddings that are exact copies of a few random prototypes (so cosine ties are exact and
    common, and distinct cosines are far apart) and codes of few bits (so Hamming ties are common)."""
    prototypes = rng.normal(size=(n_prototypes, dim))
    embeddings = prototypes[rng.integers(0, n_prototypes, n)].astype(np.float32)
    codes = rng.integers(0, 2**n_bits, n, dtype=np.uint64)
    return embeddings, codes


def cosines64(embeddings, queries):
    e = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    return q.astype(np.float64) @ e.astype(np.float64).T


def brute_force(embeddings, codes, queries, query_codes, k, shortlist=None, exclude=None):
    """Ids by (Hamming, id) for the shortlist (None: everything), then by (-cosine, id)."""
    cos = cosines64(embeddings, queries)
    ids = np.arange(len(embeddings))
    out = []
    for i in range(len(queries)):
        keep = ids if exclude is None or exclude[i] < 0 else ids[ids != exclude[i]]
        if shortlist is not None:
            dist = np.array([bin(int(c ^ query_codes[i])).count("1") for c in codes[keep]])
            keep = keep[np.lexsort((keep, dist))][:shortlist]
        out.append(keep[np.lexsort((keep, -cos[i, keep]))][:k].tolist())
    return out


def unpadded(ids):
    return [[int(x) for x in row if x >= 0] for row in ids]


@pytest.mark.parametrize("seed", range(40))
def test_hamming_search_equals_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    n, n_bits = int(rng.integers(1, 400)), int(rng.integers(1, 9))
    embeddings, codes = prototype_corpus(rng, n, n_bits)
    queries, query_codes = prototype_corpus(rng, 6, n_bits, n_prototypes=6)
    k = int(rng.integers(1, 30))
    shortlist = int(rng.integers(k, 3 * k + 1))
    exclude = rng.integers(-1, n, 6) if seed % 2 else None
    index = HammingCosineIndex(n_bits=n_bits)
    index.add(None, embeddings[: n // 2], codes[: n // 2])
    index.add(None, embeddings[n // 2 :], codes[n // 2 :])
    scores, ids = index.search(queries, k, query_codes=query_codes, shortlist=shortlist, exclude=exclude)
    assert ids.shape == scores.shape == (6, k) and ids.dtype == np.int64 and scores.dtype == np.float32
    expected = brute_force(embeddings, codes, queries, query_codes, k, shortlist, exclude)
    assert unpadded(ids) == expected
    cos = cosines64(embeddings, queries)
    for i, row in enumerate(expected):
        np.testing.assert_allclose(scores[i, : len(row)], cos[i, row], atol=1e-6)


@pytest.mark.parametrize("seed", range(20))
def test_exhaustive_search_equals_brute_force_with_ties(seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(1, 400))
    embeddings, _ = prototype_corpus(rng, n, 1)
    queries, _ = prototype_corpus(rng, 6, 1, n_prototypes=6)
    k = int(rng.integers(1, 40))
    exclude = rng.integers(-1, n, 6) if seed % 2 else None
    index = ExhaustiveCosineIndex()
    index.add(None, embeddings)
    scores, ids = index.search(queries, k, exclude=exclude)
    expected = brute_force(embeddings, None, queries, None, k, exclude=exclude)
    assert unpadded(ids) == expected
    cos = cosines64(embeddings, queries)
    for i, row in enumerate(expected):
        np.testing.assert_allclose(scores[i, : len(row)], cos[i, row], atol=1e-6)


def test_equal_embeddings_score_equal_wherever_stored():
    # BLAS kernels round rows at block edges differently; ties must still be exact ties.
    rng = np.random.default_rng(7)
    embeddings = np.repeat(rng.normal(size=(1, 37)).astype(np.float32), 203, axis=0)
    query = rng.normal(size=(1, 37)).astype(np.float32)
    index = ExhaustiveCosineIndex()
    index.add(None, embeddings)
    scores, ids = index.search(query, 203)
    assert len(set(scores[0].tolist())) == 1 and ids[0].tolist() == list(range(203))
    hashes = HammingCosineIndex()
    hashes.add(None, embeddings, np.zeros(203, dtype=np.uint64))
    h_scores, h_ids = hashes.search(query, 100, query_codes=np.zeros(1, dtype=np.uint64))
    assert h_ids[0].tolist() == list(range(100)) and set(h_scores[0].tolist()) == set(scores[0].tolist())


def test_exclude_removes_the_query_from_its_own_results():
    rng = np.random.default_rng(3)
    embeddings = rng.normal(size=(500, 16)).astype(np.float32)
    codes = rng.integers(0, 2**48, 500, dtype=np.uint64)
    index = HammingCosineIndex()
    index.add(None, embeddings, codes)
    queries = np.arange(0, 500, 50)
    _, with_self = index.search(embeddings[queries], 10, query_codes=codes[queries])
    assert (with_self[:, 0] == queries).all()  # distance 0 and cosine 1: each query finds itself first
    _, without = index.search(embeddings[queries], 10, query_codes=codes[queries], exclude=queries)
    assert not (without == queries[:, None]).any()
    _, wider = index.search(embeddings[queries], 11, query_codes=codes[queries], shortlist=21)
    np.testing.assert_array_equal(without[:, :9], wider[:, 1:10])
    exhaustive = ExhaustiveCosineIndex()
    exhaustive.add(None, embeddings)
    _, ex_ids = exhaustive.search(embeddings[queries], 10, exclude=queries)
    _, ex_self = exhaustive.search(embeddings[queries], 11)
    np.testing.assert_array_equal(ex_ids, ex_self[:, 1:])


@pytest.mark.parametrize("near_offset, far_distance", [(0, 30), (1, 30), (1, 40)])
def test_shortlist_cut_is_exact_when_the_sample_misleads(near_offset, far_distance):
    # The cut is estimated from every 4th distance here. Offset 0 puts the nearest codes on the
    # sampled positions (over-count: the estimated cut is too tight); offset 1 hides them from the
    # sample (under-count: too wide, and with every far code at 40 it gathers the whole corpus).
    rng = np.random.default_rng(near_offset)
    n, stride = 20_000, 4
    distance = np.full(n, far_distance)
    distance[np.arange(near_offset, 150 * stride, stride)] = 0
    distance[np.arange(1000 + 1, 1000 + 100 * stride, stride)] = 5  # never sampled
    codes = ((np.uint64(1) << distance.astype(np.uint64)) - np.uint64(1)).astype(np.uint64)
    embeddings = rng.normal(size=(n, 8)).astype(np.float32)
    index = HammingCosineIndex()
    index.add(None, embeddings, codes)
    query = rng.normal(size=(1, 8)).astype(np.float32)
    _, ids = index.search(query, 100, query_codes=np.zeros(1, dtype=np.uint64), shortlist=200)
    shortlist = np.lexsort((np.arange(n), distance))[:200]
    assert (distance[shortlist] == 0).sum() == 150 and (distance[shortlist] == 5).sum() == 50
    cos = cosines64(embeddings[shortlist], query)[0]
    np.testing.assert_array_equal(ids[0], shortlist[np.lexsort((shortlist, -cos))][:100])


def test_hamming_distances_count_differing_bits():
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 2**48, 70_000, dtype=np.uint64)  # more than one XOR chunk
    queries = codes[[3, 69_999]]
    dist = hamming_distances(codes, queries)
    assert dist.shape == (2, 70_000) and dist.dtype == np.uint8
    for row, q in zip(dist, queries):
        sample = rng.integers(0, 70_000, 300)
        assert row[sample].tolist() == [int(c ^ q).bit_count() for c in codes[sample]]


def test_short_corpora_are_padded():
    index = HammingCosineIndex()
    empty_scores, empty_ids = index.search(np.ones((2, 3)), 4, query_codes=np.zeros(2, dtype=np.uint64))
    assert (empty_ids == -1).all() and np.isneginf(empty_scores).all()
    index.add(None, np.eye(3), np.array([0, 1, 3], dtype=np.uint64))
    query, query_code = np.array([[1.0, 0.1, 0]]), np.zeros(1, dtype=np.uint64)
    scores, ids = index.search(query, 5, query_codes=query_code, exclude=np.array([1]))
    assert ids.tolist() == [[0, 2, -1, -1, -1]]
    assert np.isneginf(scores[0, 2:]).all()
    exhaustive = ExhaustiveCosineIndex()
    exhaustive.add(None, np.eye(3))
    _, ex_ids = exhaustive.search(query, 5)
    assert ex_ids.tolist() == [[0, 1, 2, -1, -1]]


def test_bad_arguments_say_what_to_do():
    index = HammingCosineIndex()
    with pytest.raises(ValueError, match="3 embeddings but 2 codes"):
        index.add(None, np.eye(3), np.zeros(2, dtype=np.uint64))
    with pytest.raises(ValueError, match="1-D uint64"):
        index.add(None, np.eye(3), np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match=r"codes\[1\] = 0x1000000000000 has bits above"):
        index.add(None, np.eye(3), np.array([0, 1 << 48, 0], dtype=np.uint64))
    with pytest.raises(ValueError, match=r"embeddings\[1\] has norm 0"):
        index.add(None, np.array([[1.0, 0], [0, 0]]), np.zeros(2, dtype=np.uint64))
    index.add(None, np.eye(3), np.zeros(3, dtype=np.uint64))
    one = np.zeros(1, dtype=np.uint64)
    with pytest.raises(ValueError, match=r"shortlist \(2\) must be >= k \(3\)"):
        index.search(np.eye(3)[:1], 3, query_codes=one, shortlist=2)
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        index.search(np.ones((1, 4)), 1, query_codes=one)
    with pytest.raises(ValueError, match="must be a whole number >= 1"):
        index.search(np.eye(3)[:1], 0, query_codes=one)
    with pytest.raises(ValueError, match=r"exclude\[0\] = -2 is not an id"):
        index.search(np.eye(3)[:1], 1, query_codes=one, exclude=np.array([-2]))
    # An id the index does not hold leaves nothing out.
    assert index.search(np.eye(3)[:1], 1, query_codes=one, exclude=np.array([3]))[1].tolist() == [[0]]
    with pytest.raises(ValueError, match="id 2 is already held"):
        index.add(np.array([2]), np.eye(3)[:1], one)
    with pytest.raises(ValueError, match="id 7 is given twice"):
        index.add(np.array([7, 7]), np.eye(3)[:2], np.zeros(2, dtype=np.uint64))
    with pytest.raises(ValueError, match="2 rows but 1 ids"):
        index.add(np.array([7]), np.eye(3)[:2], np.zeros(2, dtype=np.uint64))
    with pytest.raises(ValueError, match=r"1 ids are not held \(first: 9\)"):
        index.remove(np.array([0, 9]))
    assert index.ntotal == 3
    with pytest.raises(ValueError, match=r"exclude must be an integer array of shape \(1,\)"):
        index.search(np.eye(3)[:1], 1, query_codes=one, exclude=np.array([0, 1]))


@pytest.mark.parametrize("seed", range(12))
def test_ids_added_and_removed_give_what_a_fresh_index_gives(seed):
    """Database ids in any order of arrival, removals by mask: results equal a fresh index of what
    remains, ids and scores, bit for bit."""
    rng = np.random.default_rng(seed)
    n_bits = int(rng.integers(2, 9))
    embeddings, codes = prototype_corpus(rng, 300, n_bits)
    all_ids = np.sort(rng.choice(10_000, size=300, replace=False))
    hashes, exhaustive = HammingCosineIndex(n_bits=n_bits), ExhaustiveCosineIndex()
    held = np.zeros(300, dtype=bool)
    for _ in range(6):
        new = np.flatnonzero(~held & (rng.random(300) < 0.4))
        rng.shuffle(new)  # arrival order is not id order: the index keeps ids ascending
        hashes.add(all_ids[new], embeddings[new], codes[new])
        exhaustive.add(all_ids[new], embeddings[new])
        held[new] = True
        gone = np.flatnonzero(held & (rng.random(300) < 0.2))
        hashes.remove(all_ids[gone])
        exhaustive.remove(all_ids[gone])
        held[gone] = False
    rows = np.flatnonzero(held)
    fresh_hashes, fresh_exhaustive = HammingCosineIndex(n_bits=n_bits), ExhaustiveCosineIndex()
    fresh_hashes.add(all_ids[rows], embeddings[rows], codes[rows])
    fresh_exhaustive.add(all_ids[rows], embeddings[rows])
    assert hashes.ntotal == exhaustive.ntotal == len(rows)
    np.testing.assert_array_equal(hashes.ids, all_ids[rows])
    queries, query_codes = prototype_corpus(rng, 5, n_bits, n_prototypes=5)
    exclude = np.array([all_ids[rows[0]], -1, all_ids[rows[-1]], 5_000_000, -1])
    k = int(rng.integers(1, 40))
    live = hashes.search(queries, k, query_codes=query_codes, exclude=exclude)
    fresh = fresh_hashes.search(queries, k, query_codes=query_codes, exclude=exclude)
    for a, b in zip(live, fresh):
        np.testing.assert_array_equal(a, b)
    live = exhaustive.search(queries, k, exclude=exclude)
    fresh = fresh_exhaustive.search(queries, k, exclude=exclude)
    for a, b in zip(live, fresh):
        np.testing.assert_array_equal(a, b)
    # The results are the held ids that brute force ranks, in database terms.
    expected = brute_force(embeddings[rows], None, queries, None, k,
                           exclude=np.array([0, -1, len(rows) - 1, -1, -1]))
    assert unpadded(live[1]) == [all_ids[rows][e].tolist() for e in expected]


def test_the_exhaustive_index_keeps_rows_as_given_and_ranks_as_over_normalised_rows():
    """Its rows are kept unnormalised (so that `rows_of` gives them back bit for bit); the scores
    and order must still be those of a search over the normalised rows, ties included."""
    rng = np.random.default_rng(31)
    rows = rng.normal(size=(3000, 48)).astype(np.float32)
    rows[1000:1100] = rows[:100]  # exact duplicates: tied scores, cut by the lower id
    rows *= (10.0 ** rng.uniform(-3, 3, len(rows)))[:, None].astype(np.float32)  # norms far from 1
    ids = np.arange(3000, dtype=np.int64) * 7
    index = ExhaustiveCosineIndex()
    index.add(ids, rows)
    np.testing.assert_array_equal(index.rows_of(ids[::-1]), rows[::-1])
    unit = _unit_rows(rows, "rows")
    queries = np.concatenate([rows[:20], rng.normal(size=(30, 48)).astype(np.float32)])
    for k in (1, 25, 300):
        scores, found = index.search(queries, k)
        for q, query in enumerate(_unit_rows(queries, "queries")):
            exact = np.einsum("nd,d->n", unit, query)  # as a normalised copy scores every row
            order = np.argsort(-exact, kind="stable")[:k]
            np.testing.assert_array_equal(found[q], ids[order])
            np.testing.assert_array_equal(scores[q], exact[order])
