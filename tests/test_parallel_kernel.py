"""The parallel distance kernel (iwan.network.kernels.parallel_best, through
IwanIndex.parallel_nearest) against the numpy implementation it replaced, kept here as the
reference: ids, distances and paths bit for bit, on random indexes with additions (delta runs),
removals (tombstones), duplicate words in a row, padding, exclude and among."""

from __future__ import annotations

import numpy as np
import pytest

from iwan.network.graph import IwanGraph
from iwan.network.index import IwanIndex
from iwan.retrieval.iwan import parallel_nearest


def reference(index: IwanIndex, words, weights, k, exclude=None, among=None):
    """parallel_nearest as it was before the kernel (numpy over every image holding a start word)."""
    words = np.asarray(words, np.int64)
    weights = np.asarray(weights, np.float64)
    usable = (words >= 0) & (weights > 0) & np.isfinite(weights)
    start_cost = np.full(len(index.words) + 1, np.inf)
    np.minimum.at(start_cost, words[usable], 1.0 / weights[usable])
    chosen = np.flatnonzero(np.isfinite(start_cost[:-1])).tolist()
    with index._lock:
        edges = index._edges
        read = [slot[ptr[w]:ptr[w + 1]] for ptr, slot in (edges.main, edges.delta) for w in chosen]
        held = np.bincount(np.concatenate(read) if read else np.zeros(0, np.int32), minlength=edges.n_slots) > 1
        held &= edges.state[:edges.n_slots] >= 0
        if exclude is not None:
            skip = edges.slots(np.asarray(exclude, np.int64))
            held[skip[skip >= 0]] = False
        if among is not None:
            eligible = np.zeros(edges.n_slots, bool)
            keep = edges.slots(np.asarray(among, np.int64))
            eligible[keep[keep >= 0]] = True
            held &= eligible
        candidates = np.flatnonzero(held)
        row_words = edges.row_words[candidates].astype(np.int64)
        length = start_cost[row_words] + edges.row_costs[candidates]
        hit_ids = edges.ids[candidates]
    inverse = 1.0 / length
    distance = np.where((inverse > 0).sum(axis=1) == 1, length.min(axis=1), 1.0 / inverse.sum(axis=1))
    if len(distance) > k:
        near = np.argpartition(distance, k - 1)[:k]
        cut = distance[near].max()
        near = np.flatnonzero(distance <= cut)
    else:
        near = np.arange(len(distance))
    best = near[np.lexsort((hit_ids[near], distance[near]))][:k]
    image_node = 1 + len(index.words)
    paths = []
    for c in best.tolist():
        own = np.flatnonzero(np.isfinite(length[c]))
        own = own[np.lexsort((row_words[c][own], length[c][own]))]
        paths.append(tuple((1 + int(row_words[c][j]), image_node + int(hit_ids[c])) for j in own.tolist()))
    return distance[best], hit_ids[best], paths


def random_rows(rng, n, width, n_words):
    """Rows of (word, cost) with padding (-1, inf) and duplicate words (a few words, so many)."""
    words = rng.integers(-1, n_words, size=(n, width))
    costs = np.where(words >= 0, 1.0 / rng.uniform(0.01, 1.0, size=(n, width)), np.inf)
    return words, costs


