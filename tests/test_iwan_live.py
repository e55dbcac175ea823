"""The live IWAN index: additions and removals give exactly a fresh build's and networkx's results."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from iwan.config import DEFAULT_TOP_WWK
from iwan.network import edges as image_edges
from iwan.network.graph import Associations, build_graph
from iwan.network.index import IwanIndex, Query
from iwan.network.reference import networkx_search

# Dyadic strengths and probabilities: every sum is exact, so equal-length paths really tie.
DYADIC = np.array([1.0, 0.5, 0.25, 0.125, 0.0625])


def random_associations(rng: np.random.Generator, dyadic: bool) -> Associations:
    n_words = int(rng.integers(2, 20))
    n_pairs = int(rng.integers(0, 2 * n_words))

    def strengths(n):
        values = rng.choice(DYADIC, n) if dyadic else rng.uniform(0.005, 1.0, n)
        values[rng.random(n) < 0.2] = np.nan
        return values

    return Associations(
        words=[f"W{i}" for i in range(n_words)],
        cue=rng.integers(0, n_words, n_pairs),
        target=rng.integers(0, n_words, n_pairs),
        forward=strengths(n_pairs),
        backward=strengths(n_pairs),
    )


def random_images(rng, n: int, n_words: int, width: int, dyadic: bool):
    words = rng.integers(-1, n_words, (n, width))
    if dyadic:
        probabilities = rng.choice(DYADIC, (n, width))
    else:
        probabilities = rng.dirichlet(np.ones(width + 1), n)[:, :width]
    return words, probabilities


class Held:
    """The images a live index should hold, kept apart from it: the test's own record."""

    def __init__(self):
        self.rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def add(self, ids, words, probabilities):
        for i, w, p in zip(ids.tolist(), words, probabilities):
            self.rows[i] = (w, p)

    def graph(self, associations, top_wwk, strength):
        """A fresh graph over the held images, rows padded to one width with no-edge classes."""
        ids = sorted(self.rows)
        width = max([len(self.rows[i][0]) for i in ids], default=1)
        words = np.full((len(ids), width), -1)
        probabilities = np.zeros((len(ids), width))
        for r, i in enumerate(ids):
            w, p = self.rows[i]
            words[r, : len(w)], probabilities[r, : len(p)] = w, p
        return build_graph(associations, words, probabilities, top_wwk, strength, image_ids=np.array(ids, dtype=np.int64))


def pairs(hits):
    return [(h.image_id, h.distance) for h in hits]


def assert_path_follows_the_graph(nx_graph, graph, query: Query, hit):
    starts = dict(zip((graph.word_node(w) for w in query.word_ids), query.costs))
    assert hit.path[0] in starts and hit.path[-1] == graph.image_node(hit.image_id)
    total = starts[hit.path[0]]
    for u, v in zip(hit.path, hit.path[1:]):
        total += nx_graph[u][v]["weight"]
    assert total == hit.distance


@pytest.fixture(params=[8, 10**9], ids=["delta-merged-often", "delta-never-merged"])
def delta_limit(request, monkeypatch):
    monkeypatch.setattr(image_edges, "DELTA_MIN_EDGES", request.param)
    monkeypatch.setattr(image_edges, "DELTA_SQRT_FACTOR", 1)
    return request.param


