"""hashing.cells: the cell index against brute force over its own int8 embeddings (exact where
every cell is visited or the bound stops the search), its recall on class-clustered data, the int8
agreement with float32, filters, removals, re-additions and batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from test_hash_search import cosines64, prototype_corpus, unpadded

from hashing.cells import CellCosineIndex, CellScan
from hashing.quantized import dequantize, quantize, quantize_along
from hashing.search import ExhaustiveCosineIndex

EVERY_CELL = 10**9  # a patience no search reaches: only the exact stop or the last cell ends it


def clustered(rng, n, dim=32, clusters=60, noise=0.5):
    """Unit rows around random centres, codes by class (cluster mod 6: a few codes hold many rows)."""
    centres = rng.normal(size=(clusters, dim))
    labels = rng.integers(0, clusters, n)
    rows = centres[labels] + noise * rng.normal(size=(n, dim))
    codes = rng.integers(0, 2**48, 6, dtype=np.uint64)[labels % 6]
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32), codes


def brute_force(index, held_ids, queries, k, among=None, exclude=None):
    """Ids by (-cosine, id) over the index's own int8 embeddings (embeddings_of), in float64."""
    cos = cosines64(index.embeddings_of(held_ids), queries)
    out = []
    for i in range(len(queries)):
        keep = np.ones(len(held_ids), dtype=bool)
        if among is not None:
            keep &= np.isin(held_ids, among)
        if exclude is not None:
            keep &= held_ids != exclude[i]
        rows = np.flatnonzero(keep)
        out.append(held_ids[rows[np.lexsort((held_ids[rows], -cos[i, rows]))][:k]].tolist())
    return out


@pytest.mark.parametrize("seed", range(12))
def test_visiting_every_cell_gives_the_exhaustive_answer_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 600))
    embeddings, codes = prototype_corpus(rng, n, 48, dim=8)
    ids = np.sort(rng.choice(5 * n, size=n, replace=False))
    index = CellCosineIndex(cell_rows=int(rng.integers(4, 64)), patience=EVERY_CELL)
    order = rng.permutation(n)  # arrival order is not id order
    half = n // 2
    index.add(ids[order[:half]], embeddings[order[:half]], codes[order[:half]])
    index.add(ids[order[half:]], embeddings[order[half:]], codes[order[half:]])
    queries, _ = prototype_corpus(rng, 7, 48, n_prototypes=7, dim=8)
    k = int(rng.integers(1, 40))
    exclude = np.where(rng.random(7) < 0.5, ids[rng.integers(0, n, 7)], -1)
    scores, found = index.search(queries, k, exclude=exclude)
    expected = brute_force(index, ids, queries, k, exclude=exclude)
    assert unpadded(found) == expected
    cos = cosines64(index.embeddings_of(ids), queries)
    for i, row in enumerate(expected):
        np.testing.assert_allclose(scores[i, : len(row)], cos[i, np.searchsorted(ids, row)], atol=1e-5)
        assert np.isneginf(scores[i, len(row):]).all() and (found[i, len(row):] == -1).all()
    np.testing.assert_array_equal(index.codes_of(ids[::3]), codes[::3])


@pytest.mark.parametrize("seed", range(6))
def test_a_scan_of_an_index_at_its_default_patience_is_exhaustive(seed):
    # The index's own searches stop early (patience 1: one quiet cell); the scan over the same
    # arrays visits until the bound says no unvisited row can enter, whatever its patience.
    rng = np.random.default_rng(seed)
    embeddings, codes = clustered(rng, 3000, dim=16, clusters=30, noise=0.8)
    ids = np.sort(rng.choice(10_000, size=3000, replace=False))
    index = CellCosineIndex(cell_rows=32, patience=1)
    index.add(ids, embeddings, codes)
    scan = CellScan(index)
    assert (scan.ntotal, scan.nbytes) == (3000, 0) and scan.ids is index.ids
    queries, _ = clustered(np.random.default_rng(seed + 100), 8, dim=16, clusters=30, noise=0.8)
    exclude = np.stack([ids[rng.integers(0, 3000, 8)], np.full(8, -1)], axis=1)
    among = ids[rng.random(3000) < 0.5]
    for kwargs in ({}, {"exclude": exclude}, {"among": among}):
        _, found = scan.search(queries, 50, **kwargs)
        leave = None if "exclude" not in kwargs else exclude[:, 0]
        assert unpadded(found) == brute_force(index, ids, queries, 50, among=kwargs.get("among"), exclude=leave)
    early = index.search(queries, 50)[1]
    assert unpadded(early) != unpadded(scan.search(queries, 50)[1]), "patience 1 must stop short somewhere"


