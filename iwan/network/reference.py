"""The reference IWAN search: networkx's Dijkstra over the whole graph, against which the compiled
search (iwan.network.index) is tested and benchmarked. Imported only by tests and benchmarks."""

from __future__ import annotations

from collections.abc import Iterable

import networkx as nx

from hashing.search import check_k
from iwan.network.graph import QUERY_NODE, IwanGraph
from iwan.network.index import Hit, Query


def networkx_search(
    nx_graph: nx.Graph, graph: IwanGraph, query: Query, k: int, exclude: Iterable[int] = ()
) -> list[Hit]:
    """The reference: wire the query node to the query words, run networkx's Dijkstra over the
    whole graph (`graph.to_networkx()`, built once by the caller), unwire, rank the images;
    `exclude`: database ids left out of the results."""
    check_k(k)
    if nx_graph.degree(QUERY_NODE):
        raise ValueError("the networkx graph's query node already has edges: pass an unwired graph")
    wires = [(QUERY_NODE, graph.word_node(w), c) for w, c in zip(query.word_ids, query.costs)]
    nx_graph.add_weighted_edges_from(wires)
    try:
        dist, paths = nx.single_source_dijkstra(nx_graph, QUERY_NODE)
    finally:
        nx_graph.remove_edges_from([(a, b) for a, b, _ in wires])
    exclude = {int(i) for i in exclude}
    first_image = 1 + graph.n_words
    ranked = sorted(
        (d, node)
        for node, d in dist.items()
        if node >= first_image and node - first_image not in exclude
    )[:k]
    return [Hit(node - first_image, d, tuple(paths[node][1:])) for d, node in ranked]