@pytest.mark.parametrize("dyadic", [True, False], ids=["exact-ties", "continuous"])
def test_random_additions_and_removals_equal_a_fresh_build_and_networkx(dyadic, delta_limit):
    rng = np.random.default_rng(21 if dyadic else 22)
    compared = bridged = changed_by_others = ties = compactions = 0
    for _ in range(30):
        associations = random_associations(rng, dyadic)
        n_words = len(associations.words)
        top_wwk, strength = int(rng.integers(1, 4)), str(rng.choice(["forward", "backward", "max"]))
        width = int(rng.integers(1, 4))
        held, next_id = Held(), 0
        n_start = int(rng.integers(0, 6))
        ids = np.arange(n_start) * 3
        words, probabilities = random_images(rng, n_start, n_words, width, dyadic)
        held.add(ids, words, probabilities)
        next_id = 3 * n_start
        index = IwanIndex(held.graph(associations, top_wwk, strength))
        queries = [
            Query.from_weights(rng.integers(0, n_words, 2), rng.choice(DYADIC, 2)) for _ in range(4)
        ]
        before = None
        for _ in range(12):
            if held.rows and rng.random() < 0.4:
                gone = rng.choice(sorted(held.rows), int(rng.integers(1, min(4, len(held.rows)) + 1)), replace=False)
                dead_before = index._edges.n_dead
                index.remove(gone)
                compactions += index._edges.n_dead < dead_before + len(gone)
                for i in gone.tolist():
                    del held.rows[i]
            else:
                n = int(rng.integers(1, 5))
                ids = next_id + np.sort(rng.choice(5 * n, n, replace=False))
                next_id = int(ids[-1]) + 1 + int(rng.integers(0, 3))
                m = int(rng.integers(1, width + 2))  # narrower or wider rows than the index's
                words, probabilities = random_images(rng, n, n_words, m, dyadic)
                index.add(ids, words, probabilities)
                held.add(ids, words, probabilities)

            graph = held.graph(associations, top_wwk, strength)
            fresh, nx_graph = IwanIndex(graph), graph.to_networkx()
            assert index.ntotal == len(held.rows)
            np.testing.assert_array_equal(index.image_ids, sorted(held.rows))
            now = []
            for query in queries:
                k = int(rng.integers(1, len(held.rows) + 3))
                exclude = rng.choice(sorted(held.rows), min(1, len(held.rows)), replace=False).tolist()
                live = index.search_one(query, k, exclude)
                assert pairs(live) == pairs(fresh.search_one(query, k, exclude))
                assert pairs(live) == pairs(networkx_search(nx_graph, graph, query, k, exclude))
                for hit in live:
                    assert hit.image_id in held.rows and hit.image_id not in exclude
                    assert_path_follows_the_graph(nx_graph, graph, query, hit)
                    bridged += any(node > graph.n_words for node in hit.path[:-1])
                distances = [h.distance for h in live]
                ties += len(distances) - len(set(distances))
                compared += len(live)
                now.append(dict(pairs(index.search_one(query, max(len(held.rows), 1)))))
            # A change moves images it did not touch (through bridges that came or went).
            if before is not None:
                for old, new in zip(before, now):
                    changed_by_others += sum(old[i] != d for i, d in new.items() if i in old)
            before = now

            q = len(queries)
            word_ids = np.full((q, 2), -1)
            weights = np.zeros((q, 2))
            for r, query in enumerate(queries):
                word_ids[r, : len(query.word_ids)] = query.word_ids
                weights[r, : len(query.costs)] = 1.0 / np.array(query.costs)
            exclude = np.array([max(held.rows, default=-1)] * q)
            k = len(held.rows) + 2
            for live, reference in zip(index.search(word_ids, weights, k, exclude), fresh.search(word_ids, weights, k, exclude)):
                np.testing.assert_array_equal(live, reference)
    assert compared > 1000 and bridged > 50 and changed_by_others > 20 and compactions > 5
    if dyadic:
        assert ties > 100


def test_an_added_image_bridges_words_and_its_removal_unbridges_them():
    # CAT and DOG are associated only weakly (cost 10); image 5 shows both (cost 2 + 2).
    associations = Associations.from_rows([("CAT", "DOG", 0.1, None)])
    cat, dog = associations.words.index("CAT"), associations.words.index("DOG")
    index = IwanIndex(build_graph(associations, np.array([[dog]]), np.array([[0.5]]), image_ids=np.array([2])))
    query = Query.from_weights([cat], [1.0])
    assert pairs(index.search_one(query, 5)) == [(2, 13.0)]  # 1 + 10 + 2
    index.add(np.array([5]), np.array([[cat, dog]]), np.array([[0.5, 0.5]]))
    hits = index.search_one(query, 5)
    assert pairs(hits) == [(5, 3.0), (2, 7.0)]  # 1 + 2; 1 + 2 + 2 + 2
    assert index.path_labels(hits[1].path) == ["CAT", "image 5", "DOG", "image 2"]
    assert pairs(index.search_one(query, 5, exclude=[5])) == [(2, 7.0)]  # excluded, still a bridge
    index.remove([5])
    assert pairs(index.search_one(query, 5)) == [(2, 13.0)]
    scores, ids = index.search(np.array([[cat]]), np.array([[1.0]]), 2)
    assert ids.tolist() == [[2, -1]] and scores.tolist() == [[-13.0, -np.inf]]