def test_the_bound_stops_early_and_stays_exact_on_tight_cells():
    # Copies of a few far-apart prototypes: each cell's radius is 0, so once the top k is full of
    # the query's own prototype no other cell can reach it: the search stops without patience.
    rng = np.random.default_rng(4)
    embeddings, codes = prototype_corpus(rng, 4000, 48, n_prototypes=40, dim=64)
    index = CellCosineIndex(cell_rows=50, patience=EVERY_CELL)
    index.add(None, embeddings, codes)
    assert index.n_cells >= 40  # identical rows do not split: one cell per prototype
    queries = embeddings[:5] + 0.01 * rng.normal(size=(5, 64)).astype(np.float32)
    _, found, visited = index.search_counting(queries, 20)
    assert (visited < 400).all()
    assert unpadded(found) == brute_force(index, index.ids, queries, 20)


def test_recall_at_100_on_class_clustered_codes_scores_a_fraction():
    rng = np.random.default_rng(0)
    embeddings, codes = clustered(rng, 30_000)
    queries, _ = clustered(np.random.default_rng(1), 60)
    index = CellCosineIndex(cell_rows=256)
    index.add(None, embeddings, codes)
    exhaustive = ExhaustiveCosineIndex()
    exhaustive.add(None, embeddings)
    truth = exhaustive.search(queries, 100)[1]
    _, found, visited = index.search_counting(queries, 100)
    recall = np.mean([len(np.intersect1d(f, t)) / 100 for f, t in zip(found, truth)])
    assert recall >= 0.95
    assert np.median(visited) < len(embeddings) / 3


def test_int8_rows_keep_the_float32_top_100():
    rng = np.random.default_rng(2)
    embeddings, _ = clustered(rng, 20_000, dim=100, clusters=200, noise=0.6)
    queries, _ = clustered(np.random.default_rng(3), 40, dim=100, clusters=200, noise=0.6)
    rows, scales = quantize(embeddings)
    assert rows.dtype == np.int8 and np.abs(rows).max(axis=1).min() == 127
    approximations = dequantize(rows, scales)
    np.testing.assert_allclose(np.linalg.norm(approximations, axis=1), 1, atol=1e-5)
    assert np.abs(approximations - embeddings).max() < 0.01
    exact, approximate = ExhaustiveCosineIndex(), ExhaustiveCosineIndex()
    exact.add(None, embeddings)
    approximate.add(None, approximations)
    a, b = exact.search(queries, 100)[1], approximate.search(queries, 100)[1]
    assert np.mean([len(np.intersect1d(x, y)) / 100 for x, y in zip(a, b)]) >= 0.99

    # Offsets from the cells' centres slid along their centroids: unit vectors within the rounding,
    # a fraction of the rounding error, and none of it along the centroid (quantize_along).
    index = CellCosineIndex(cell_rows=100)  # about a cluster per cell
    index.add(None, embeddings, np.zeros(len(embeddings), dtype=np.uint64))
    assert index.n_cells > 100 and np.median(index._centre_norms) > 0.8
    centred = index.embeddings_of(index.ids)
    np.testing.assert_allclose(np.linalg.norm(centred, axis=1), 1, atol=2e-4)
    cells = np.searchsorted(index._cell_start, index._row_of, side="right") - 1
    along = np.einsum("nd,nd->n", centred - embeddings, index._centroids[cells])
    assert np.abs(along).max() < 1e-4 < np.abs(np.einsum("nd,nd->n", approximations - embeddings, index._centroids[cells])).max()
    error = np.einsum("nd,qd->nq", centred - embeddings, queries)
    assert error.std() < 0.6 * np.einsum("nd,qd->nq", approximations - embeddings, queries).std()
    assert np.mean([len(np.intersect1d(x, y)) / 100 for x, y in zip(a, CellScan(index).search(queries, 100)[1])]) \
        >= np.mean([len(np.intersect1d(x, y)) / 100 for x, y in zip(a, b)])
    with pytest.raises(ValueError, match="kept as float32"):
        quantize_along(embeddings[:, :8], np.zeros((len(embeddings), 8), np.float32), embeddings[:, :8])


