"""The fast IWAN search against the networkx reference, and its interface."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from iwan.network.graph import QUERY_NODE, Associations, build_graph
from iwan.network.index import IwanIndex, Query, parse_text_query
from iwan.network.reference import networkx_search

# Dyadic strengths and probabilities make every edge weight a power of two, so sums are exact
# and equal-length paths really tie: the tie rules get exercised, not dodged by rounding.
DYADIC = np.array([1.0, 0.5, 0.25, 0.125, 0.0625])


def random_instance(rng: np.random.Generator, dyadic: bool):
    n_words = int(rng.integers(2, 25))
    n_images = int(rng.integers(1, 30))
    top_iwk = int(rng.integers(1, 5))
    n_pairs = int(rng.integers(0, 3 * n_words))

    def strengths(n):
        values = rng.choice(DYADIC, n) if dyadic else rng.uniform(0.005, 1.0, n)
        values[rng.random(n) < 0.15] = np.nan
        return values

    associations = Associations(
        words=[f"W{i}" for i in range(n_words)],
        cue=rng.integers(0, n_words, n_pairs),
        target=rng.integers(0, n_words, n_pairs),
        forward=strengths(n_pairs),
        backward=strengths(n_pairs),
    )
    word_ids = rng.integers(-1, n_words, (n_images, top_iwk))
    if dyadic:
        probabilities = rng.choice(DYADIC, (n_images, top_iwk))
    else:
        probabilities = rng.dirichlet(np.ones(top_iwk + 1), n_images)[:, :top_iwk]
    graph = build_graph(
        associations,
        word_ids,
        probabilities,
        top_wwk=int(rng.integers(1, 5)),
        strength=str(rng.choice(["forward", "backward", "max"])),
    )
    return graph


def random_query(rng, graph, dyadic: bool) -> Query:
    m = int(rng.integers(1, 5))
    words = rng.integers(0, graph.n_words, m)
    weights = rng.choice(DYADIC, m) if dyadic else rng.uniform(0.01, 1.0, m)
    return Query.from_weights(words, weights)


def as_pairs(hits):
    return [(h.image_id, h.distance) for h in hits]


def assert_valid_path(nx_graph, graph, query: Query, hit):
    """The path starts at a query word, follows edges, ends at the image, and sums exactly."""
    path = hit.path
    assert path[-1] == graph.image_node(hit.image_id)
    starts = dict(zip((graph.word_node(w) for w in query.word_ids), query.costs))
    assert path[0] in starts
    total = starts[path[0]]
    for u, v in itertools.pairwise(path):
        total += nx_graph[u][v]["weight"]
    assert total == hit.distance
    assert QUERY_NODE not in path


@pytest.mark.parametrize("dyadic", [True, False], ids=["exact-ties", "continuous"])
def test_fast_search_equals_networkx_on_random_graphs(dyadic):
    rng = np.random.default_rng(7 if dyadic else 8)
    bridged_paths = ties = compared = 0
    for _ in range(250):
        graph = random_instance(rng, dyadic)
        index, nx_graph = IwanIndex(graph), graph.to_networkx()
        for _ in range(3):
            query = random_query(rng, graph, dyadic)
            k = int(rng.integers(1, graph.n_images + 3))
            exclude = rng.choice(graph.n_images, int(rng.integers(0, 2)), replace=False).tolist()
            fast = index.search_one(query, k, exclude)
            reference = networkx_search(nx_graph, graph, query, k, exclude)
            assert as_pairs(fast) == as_pairs(reference)
            assert not {h.image_id for h in fast} & set(exclude)
            for hit in fast:
                assert_valid_path(nx_graph, graph, query, hit)
                bridged_paths += any(node > graph.n_words for node in hit.path[:-1])
            distances = [h.distance for h in fast]
            ties += len(distances) - len(set(distances))
            compared += len(fast)
    # The random graphs must exercise what makes the problem hard.
    assert compared > 1000 and bridged_paths > 50
    if dyadic:
        assert ties > 100


def test_shortest_path_runs_through_an_image_bridge():
    # CAT and DOG are associated only weakly (cost 10); image 0 shows both (cost 2 + 2).
    associations = Associations.from_rows([("CAT", "DOG", 0.1, None)])
    cat, dog = associations.words.index("CAT"), associations.words.index("DOG")
    graph = build_graph(associations, np.array([[cat, dog], [dog, -1]]), np.array([[0.5, 0.5], [0.5, 0.5]]))
    index = IwanIndex(graph)
    hits = index.search_one(Query.from_weights([cat], [1.0]), k=2)
    assert as_pairs(hits) == [(0, 3.0), (1, 7.0)]  # 1 + 2; 1 + 2 + 2 + 2
    assert index.path_labels(hits[1].path) == ["CAT", "image 0", "DOG", "image 1"]
    reference = networkx_search(graph.to_networkx(), graph, Query.from_weights([cat], [1.0]), 2)
    assert as_pairs(reference) == as_pairs(hits)


def test_ties_are_broken_by_image_id_also_at_the_cut():
    associations = Associations.from_rows([("CAT", "DOG", 0.5, None)])
    cat = associations.words.index("CAT")
    word_ids = np.array([[cat]] * 5)
    probabilities = np.array([[0.25], [0.5], [0.5], [0.25], [0.5]])
    index = IwanIndex(build_graph(associations, word_ids, probabilities))
    query = Query.from_weights([cat], [1.0])
    assert as_pairs(index.search_one(query, 4)) == [(1, 3.0), (2, 3.0), (4, 3.0), (0, 5.0)]
    assert [h.image_id for h in index.search_one(query, 2)] == [1, 2]
    assert [h.image_id for h in index.search_one(query, 2, exclude=[1])] == [2, 4]


@pytest.fixture
def small_index():
    rows = [("CAT", "DOG", 0.5, None), ("DOG", "BONE", 0.25, None), ("SHARK", "FISH", 0.5, 0.1)]
    associations = Associations.from_rows(rows)
    ids = {w: i for i, w in enumerate(associations.words)}
    word_ids = np.array(
        [[ids["CAT"], -1], [ids["DOG"], ids["BONE"]], [ids["FISH"], -1], [ids["SHARK"], ids["FISH"]]]
    )
    probabilities = np.array([[0.8, 0.1], [0.6, 0.3], [0.9, 0.05], [0.5, 0.5]])
    return IwanIndex(build_graph(associations, word_ids, probabilities)), ids


def test_text_query(small_index):
    index, ids = small_index
    query = index.text_query("cats:0.8, great white shark:0.2")
    assert query.word_ids == (ids["CAT"], ids["SHARK"])
    assert query.costs == (1 / 0.8, 1 / 0.2)
    assert query.mapped == (("cats", "CAT"), ("great white shark", "SHARK"))
    assert query.unknown == ()
    hits = index.search_one(query, k=4)
    assert [h.image_id for h in hits] == [0, 1, 3, 2]
    assert index.path_labels(hits[0].path) == ["CAT", "image 0"]


def test_partly_unknown_text_query_reports_the_unknown_words(small_index):
    index, ids = small_index
    query = index.text_query("dog, xyzzy:0.5")
    assert query.word_ids == (ids["DOG"],) and query.costs == (1.0,)
    assert query.unknown == ("xyzzy",)


def test_all_unknown_words_is_an_error_naming_them(small_index):
    index, _ = small_index
    with pytest.raises(ValueError, match=r"no query word is in the norms' vocabulary: 'xyzzy', 'plugh'"):
        index.text_query("xyzzy:0.5,plugh")


@pytest.mark.parametrize(
    "text, message",
    [
        ("cat:lots", "weight 'lots' of 'cat' is not a number"),
        ("cat:0", "weight 0.0 of 'cat' must be > 0"),
        ("cat:nan", "weight nan of 'cat' must be > 0"),
        (":0.5", "has a weight but no word"),
        (" , ", "has no words"),
    ],
)
def test_bad_text_queries(text, message):
    with pytest.raises(ValueError, match=message):
        parse_text_query(text)


def test_parse_text_query():
    assert parse_text_query("cat:0.8,dog:0.2") == [("cat", 0.8), ("dog", 0.2)]
    assert parse_text_query(" test tube , 12:00:0.5 ,") == [("test tube", 1.0), ("12:00", 0.5)]


def test_query_from_weights_skips_missing_and_keeps_the_cheaper_duplicate():
    query = Query.from_weights([3, -1, 3, 5, 6], [0.25, 0.9, 0.5, 0.0, math.nan])
    assert query.word_ids == (3,) and query.costs == (2.0,)


def test_words_outside_the_vocabulary_are_an_error(small_index):
    index, _ = small_index
    with pytest.raises(ValueError, match=r"query word ids \[99\] are outside 0..4"):
        index.search_one(Query((99,), (1.0,)), k=1)
    with pytest.raises(ValueError, match="k=0 must be a whole number >= 1"):
        index.search_one(Query((0,), (1.0,)), k=0)


def test_batch_equals_single_and_pads():
    rng = np.random.default_rng(3)
    graph = random_instance(rng, dyadic=True)
    while graph.n_images < 5:
        graph = random_instance(rng, dyadic=True)
    index = IwanIndex(graph)
    q, m, k = 40, 3, graph.n_images + 2
    word_ids = rng.integers(-1, graph.n_words, (q, m))
    word_ids[0] = -1  # a query with no word: a row of padding
    weights = rng.choice(DYADIC, (q, m))
    exclude = rng.integers(-1, graph.n_images, q)
    scores, ids = index.search(word_ids, weights, k, exclude)
    assert scores.shape == ids.shape == (q, k) and ids.dtype == np.int64
    assert (ids[0] == -1).all() and (scores[0] == -np.inf).all()
    for r in range(q):
        skip = [] if exclude[r] < 0 else [exclude[r]]
        hits = index.search_one(Query.from_weights(word_ids[r], weights[r]), k, skip)
        n = len(hits)
        assert ids[r, :n].tolist() == [h.image_id for h in hits]
        assert scores[r, :n].tolist() == [-h.distance for h in hits]
        assert (ids[r, n:] == -1).all() and (scores[r, n:] == -np.inf).all()
        assert exclude[r] < 0 or exclude[r] not in ids[r]


def test_batch_shapes_are_checked(small_index):
    index, _ = small_index
    with pytest.raises(ValueError, match=r"shape \(q, m\)"):
        index.search(np.zeros((2, 3), int), np.ones((2, 2)), k=1)
    with pytest.raises(ValueError, match=r"exclude must have shape \(2,\)"):
        index.search(np.zeros((2, 3), int), np.ones((2, 3)), k=1, exclude=np.zeros(3, int))


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(11)
    graph = random_instance(rng, dyadic=False)
    index = IwanIndex(graph)
    path = index.save(tmp_path / "corpus")
    assert path.name == "corpus.npz"
    loaded = IwanIndex.load(path)
    saved = loaded.to_graph()
    for name in ("edge_a", "edge_b", "edge_weight", "image_words", "image_costs", "image_ids"):
        np.testing.assert_array_equal(getattr(saved, name), getattr(graph, name))
    assert saved.words == graph.words
    assert (saved.top_wwk, saved.strength) == (graph.top_wwk, graph.strength)
    for _ in range(20):
        query = random_query(rng, graph, dyadic=False)
        assert index.search_one(query, 5) == loaded.search_one(query, 5)


def test_loading_something_else_is_a_clear_error(tmp_path):
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="other.npz: not an IWAN index of format iwan-index/2 .*rebuild the index"):
        IwanIndex.load(tmp_path / "other.npz")


def test_reference_refuses_a_wired_graph(small_index):
    index, ids = small_index
    graph = index.to_graph()
    nx_graph = graph.to_networkx()
    nx_graph.add_edge(QUERY_NODE, graph.word_node(0), weight=1.0)
    with pytest.raises(ValueError, match="already has edges"):
        networkx_search(nx_graph, graph, Query((ids["CAT"],), (1.0,)), k=1)