def test_an_index_can_start_empty():
    associations = Associations.from_rows([("CAT", "DOG", 0.5, None)])
    index = IwanIndex(build_graph(associations, np.zeros((0, 0), int), np.zeros((0, 0))))
    assert index.ntotal == 0 and index.search_one(Query.from_weights([0], [1.0]), 3) == []
    index.add(np.array([10, 11]), np.array([[0, 1, -1], [1, -1, -1]]), np.array([[0.5, 0.25, 0.1], [1.0, 0.5, 0.5]]))
    assert pairs(index.search_one(Query.from_weights([0], [1.0]), 3)) == [(10, 3.0), (11, 4.0)]
    assert index.ntotal == 2 and index.words == ["CAT", "DOG"]


def test_growing_arrays_are_made_before_the_lock_and_a_stale_spare_is_not_used(monkeypatch):
    associations = Associations.from_rows([("CAT", "DOG", 0.5, None), ("DOG", "BONE", 0.25, None)])
    index = IwanIndex(build_graph(associations, np.array([[0, 1]]), np.full((1, 2), 0.5), image_ids=np.array([1])))
    allocate = image_edges.ImageEdges._allocate
    under_lock = []

    def watched(edges, capacity):
        under_lock.append(index._lock.locked())
        return allocate(edges, capacity)

    monkeypatch.setattr(image_edges.ImageEdges, "_allocate", watched)
    for i in range(2, 40):  # grows at 16 and 32 slots
        index.add(np.array([i]), np.array([[i % 3, -1]]), np.array([[0.5, 0.25]]))
    assert under_lock and not any(under_lock), "searches would wait while new pages are touched"
    # A spare made for rows of two edges no longer fits once rows widen to three: grown anew.
    edges = index._edges
    spare = edges.spare(64)
    edges.append(np.arange(40, 104), np.zeros((64, 3), edges.row_words.dtype), np.ones((64, 3)), spare)
    assert edges.row_words.shape[1] == 3 and edges.row_words is not spare[2]
    fresh = IwanIndex(build_graph(associations, np.array([[0, 1]]), np.full((1, 2), 0.5), image_ids=np.array([1])))
    for i in range(2, 40):
        fresh.add(np.array([i]), np.array([[i % 3, -1]]), np.array([[0.5, 0.25]]))
    fresh.add(np.arange(40, 104), np.zeros((64, 3), int), np.ones((64, 3)))
    for word in range(3):
        query = Query.from_weights([word], [1.0])
        assert pairs(index.search_one(query, 50)) == pairs(fresh.search_one(query, 50))


@pytest.fixture
def index():
    associations = Associations.from_rows([("CAT", "DOG", 0.5, None), ("DOG", "BONE", 0.25, None)])
    words = np.array([[0, 1], [1, 2], [2, -1]])
    return IwanIndex(build_graph(associations, words, np.full((3, 2), 0.5), image_ids=np.array([3, 7, 9])))


@pytest.mark.parametrize(
    "ids, message",
    [
        ([12, 11], r"image ids must ascend, each once; got 12, 11"),
        ([12, 12], r"image ids must ascend, each once"),
        ([9], r"image id 9 is not above 9, the highest id this index has held"),
        ([5], r"image id 5 is not above 9"),
    ],
)
def test_additions_need_new_ascending_ids(index, ids, message):
    n = len(ids)
    with pytest.raises(ValueError, match=message):
        index.add(np.array(ids), np.zeros((n, 2), int), np.full((n, 2), 0.5))
    assert index.ntotal == 3