def test_int16_centroids_order_the_cells_within_their_stated_error():
    # A search orders the cells and bounds what they hold by its cosines with the int16 centroids
    # (and scores rows with the float32 ones): the error it allows for must cover the real one.
    rng = np.random.default_rng(6)
    embeddings, codes = clustered(rng, 20_000, dim=100, clusters=200, noise=0.6)
    index = CellCosineIndex(cell_rows=100)
    index.add(None, embeddings, codes)
    levels, steps = index._centroid_levels, index._centroid_steps
    assert levels.dtype == np.int16 and (np.abs(levels).max(axis=1) == 32767).all()
    queries = rng.normal(size=(200, 100))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    error = np.abs(queries @ (levels * steps[:, None].astype(np.float64)).T - queries @ index._centroids.astype(np.float64).T)
    assert error.max() <= index._centroid_error < 1e-4
    assert levels.nbytes + steps.nbytes < 0.6 * index._centroids.nbytes


@pytest.mark.parametrize("seed", range(6))
def test_filters_removals_and_additions_after_removals(seed):
    rng = np.random.default_rng(seed)
    embeddings, codes = clustered(rng, 3000, dim=16)
    all_ids = np.sort(rng.choice(100_000, size=3000, replace=False))
    index = CellCosineIndex(cell_rows=32, patience=EVERY_CELL)
    held = np.zeros(3000, dtype=bool)
    replaced = embeddings.copy()
    for step in range(5):
        new = np.flatnonzero(~held & (rng.random(3000) < 0.5))
        rng.shuffle(new)
        if step >= 2:  # ids removed earlier come back with other embeddings
            replaced[new] = clustered(rng, len(new), dim=16)[0]
        index.add(all_ids[new], replaced[new], codes[new])
        held[new] = True
        gone = np.flatnonzero(held & (rng.random(3000) < 0.2))
        index.remove(all_ids[gone])
        held[gone] = False
    ids = all_ids[held]
    np.testing.assert_array_equal(index.ids, ids)
    np.testing.assert_allclose(index.embeddings_of(ids), replaced[held], atol=0.01)
    queries = clustered(rng, 6, dim=16)[0]
    among = rng.choice(ids, size=len(ids) // 7, replace=False)
    exclude = np.array([among[0], -1, ids[0], 7, among[3], -1])
    for k in (1, 10, 60):
        _, found = index.search(queries, k, among=among, exclude=exclude)
        assert unpadded(found) == brute_force(index, ids, queries, k, among=among, exclude=exclude)
    few = among[:5]  # fewer eligible than k: every one of them, then padding
    _, found = index.search(queries, 8, among=few, exclude=exclude)
    assert unpadded(found) == brute_force(index, ids, queries, 8, among=few, exclude=exclude)
    assert (found[:, 5:] == -1).all() and (found[1, :5] >= 0).all()
    with pytest.raises(ValueError, match=r"1 ids are not held"):
        index.remove(np.array([ids[0], 100_001]))


def test_several_ids_left_out_per_query_answer_as_a_filter_without_them():
    rng = np.random.default_rng(3)
    embeddings, codes = clustered(rng, 4000, dim=16)
    ids = np.arange(4000, dtype=np.int64) * 3
    index = CellCosineIndex(cell_rows=32)
    index.add(ids, embeddings, codes)
    queries = clustered(rng, 5, dim=16)[0]
    _, near = index.search(queries, 6)
    leave = np.full((5, 4), -1, dtype=np.int64)
    leave[:, :3] = near[:, :3]  # each query's three nearest, as the examples of a search are
    leave[1, 3] = 7  # an id not held leaves nothing out
    scores, found = index.search(queries, 10, exclude=leave)
    for q in range(5):
        among = ids[~np.isin(ids, leave[q])]
        want_scores, want = index.search(queries[q : q + 1], 10, among=among)
        np.testing.assert_array_equal(found[q], want[0])
        np.testing.assert_array_equal(scores[q], want_scores[0])
        assert not np.isin(found[q], leave[q][leave[q] >= 0]).any()
    with pytest.raises(ValueError, match="exclude has 2 rows for 5 queries"):
        index.search(queries, 10, exclude=leave[:2])


def test_a_batch_gives_what_single_searches_give():
    rng = np.random.default_rng(9)
    embeddings, codes = clustered(rng, 20_000)
    index = CellCosineIndex(cell_rows=128)
    index.add(None, embeddings, codes)
    queries = clustered(np.random.default_rng(10), 300)[0]
    exclude = np.where(rng.random(300) < 0.3, rng.integers(0, 20_000, 300), -1)
    scores, found = index.search(queries, 25, exclude=exclude)
    for i in range(0, 300, 7):
        one_scores, one = index.search(queries[i : i + 1], 25, exclude=exclude[i : i + 1])
        np.testing.assert_array_equal(one[0], found[i])
        np.testing.assert_array_equal(one_scores[0], scores[i])


def test_growth_rebuilds_the_cells_and_empty_searches_pad():
    index = CellCosineIndex(cell_rows=16)
    scores, found = index.search(np.ones((2, 4)), 3)
    assert (found == -1).all() and np.isneginf(scores).all()
    rng = np.random.default_rng(5)
    embeddings, codes = clustered(rng, 400, dim=4)
    index.add(None, embeddings[:20], codes[:20])
    assert index.n_cells == 1  # too few rows to split
    for start in range(20, 400, 20):
        index.add(None, embeddings[start : start + 20], codes[start : start + 20])
    assert index.n_cells > 8
    # 4 dimensions: float32 rows, their scale, shift, id, code, row and rank; per cell its float32 and
    # int16 centroid, the int16 one's step, radii, centre norm and start (one more start at the end)
    assert index.nbytes <= 400 * (4 * 4 + 4 + 1 + 8 + 8 + 4 + 4) + index.n_cells * (4 * 4 + 4 * 2 + 4 + 8 + 4 + 8) + 8
    index.remove(index.ids)  # emptied, it starts again: even embeddings of another dimension
    index.add(np.array([3, 1]), np.eye(6)[:2], codes[:2])
    assert index.n_cells == 1 and index.search(np.eye(6)[1:2], 3)[1].tolist() == [[1, 3, -1]]


def test_bad_arguments_say_what_to_do():
    index = CellCosineIndex()
    with pytest.raises(ValueError, match="3 embeddings but 2 codes"):
        index.add(None, np.eye(3), np.zeros(2, dtype=np.uint64))
    with pytest.raises(ValueError, match="1-D uint64"):
        index.add(None, np.eye(3), np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match=r"embeddings\[1\] has norm 0"):
        index.add(None, np.array([[1.0, 0], [0, 0]]), np.zeros(2, dtype=np.uint64))
    with pytest.raises(ValueError, match="patience must be >= 1"):
        CellCosineIndex(patience=0)
    index.add(None, np.eye(3), np.zeros(3, dtype=np.uint64))
    with pytest.raises(ValueError, match="patience must be >= 1"):
        index.search(np.eye(3)[:1], 1, patience=0)
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        index.search(np.ones((1, 4)), 1)
    with pytest.raises(ValueError, match="id 2 is already held"):
        index.add(np.array([2]), np.eye(3)[:1], np.zeros(1, dtype=np.uint64))
    with pytest.raises(ValueError, match="0 rows but 1 ids"):
        index.add(np.array([7]), np.zeros((0, 3)), np.zeros(0, dtype=np.uint64))
    with pytest.raises(LookupError, match="id 9 is not held"):
        index.embeddings_of(np.array([9]))


@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mapped"])
def test_a_saved_index_loads_without_a_build_and_answers_the_same(tmp_path, monkeypatch, mmap):
    rng = np.random.default_rng(21)
    rows, codes = clustered(rng, 6000)
    index = CellCosineIndex(cell_rows=64, patience=3)
    index.add(np.arange(6000) * 2, rows, codes)
    index.remove(np.arange(0, 300) * 2)
    path = index.save(tmp_path / "cells")
    monkeypatch.setattr("hashing.cells.partition", lambda *a, **k: pytest.fail("a load must not partition"))
    loaded = CellCosineIndex.load(path, mmap=mmap)
    queries, _ = clustered(rng, 50)
    for k in (1, 10, 100):
        got, want = loaded.search_counting(queries, k), index.search_counting(queries, k)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
    assert (loaded.n_cells, loaded.patience, loaded.cell_rows) == (index.n_cells, 3, 64)
    np.testing.assert_array_equal(loaded.codes_of([600, 602]), index.codes_of([600, 602]))
    more, more_codes = clustered(rng, 200)
    for changed in (index, loaded):  # changes replace the (mapped) arrays, never write into them
        changed.add(np.arange(200) * 2 + 20_001, more, more_codes)
        changed.remove(np.arange(300, 400) * 2)
    for a, b in zip(loaded.search(queries, 30), index.search(queries, 30)):
        np.testing.assert_array_equal(a, b)


def test_few_dimensions_stay_float32_and_keep_a_tight_top_100():
    # Ten classes of 10-dimensional rows within a hair of their centre (the shape of the real
    # CIFAR-10 embeddings): the top 100 is decided by differences far below an int8 step.
    rng = np.random.default_rng(30)
    centres = rng.normal(size=(10, 10))
    labels = rng.integers(0, 10, 20_000)
    rows = centres[labels] + 0.01 * rng.normal(size=(20_000, 10))
    rows = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    codes = rng.integers(0, 2**48, 10, dtype=np.uint64)[labels]
    queries = rows[:40] + np.float32(0.001) * rng.normal(size=(40, 10)).astype(np.float32)
    index = CellCosineIndex()
    index.add(None, rows, codes)
    assert index.nbytes < 20_000 * 70
    exact = ExhaustiveCosineIndex()
    exact.add(None, rows)
    truth = exact.search(queries, 100)[1]

    def agreement(found):
        return np.mean([len(np.intersect1d(f, t)) / 100 for f, t in zip(found, truth)])

    assert agreement(CellScan(index).search(queries, 100)[1]) >= 0.99
    as_int8 = ExhaustiveCosineIndex()  # what the int8 rows of 100 dimensions would have kept
    as_int8.add(None, np.rint(rows * (127 / np.abs(rows).max(axis=1, keepdims=True))).astype(np.float32))
    assert agreement(as_int8.search(queries, 100)[1]) < 0.95
    assert quantize(rows)[0].dtype == np.float32 and quantize(np.ones((1, 17), np.float32))[0].dtype == np.int8


@pytest.mark.parametrize("damage", ["rank", "cell_start", "vectors", "format", "row_dtype", "centre_norms", "centre_norm",
                                    "shifts", "shift_step"])
def test_a_damaged_saved_index_is_refused(tmp_path, damage):
    rows, codes = clustered(np.random.default_rng(22), 500)
    index = CellCosineIndex(cell_rows=64)
    index.add(None, rows, codes)
    path = index.save(tmp_path / "cells")
    if damage == "format":
        (path / "meta.json").write_text('{"format": "something/9"}')
    elif damage == "vectors":
        (path / "vectors.npy").write_bytes((path / "vectors.npy").read_bytes()[:-10])  # truncated
    elif damage == "row_dtype":  # 32 dimensions are held as int8: float32 rows are not this index's
        np.save(path / "vectors.npy", np.load(path / "vectors.npy").astype(np.float32))
    elif damage == "centre_norm":  # a centre on the sphere: its rows would be no offsets at all
        np.save(path / "centre_norms.npy", np.ones_like(np.load(path / "centre_norms.npy")))
    elif damage == "shift_step":
        meta = json.loads((path / "meta.json").read_text())
        (path / "meta.json").write_text(json.dumps({**meta, "shift_step": -1.0}))
    else:
        array = np.load(path / f"{damage}.npy")
        np.save(path / f"{damage}.npy", array[::-1].copy() if damage == "rank" else array[:-1].copy())
    with pytest.raises(ValueError, match=str(path)):
        CellCosineIndex.load(path)


def test_a_save_removes_what_an_ended_writer_left_and_nothing_else(tmp_path):
    rows, codes = clustered(np.random.default_rng(25), 300)
    index = CellCosineIndex(cell_rows=64)
    index.add(None, rows, codes)
    path = index.save(tmp_path / "cells")
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True)
    dead = int(ended.stdout)  # a process that has ended (and been waited for)
    left = [tmp_path / f".cells.{dead}.140.partial", tmp_path / f".cells.{dead}.140.3.old"]
    kept = [tmp_path / f".cells.{os.getpid()}.1.partial", tmp_path / ".cells.notes", tmp_path / ".cellsx.1.partial"]
    for folder in left + kept:
        folder.mkdir()
        (folder / "vectors.npy").write_bytes(b"half")
    index.save(path)
    assert not any(folder.exists() for folder in left)
    assert all(folder.exists() for folder in kept)
    assert CellCosineIndex.load(path).ntotal == 300


def test_an_exhaustive_index_saved_and_loaded_answers_the_same(tmp_path):
    rows, codes = clustered(np.random.default_rng(23), 800)
    for with_codes in (True, False):
        index = ExhaustiveCosineIndex()
        index.add(np.arange(800) * 5, rows, codes if with_codes else None)
        loaded = ExhaustiveCosineIndex.load(index.save(tmp_path / f"exhaustive-{with_codes}"))
        queries, _ = clustered(np.random.default_rng(24), 20)
        for a, b in zip(loaded.search(queries, 17), index.search(queries, 17)):
            np.testing.assert_array_equal(a, b)
        assert loaded.has_codes == with_codes
    np.save(tmp_path / "exhaustive-True" / "ids.npy", np.arange(799, dtype=np.int64))
    with pytest.raises(ValueError, match="800 embeddings"):
        ExhaustiveCosineIndex.load(tmp_path / "exhaustive-True")