def random_index(rng, width):
    n_words, n = 8, int(rng.integers(50, 400))
    words, costs = random_rows(rng, n, width, n_words)
    graph = IwanGraph([f"w{i}" for i in range(n_words)], np.array([0, 2]), np.array([1, 3]), np.array([1.5, 2.5]),
                      words, costs, top_wwk=2, strength="test", image_ids=np.arange(0, 2 * n, 2))
    index = IwanIndex(graph)
    next_id = 2 * n
    for _ in range(int(rng.integers(0, 4))):  # additions (delta runs) and removals (tombstones), mixed
        m = int(rng.integers(1, 60))
        probabilities = rng.uniform(0.01, 1.0, size=(m, width))
        index.add(np.arange(next_id, next_id + m), rng.integers(-1, n_words, size=(m, width)), probabilities)
        next_id += m
        held = index.image_ids
        index.remove(rng.choice(held, size=int(rng.integers(0, len(held) // 4 + 1)), replace=False))
    return index, next_id


@pytest.mark.parametrize("width", range(1, 11))
def test_kernel_matches_the_numpy_reference_bit_for_bit(width):
    rng = np.random.default_rng(width)
    checked = 0
    for _ in range(6):
        index, top_id = random_index(rng, width)
        for _ in range(8):
            m = int(rng.integers(1, 6))
            words = rng.integers(-1, 8, size=m)  # repeats and -1 among the start words
            weights = rng.choice([0.0, np.inf, *rng.uniform(0.01, 1.0, size=6)], size=m)
            k = int(rng.integers(1, 30))
            ids = np.arange(top_id + 2)
            exclude = rng.choice(ids, size=5) if rng.random() < 0.5 else None
            among = rng.choice(ids, size=top_id // 2) if rng.random() < 0.5 else None
            expected = reference(index, words, weights, k, exclude, among)
            got = parallel_nearest(index, words, weights, k, exclude, among)
            assert got[1].tolist() == expected[1].tolist()
            assert got[0].tobytes() == expected[0].tobytes()
            assert got[2] == expected[2]
            checked += len(expected[1])
        assert not index._slot_touches.any() and not index._slot_bound.any()  # the scratch left as found
        assert np.isinf(index._start_cost).all()
    assert checked > 0 or width == 1  # a row of one word holds no two start words


def test_rows_of_more_than_eight_paths_sum_as_numpy_does():
    """Ten finite paths whose inverses sum differently left to right than pairwise: the kernel
    gives numpy's figure."""
    width = 10
    costs = np.array([[1.0, 3.0, 1e-3, 7.0, 1e16, 0.1, 11.0, 13.0, 1e-8, 3e7]])
    words = np.arange(width)[None, :]
    graph = IwanGraph([f"w{i}" for i in range(width)], np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0),
                      np.vstack([words, words]), np.vstack([costs, costs * 3]), top_wwk=0, strength="test")
    index = IwanIndex(graph)
    weights = np.array([0.9, 0.3, 0.7, 1e-9, 0.5, 0.11, 0.13, 1e-5, 0.6, 0.2])
    expected = reference(index, np.arange(width), weights, 2)
    got = parallel_nearest(index, np.arange(width), weights, 2)
    assert got[1].tolist() == expected[1].tolist() == [0, 1]
    assert got[0].tobytes() == expected[0].tobytes()


def test_parallel_nearest_checks_its_start():
    index, _ = random_index(np.random.default_rng(0), 3)
    with pytest.raises(ValueError, match="two arrays of one shape"):
        index.parallel_nearest(np.zeros(3), np.ones(2), 1)
    with pytest.raises(ValueError, match="outside 0..7"):
        index.parallel_nearest(np.array([1, 8]), np.ones(2), 1)


def test_floors_follow_additions_merges_and_compactions():
    """The runs' floors are kept between searches: each search after a change (an addition to the
    delta, a merge into the main block, a compaction) still equals the reference."""
    rng = np.random.default_rng(7)
    width, n_words = 4, 8
    words, costs = random_rows(rng, 300, width, n_words)
    graph = IwanGraph([f"w{i}" for i in range(n_words)], np.array([0]), np.array([1]), np.array([1.5]),
                      words, costs, top_wwk=2, strength="test", image_ids=np.arange(300))
    index = IwanIndex(graph)
    start_words, weights = np.array([0, 1, 2, 3]), np.array([0.9, 0.5, 0.3, 0.7])
    next_id, merges, compactions = 300, 0, 0
    for _ in range(40):
        main, n_slots = index._edges.main[1], index._edges.n_slots
        if rng.random() < 0.6:
            m = int(rng.integers(1, 400))
            index.add(np.arange(next_id, next_id + m), rng.integers(-1, n_words, size=(m, width)),
                      rng.uniform(0.01, 1.0, size=(m, width)))
            next_id += m
        else:
            held = index.image_ids
            index.remove(rng.choice(held, size=int(rng.integers(1, len(held) // 3 + 2)), replace=False))
        merges += index._edges.main[1] is not main and index._edges.n_slots >= n_slots
        compactions += index._edges.n_slots < n_slots
        for k in (1, 7, 40):
            expected = reference(index, start_words, weights, k)
            got = parallel_nearest(index, start_words, weights, k)
            assert got[1].tolist() == expected[1].tolist()
            assert got[0].tobytes() == expected[0].tobytes()
            assert got[2] == expected[2]
    assert merges and compactions  # both kinds of change were met


def test_ties_with_the_kth_are_cut_by_id():
    """Many images of one row tie: the k nearest are the lowest ids among them."""
    words = np.tile(np.array([[0, 1, 2]]), (50, 1))
    costs = np.tile(np.array([[2.0, 3.0, 5.0]]), (50, 1))
    costs[[5, 17, 30]] = [1.5, 3.0, 5.0]  # three nearer ones
    graph = IwanGraph(["a", "b", "c"], np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0),
                      words, costs, top_wwk=0, strength="test", image_ids=np.arange(100, 150))
    index = IwanIndex(graph)
    distances, ids, _ = parallel_nearest(index, np.array([0, 1]), np.array([0.5, 0.5]), 6,
                                         exclude=np.array([101]))
    assert ids.tolist() == [105, 117, 130, 100, 102, 103]
    assert distances.tobytes() == reference(index, [0, 1], [0.5, 0.5], 6, exclude=[101])[0].tobytes()


def test_two_hit_lists_merge_by_the_lesser_distance():
    """kernels.lesser_of_two against the lexsorts it replaced: per id its lesser distance (the
    first list's on a tie), nearest first, ties to the lower id, on random lists full of ties."""
    from iwan.network.kernels import lesser_of_two

    rng = np.random.default_rng(3)
    for _ in range(2000):
        depth = int(rng.integers(1, 40))
        pool = int(rng.integers(1, 3 * depth + 2))
        first = rng.choice(pool, size=min(int(rng.integers(0, depth + 1)), pool), replace=False).astype(np.int64)
        second = rng.choice(pool, size=min(int(rng.integers(0, depth + 1)), pool), replace=False).astype(np.int64)
        first_distances = rng.choice([1.0, 1.5, 2.0, *rng.uniform(0.5, 3, 3)], size=len(first))
        second_distances = rng.choice([1.0, 1.5, 2.0, *rng.uniform(0.5, 3, 3)], size=len(second))
        every_id = np.concatenate([first, second])
        distance = np.concatenate([first_distances, second_distances])
        from_second = np.concatenate([np.zeros(len(first), np.int64), np.ones(len(second), np.int64)])
        order = np.lexsort((from_second, distance, every_id))
        order = order[np.concatenate(([True], every_id[order][1:] != every_id[order][:-1]))[:len(order)]]
        expected = order[np.lexsort((every_id[order], distance[order]))][:depth]
        got = lesser_of_two(first, first_distances, second, second_distances, depth)
        assert got.tolist() == expected.tolist()