def test_a_removed_id_is_not_reused_and_bad_rows_are_named(index):
    index.remove([9])
    with pytest.raises(ValueError, match="image id 9 is not above 9"):
        index.add(np.array([9]), np.zeros((1, 2), int), np.full((1, 2), 0.5))
    with pytest.raises(ValueError, match=r"image id 21, prediction 1: word id 3 is outside 0..2"):
        index.add(np.array([20, 21]), np.array([[0, 1], [0, 3]]), np.full((2, 2), 0.5))
    with pytest.raises(ValueError, match=r"shape \(2, m\), a row per image id"):
        index.add(np.array([20, 21]), np.zeros((3, 2), int), np.full((3, 2), 0.5))
    with pytest.raises(ValueError, match="1-D array of integers"):
        index.add(np.array([20.0]), np.zeros((1, 2), int), np.full((1, 2), 0.5))
    assert index.ntotal == 2


def test_removing_ids_not_held_names_them_and_removes_nothing(index):
    with pytest.raises(ValueError, match=r"image ids not in the index: 4, 8; nothing was removed"):
        index.remove([3, 4, 8])
    assert index.ntotal == 3
    index.remove([3])
    with pytest.raises(ValueError, match=r"image ids not in the index: 3;"):
        index.remove([3])
    np.testing.assert_array_equal(index.image_ids, [7, 9])


def test_save_and_load_a_live_index_with_removals(tmp_path):
    rng = np.random.default_rng(5)
    associations = random_associations(rng, dyadic=False)
    n_words = len(associations.words)
    words, probabilities = random_images(rng, 40, n_words, 3, dyadic=False)
    index = IwanIndex(build_graph(associations, words, probabilities, 2, "max"))
    more_words, more_probabilities = random_images(rng, 10, n_words, 3, dyadic=False)
    index.add(np.arange(100, 110), more_words, more_probabilities)
    index.remove([0, 5, 101, 109])
    path = index.save(tmp_path / "live")
    assert path.name == "live.npz" and [p.name for p in tmp_path.iterdir()] == ["live.npz"]

    loaded = IwanIndex.load(path)
    assert loaded.ntotal == index.ntotal == 46
    np.testing.assert_array_equal(loaded.image_ids, index.image_ids)
    assert (loaded.top_wwk, loaded.strength, loaded.words) == (2, "max", associations.words)
    for _ in range(30):
        query = Query.from_weights(rng.integers(0, n_words, 2), rng.uniform(0.1, 1, 2))
        assert loaded.search_one(query, 8) == index.search_one(query, 8)
    with pytest.raises(ValueError, match="image id 109 is not above 109"):
        loaded.add(np.array([109]), more_words[:1], more_probabilities[:1])

    loaded.remove([1])
    assert loaded.save(path) == path  # over the old snapshot
    assert IwanIndex.load(path).ntotal == 45


def test_a_truncated_snapshot_is_a_one_line_error(index, tmp_path):
    path = index.save(tmp_path / "index.npz")
    data = path.read_bytes()
    for size in (0, 10, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:size])
        with pytest.raises(ValueError, match=r"index.npz: .*; rebuild the index") as error:
            IwanIndex.load(path)
        assert "\n" not in str(error.value)


def test_an_edited_snapshot_is_refused(index, tmp_path):
    path = index.save(tmp_path / "index.npz")
    with np.load(path) as saved:
        arrays = {name: saved[name] for name in saved.files}
    arrays["image_costs"] = arrays["image_costs"] * 0.5
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=r"index.npz: its contents do not match the checksum .*rebuild the index"):
        IwanIndex.load(path)
    arrays.pop("digest")
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=r"index.npz: the snapshot lacks digest; rebuild the index"):
        IwanIndex.load(path)


