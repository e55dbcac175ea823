"""The IWAN graph builder: node numbering, edge rules, direction, the networkx view."""

from __future__ import annotations

import math

import numpy as np
import pytest

from iwan.datasets.usf import parse_paths
from iwan.network.graph import QUERY_NODE, Associations, build_graph

NAN = math.nan


def word_edges(graph) -> dict[tuple[str, str], float]:
    return {
        (graph.words[a], graph.words[b]): w
        for a, b, w in zip(graph.edge_a.tolist(), graph.edge_b.tolist(), graph.edge_weight.tolist())
    }


def no_images(n_columns=1):
    return np.zeros((0, n_columns), dtype=np.int64), np.zeros((0, n_columns))


def test_associations_from_rows():
    a = Associations.from_rows([("DOG", "CAT", 0.5, None), ("CAT", "MOUSE", 0.25, 0.125)])
    assert a.words == ["CAT", "DOG", "MOUSE"]
    np.testing.assert_array_equal(a.cue, [1, 0])
    np.testing.assert_array_equal(a.target, [0, 2])
    np.testing.assert_array_equal(a.forward, [0.5, 0.25])
    np.testing.assert_array_equal(a.backward, [NAN, 0.125])


def test_associations_reject_bad_arrays():
    with pytest.raises(ValueError, match="Associations.target holds id 5, outside the 2 words"):
        Associations(["A", "B"], np.array([0]), np.array([5]), np.array([0.5]), np.array([NAN]))
    with pytest.raises(ValueError, match="one length"):
        Associations(["A", "B"], np.array([0]), np.array([1]), np.array([0.5, 0.1]), np.array([NAN]))
    with pytest.raises(ValueError, match="1-D array of word ids"):
        Associations(["A", "B"], np.array([0.0]), np.array([1]), np.array([0.5]), np.array([NAN]))


def test_node_numbering_and_networkx_attributes():
    a = Associations.from_rows([("CAT", "DOG", 0.5, None)])
    word_ids = np.array([[0, 1], [1, -1], [-1, -1]])
    graph = build_graph(a, word_ids, np.array([[0.5, 0.25], [1.0, 0.5], [0.5, 0.5]]))
    assert (graph.n_images, graph.n_words, graph.n_nodes) == (3, 2, 6)
    np.testing.assert_array_equal(graph.image_ids, [0, 1, 2])
    assert graph.word_node(0) == 1 and graph.word_node(1) == 2
    assert graph.image_node(0) == 3 and graph.image_node(2) == 5
    np.testing.assert_array_equal(graph.word_node(np.array([0, 1])), [1, 2])
    labels = ["query", "CAT", "DOG", "image 0", "image 1", "image 2"]
    assert [graph.describe(n) for n in range(6)] == labels

    g = graph.to_networkx()
    assert sorted(g.nodes) == list(range(6))
    assert g.nodes[QUERY_NODE] == {"kind": "query"}
    assert g.nodes[4] == {"kind": "image", "image": 1}
    assert g.nodes[2] == {"kind": "word", "word": "DOG", "word_id": 1}
    assert {(min(u, v), max(u, v)): w for u, v, w in g.edges(data="weight")} == {
        (1, 2): 2.0,  # CAT - DOG, 1 / 0.5
        (1, 3): 2.0,  # image 0 - CAT
        (2, 3): 4.0,  # image 0 - DOG
        (2, 4): 1.0,  # image 1 - DOG; its -1 class has no edge
    }
    assert g.degree(5) == 0 and g.degree(QUERY_NODE) == 0


def test_images_are_numbered_by_database_id_after_the_words():
    a = Associations.from_rows([("CAT", "DOG", 0.5, None)])
    graph = build_graph(a, np.array([[0], [1]]), np.array([[0.5], [0.25]]), image_ids=np.array([7, 40]))
    assert graph.image_node(40) == 1 + 2 + 40 and graph.describe(1 + 2 + 40) == "image 40"
    g = graph.to_networkx()
    assert g.nodes[1 + 2 + 7] == {"kind": "image", "image": 7}
    assert g[1 + 2 + 40][2]["weight"] == 4.0
    with pytest.raises(ValueError, match="ascending database ids >= 0, each once"):
        build_graph(a, np.array([[0], [1]]), np.array([[0.5], [0.25]]), image_ids=np.array([7, 7]))
    with pytest.raises(ValueError, match=r"image id 40, prediction 0: word id 9 is outside 0..1"):
        build_graph(a, np.array([[0], [9]]), np.array([[0.5], [0.25]]), image_ids=np.array([7, 40]))


def test_image_edges_skip_missing_words_and_keep_the_cheaper_duplicate():
    a = Associations.from_rows([("CAT", "DOG", 0.5, None)])
    graph = build_graph(
        a,
        np.array([[1, 1, 0, -1], [0, 1, 0, 1]]),
        np.array([[0.25, 0.5, 0.0, 0.2], [NAN, 0.5, 0.125, 0.1]]),
    )
    # Image 0: DOG twice (keeps 1/0.5), CAT at probability 0 (no edge), class -1 (no edge).
    np.testing.assert_array_equal(graph.image_words, [[-1, 1, -1, -1], [-1, 1, 0, -1]])
    inf = np.inf
    np.testing.assert_array_equal(graph.image_costs, [[inf, 2.0, inf, inf], [inf, 2.0, 8.0, inf]])