def test_a_snapshot_with_out_of_range_words_is_refused_even_with_a_matching_checksum(index, tmp_path):
    from iwan.network.index import _SAVED_ARRAYS, _digest

    path = index.save(tmp_path / "index.npz")
    with np.load(path) as saved:
        arrays = {name: saved[name] for name in saved.files}
    arrays["image_words"][0, 0] = 99
    arrays["digest"] = np.array(_digest({n: arrays[n] for n in _SAVED_ARRAYS}))
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=r"index.npz: inconsistent snapshot \(.*outside -1..2\); rebuild"):
        IwanIndex.load(path)


def test_a_graph_file_of_the_first_format_still_loads(tmp_path):
    associations = Associations.from_rows([("CAT", "DOG", 0.5, None)])
    graph = build_graph(associations, np.array([[0], [1]]), np.array([[0.5], [0.25]]))
    np.savez(
        tmp_path / "old.npz", format=np.array("iwan-index/1"), words=np.array(graph.words),
        edge_a=graph.edge_a, edge_b=graph.edge_b, edge_weight=graph.edge_weight,
        image_words=graph.image_words, image_costs=graph.image_costs,
        top_wwk=np.array(graph.top_wwk), strength=np.array(graph.strength),
    )
    loaded = IwanIndex.load(tmp_path / "old.npz")
    assert pairs(loaded.search_one(Query.from_weights([0], [1.0]), 2)) == [(0, 3.0), (1, 7.0)]


def test_any_damaged_byte_is_an_error_or_harmless(index, tmp_path):
    path = index.save(tmp_path / "index.npz")
    data = path.read_bytes()
    query = Query.from_weights([0, 2], [1.0, 0.5])
    expected = index.search_one(query, 5)
    rng = np.random.default_rng(0)
    refused = 0
    for position in rng.choice(len(data), 300, replace=False):
        damaged = bytearray(data)
        damaged[position] ^= 1 << int(rng.integers(0, 8))
        path.write_bytes(bytes(damaged))
        try:
            loaded = IwanIndex.load(path)
        except ValueError as error:
            assert str(error).startswith(f"{path}: ") and "\n" not in str(error)
            assert str(error).endswith("rebuild the index (iwan index build)")
            refused += 1
        else:  # the flip hit bytes that carry no content (e.g. a zip header's timestamp)
            assert loaded.search_one(query, 5) == expected
    assert refused > 200


def test_something_else_than_an_index_is_refused(tmp_path):
    np.save(tmp_path / "array.npy", np.zeros(3))
    with pytest.raises(ValueError, match=r"array.npy: not an .npz archive; rebuild the index"):
        IwanIndex.load(tmp_path / "array.npy")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match=r"text.npz: unreadable"):
        IwanIndex.load(tmp_path / "text.npz")
    with pytest.raises(FileNotFoundError):
        IwanIndex.load(tmp_path / "missing.npz")


def test_searches_in_threads_while_images_come_and_go():
    rng = np.random.default_rng(9)
    associations = random_associations(rng, dyadic=False)
    n_words = len(associations.words)
    words, probabilities = random_images(rng, 400, n_words, 3, dyadic=False)
    index = IwanIndex(build_graph(associations, words[:100], probabilities[:100]))
    held = Held()
    held.add(np.arange(100), words[:100], probabilities[:100])
    queries = [Query.from_weights(rng.integers(0, n_words, 2), rng.uniform(0.1, 1, 2)) for _ in range(20)]
    stop, failures = threading.Event(), []

    def search():
        while not stop.is_set():
            for query in queries:
                try:
                    hits = index.search_one(query, 10)
                    assert [h.distance for h in hits] == sorted(h.distance for h in hits)
                except Exception as error:
                    failures.append(error)

    threads = [threading.Thread(target=search) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for start in range(100, 400, 10):
            ids = np.arange(start, start + 10)
            index.add(ids, words[ids], probabilities[ids])
            held.add(ids, words[ids], probabilities[ids])
            gone = rng.choice(sorted(held.rows), 6, replace=False)
            index.remove(gone)
            for i in gone.tolist():
                del held.rows[i]
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not failures
    fresh = IwanIndex(held.graph(associations, DEFAULT_TOP_WWK, "forward"))
    for query in queries:
        assert pairs(index.search_one(query, 10)) == pairs(fresh.search_one(query, 10))


def test_a_streamed_build_equals_the_build_over_whole_arrays():
    rng = np.random.default_rng(11)
    associations = random_associations(rng, dyadic=False)
    n_words = len(associations.words)
    words, probabilities = random_images(rng, 500, n_words, 4, dyadic=False)
    probabilities = probabilities.astype(np.float32)  # as the store gives them
    ids = np.sort(rng.choice(10_000, 500, replace=False)).astype(np.int64)
    whole = IwanIndex(build_graph(associations, words, probabilities, image_ids=ids))
    words_only = build_graph(associations, np.zeros((0, 4), np.int64), np.zeros((0, 4)))
    for total in (None, 500):
        chunks = ((ids[s:s + 37], words[s:s + 37], probabilities[s:s + 37]) for s in range(0, 500, 37))
        streamed = IwanIndex.from_chunks(words_only, chunks, width=4, total=total)
        assert streamed.nbytes == whole.nbytes, "no spare capacity left"
        query_words, weights = random_images(rng, 40, n_words, 3, dyadic=False)
        for k in (1, 7, 600):
            got, want = streamed.search(query_words, weights, k, paths=True), whole.search(query_words, weights, k, paths=True)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])
            assert got[2] == want[2]
    backwards = iter([(ids[5:10], words[5:10], probabilities[5:10]), (ids[:5], words[:5], probabilities[:5])])
    with pytest.raises(ValueError, match="image ids must ascend across the chunks"):
        IwanIndex.from_chunks(words_only, backwards, width=4)


@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mapped"])
def test_a_built_index_saved_and_loaded_answers_as_before_and_stays_live(tmp_path, mmap):
    rng = np.random.default_rng(12)
    associations = random_associations(rng, dyadic=True)
    n_words = len(associations.words)
    words, probabilities = random_images(rng, 300, n_words, 3, dyadic=True)
    index = IwanIndex(build_graph(associations, words, probabilities, image_ids=np.arange(300) * 3))
    index.remove(np.arange(0, 60) * 3)  # tombstones, not compacted yet
    more, more_p = random_images(rng, 20, n_words, 3, dyadic=True)
    index.add(np.arange(1000, 1020), more, more_p)  # a delta level
    path = index.save_built(tmp_path / "built")
    loaded = IwanIndex.load_built(path, mmap=mmap)
    query_words, weights = random_images(rng, 30, n_words, 2, dyadic=True)
    for k in (1, 10, 400):
        got, want = loaded.search(query_words, weights, k, paths=True), index.search(query_words, weights, k, paths=True)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])
        assert got[2] == want[2]
    for changed in (index, loaded):  # the same changes after the load keep them equal
        changed.add(np.arange(2000, 2010), *random_images(np.random.default_rng(5), 10, n_words, 3, dyadic=True))
        changed.remove(np.arange(60, 200) * 3)  # past a quarter dead: compacts
    np.testing.assert_array_equal(loaded.search(query_words, weights, 50)[1], index.search(query_words, weights, 50)[1])
    assert loaded.save_built(path) == path  # over the old folder


@pytest.mark.parametrize("damage", ["meta.json", "main_slot.npy", "ids.npy", "row_words.npy"])
def test_a_damaged_built_index_is_refused_naming_the_folder(index, tmp_path, damage):
    path = index.save_built(tmp_path / "built")
    target = path / damage
    if damage == "main_slot.npy":  # a valid file whose slots point past the images
        np.save(target, np.full(len(np.load(target)), 99, np.int32))
    elif damage == "ids.npy":  # valid, but not ascending
        np.save(target, np.array([9, 7, 3], np.int64))
    elif damage == "row_words.npy":  # of another type
        np.save(target, np.zeros((3, 2), np.float64))
    else:
        target.write_text("[1, 2")
    with pytest.raises(ValueError, match=str(path)):
        IwanIndex.load_built(path)
    with pytest.raises(ValueError, match="not a saved index folder"):
        IwanIndex.load_built(tmp_path)