def test_image_predictions_are_checked():
    a = Associations.from_rows([("CAT", "DOG", 0.5, None)])
    with pytest.raises(ValueError, match=r"image 1, prediction 0: word id 7 is outside 0..1"):
        build_graph(a, np.array([[0], [7]]), np.array([[0.5], [0.5]]))
    with pytest.raises(ValueError, match=r"shape \(n_images, topIWK\)"):
        build_graph(a, np.array([[0, 1]]), np.array([[0.5]]))
    with pytest.raises(ValueError, match="top_wwk=0"):
        build_graph(a, *no_images(), top_wwk=0)


def test_each_cue_keeps_its_top_wwk_targets_and_may_gain_more():
    rows = [("A", t, s, None) for t, s in [("B", 0.4), ("C", 0.3), ("D", 0.2), ("E", 0.1)]]
    rows += [("B", "A", 0.05, None), ("C", "A", 0.5, None), ("D", "A", 0.5, None)]
    graph = build_graph(Associations.from_rows(rows), *no_images(), top_wwk=2)
    assert word_edges(graph) == {
        ("A", "B"): 2.5,  # A's choice, and B's (1/0.05) is dearer: the cheaper stays
        ("A", "C"): 2.0,  # C's choice is cheaper than A's own (1/0.3)
        ("A", "D"): 2.0,  # not among A's top 2, but D chose A
    }
    degree = np.bincount(np.r_[graph.edge_a, graph.edge_b], minlength=graph.n_words)
    assert degree[graph.words.index("A")] == 3  # more than top_wwk: others point at it


def test_ties_go_to_the_lower_word_id_whatever_the_row_order():
    rows = [("A", "D", 0.5, None), ("A", "C", 0.5, None), ("A", "B", 0.5, None)]
    for order in (rows, rows[::-1]):
        graph = build_graph(Associations.from_rows(order), *no_images(), top_wwk=2)
        assert set(word_edges(graph)) == {("A", "B"), ("A", "C")}


def test_missing_zero_and_self_strengths_give_no_edge():
    rows = [("A", "B", NAN, 0.5), ("A", "C", 0.0, None), ("A", "A", 0.9, None), ("A", "D", 0.1, None)]
    graph = build_graph(Associations.from_rows(rows), *no_images(), top_wwk=4)
    assert word_edges(graph) == {("A", "D"): 10.0}


def test_repeated_pair_counts_once_toward_top_wwk():
    rows = [("A", "B", 0.5, None), ("A", "B", 0.25, None), ("A", "C", 0.125, None)]
    graph = build_graph(Associations.from_rows(rows), *no_images(), top_wwk=2)
    assert word_edges(graph) == {("A", "B"): 2.0, ("A", "C"): 8.0}


@pytest.mark.parametrize(
    "strength, expected",
    [
        ("forward", {("A", "B"): 2.0, ("A", "C"): 10.0}),
        ("backward", {("A", "C"): 1.25}),  # A -> B has no BSG
        ("max", {("A", "C"): 1.25, ("A", "B"): 2.0}),
    ],
)
def test_direction_option(strength, expected):
    rows = [("A", "B", 0.5, None), ("A", "C", 0.1, 0.8)]
    graph = build_graph(Associations.from_rows(rows), *no_images(), top_wwk=2, strength=strength)
    assert word_edges(graph) == expected
    assert graph.strength == strength and graph.top_wwk == 2


def test_backward_strength_ranks_a_cues_targets():
    rows = [("A", "B", 0.5, 0.01), ("A", "C", 0.1, 0.8)]
    a = Associations.from_rows(rows)
    assert set(word_edges(build_graph(a, *no_images(), top_wwk=1, strength="forward"))) == {("A", "B")}
    assert set(word_edges(build_graph(a, *no_images(), top_wwk=1, strength="backward"))) == {("A", "C")}


def test_unknown_strength_is_an_error():
    a = Associations.from_rows([("A", "B", 0.5, None)])
    with pytest.raises(ValueError, match="strength='both' is not one of forward, backward, max"):
        build_graph(a, *no_images(), strength="both")


@pytest.mark.real_data("usf")
def test_real_norms_every_cue_reaches_top_wwk(shared_data):
    rows = parse_paths([shared_data / "usf-appendix-a"])
    a = Associations.from_rows((r.cue, r.target, r.fsg, r.bsg) for r in rows)
    top = 4
    graph = build_graph(a, *no_images(), top_wwk=top)
    degree = np.bincount(np.r_[graph.edge_a, graph.edge_b], minlength=graph.n_words)
    targets = np.bincount(a.cue[np.isfinite(a.forward) & (a.forward > 0)], minlength=graph.n_words)
    assert (degree >= np.minimum(targets, top)).all()
    assert (graph.edge_a < graph.edge_b).all()
    assert len(set(zip(graph.edge_a.tolist(), graph.edge_b.tolist()))) == len(graph.edge_a)
    assert (graph.edge_weight >= 1).all()  # strengths are at most 1
    # A cue's strongest target is always linked, at 1 / its FSG or cheaper (if chosen back).
    fsg, target = max((r.fsg, r.target) for r in rows if r.cue == "CAT")
    key = tuple(sorted(["CAT", target], key=graph.words.index))
    assert word_edges(graph)[key] <= 1 / fsg
