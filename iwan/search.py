"""IWAN retrieval: the images nearest to a query in the image-word association network.

A query is a set of words, each at its own cost 1/weight from the query node: a query image's
top class words with their probabilities, or a text query "cat:0.8,dog:0.2". Images are ranked
by shortest-path distance from the query node, nearest first, ties to the lower image id.

`networkx_search` is the reference: `nx.single_source_dijkstra` over the whole graph.
`IwanIndex.search_one` / `IwanIndex.search` give the same answer, bit for bit, much faster:

* It is Dijkstra over the same graph, images included, so paths that cross an image (word ->
  image -> word costs 1/p_a + 1/p_b, often less than any association) are found as they are,
  and every distance is summed edge by edge in path order exactly as networkx sums it.
* It stops early: nodes leave the heap in distance order, so once k images have left it, none
  farther than the k-th can enter the top k. The search stops when the heap's next distance
  exceeds the k-th's (images tied with the k-th are all taken, then cut by image id).
* A settled word offers its images lazily, one at a time, cheapest first (each word's image
  edges are sorted once, at index time): a word shared by thousands of images costs one heap
  entry until its next image is due, not thousands.

With the early stop a query settles a few hundred nodes, so a plain Python heap over flat lists
is enough: about 0.1 ms per query at 50,000 images (median; a few ms for queries whose words
have few images near them) against 0.7 to 2 s for networkx (benchmarks/bench_iwan.py).

An image excluded from a search (the query image itself, when it is in the corpus) is left out
of the results only; it stays in the graph, as a path may cross it.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import numpy as np

from iwan.graph import QUERY_NODE, IwanGraph
from iwan.retrievers import check_k
from iwan.words import WordMatcher

INDEX_FORMAT = "iwan-index/1"
_SAVED_ARRAYS = ("words", "edge_a", "edge_b", "edge_weight", "image_words", "image_costs")


@dataclass(frozen=True)
class Query:
    """Where a search starts: word ids, each at cost 1/weight from the query node."""

    word_ids: tuple[int, ...]
    costs: tuple[float, ...]
    mapped: tuple[tuple[str, str], ...] = ()
    """For a text query: (word as given, vocabulary word) for each word that was found."""
    unknown: tuple[str, ...] = ()
    """For a text query: words as given that match no vocabulary word (left out)."""

    @classmethod
    def from_weights(
        cls,
        word_ids: Iterable[int],
        weights: Iterable[float],
        mapped: tuple[tuple[str, str], ...] = (),
        unknown: tuple[str, ...] = (),
    ) -> Query:
        """Words with weights (probabilities): id -1 and weights <= 0 or NaN give no start, as
        they give no image edge; a word given twice keeps its cheaper cost."""
        costs: dict[int, float] = {}
        for word_id, weight in zip(word_ids, weights, strict=True):
            word_id, weight = int(word_id), float(weight)
            if word_id >= 0 and weight > 0:
                costs[word_id] = min(costs.get(word_id, math.inf), 1.0 / weight)
        return cls(tuple(costs), tuple(costs.values()), mapped, unknown)


@dataclass(frozen=True)
class Hit:
    image: int
    """Position of the image, 0..n_images-1."""
    distance: float
    path: tuple[int, ...]
    """Node ids from a query word to the image (words, and the images that bridge them)."""


def parse_text_query(text: str) -> list[tuple[str, float]]:
    """"cat:0.8, dog:0.2" -> [("cat", 0.8), ("dog", 0.2)]; a word without ":weight" weighs 1.

    The weight is what follows the last colon, so a word with a colon ("12:00") needs one.
    """
    terms = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        word, colon, weight_text = part.rpartition(":")
        if not colon:
            word, weight_text = part, "1"
        word = word.strip()
        try:
            weight = float(weight_text)
        except ValueError:
            raise ValueError(
                f"text query {text!r}: weight {weight_text.strip()!r} of {word!r} is not a "
                "number; write word:weight, e.g. cat:0.8,dog:0.2"
            ) from None
        if not word:
            raise ValueError(f"text query {text!r}: {part!r} has a weight but no word")
        if not (weight > 0 and math.isfinite(weight)):
            raise ValueError(f"text query {text!r}: weight {weight} of {word!r} must be > 0")
        terms.append((word, weight))
    if not terms:
        raise ValueError(f"text query {text!r} has no words; write e.g. cat:0.8,dog:0.2")
    return terms


class IwanIndex:
    """A built IWAN with the flat lists the fast search walks; save once, load per CLI call."""

    def __init__(self, graph: IwanGraph):
        self.graph = graph
        self._matcher: WordMatcher | None = None
        n_images, n_words = graph.n_images, graph.n_words
        base = 1 + n_images
        self._word_base = base

        # Word-word edges in both directions, as CSR over word ids; neighbours as node ids.
        a = np.concatenate([graph.edge_a, graph.edge_b])
        b = np.concatenate([graph.edge_b, graph.edge_a])
        weight = np.concatenate([graph.edge_weight, graph.edge_weight])
        order = np.lexsort((b, a))
        self._word_ptr = np.searchsorted(a[order], np.arange(n_words + 1)).tolist()
        self._word_next = (base + b[order]).tolist()
        self._word_weight = weight[order].tolist()

        # Image edges grouped by word, cheapest first: word w's run starts at first_image[w]
        # (-1: w has no image) and the run holding position p ends before run_end[p].
        has_edge = graph.image_words >= 0
        images = np.broadcast_to(np.arange(n_images)[:, None], has_edge.shape)[has_edge]
        words, costs = graph.image_words[has_edge], graph.image_costs[has_edge]
        order = np.lexsort((images, costs, words))
        images, words, costs = images[order], words[order], costs[order]
        start = np.searchsorted(words, np.arange(n_words + 1))
        self._first_image = np.where(start[:-1] < start[1:], start[:-1], -1).tolist()
        self._run_end = start[words + 1].tolist()
        self._edge_image = (1 + images).tolist()
        self._edge_word = (base + words).tolist()
        self._edge_cost = costs.tolist()

        # Each image's own edges, row-major (n_images x topIWK), word nodes or -1.
        self._width = graph.image_words.shape[1]
        self._image_word = np.where(has_edge, base + graph.image_words, -1).ravel().tolist()
        self._image_cost = graph.image_costs.ravel().tolist()

    # --- queries -----------------------------------------------------------------------

    def text_query(self, text: str) -> Query:
        """A query from "cat:0.8,dog:0.2"; see `words_query` for how words are matched."""
        terms = parse_text_query(text)
        return self.words_query([w for w, _ in terms], [p for _, p in terms])

    def words_query(self, words: Sequence[str], weights: Sequence[float]) -> Query:
        """Words matched onto the vocabulary as class names are (iwan.words: case, plurals,
        head nouns). Unmatched words are listed in `Query.unknown`; if none matches, ValueError."""
        bad = [(w, p) for w, p in zip(words, weights, strict=True) if not (p > 0 and math.isfinite(p))]
        if bad:
            raise ValueError(f"query weights must be > 0 and finite; got {bad}")
        if self._matcher is None:
            self._matcher = WordMatcher(self.graph.words)
        mapping = self._matcher.map(words)
        if (mapping.word_ids < 0).all():
            raise ValueError(
                f"no query word is in the norms' vocabulary: {', '.join(map(repr, words))}; "
                "try other words (the norms use common English nouns such as CAT, DOG, CAR)"
            )
        found = mapping.word_ids >= 0
        return Query.from_weights(
            mapping.word_ids,
            weights,
            mapped=tuple((n, w) for n, w in zip(mapping.names, mapping.words) if w is not None),
            unknown=tuple(n for n, ok in zip(mapping.names, found) if not ok),
        )

    # --- search ------------------------------------------------------------------------

    def search_one(self, query: Query, k: int, exclude: Iterable[int] = ()) -> list[Hit]:
        """The k nearest images (fewer if fewer are reachable), nearest first, with paths."""
        check_k(k)
        self._check_words(query.word_ids)
        found, pred = self._nearest(query, k, frozenset(int(i) for i in exclude))
        return [Hit(node - 1, d, _path(pred, node)) for d, node in found]

    def search(
        self,
        word_ids: np.ndarray,
        weights: np.ndarray,
        k: int,
        exclude: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Batch search in the project's retriever protocol.

        Query r starts from words word_ids[r] (ids, -1 for none) with weights[r], both (q, m),
        as an image's predictions are given. `exclude` (q,) names one image position per query
        to leave out (-1: none). Returns (scores, ids), each (q, k): scores = -distance (higher
        is better), ids int64 image positions; rows with fewer hits are padded with id -1 and
        score -inf. A query with no usable word gets a row of padding.
        """
        check_k(k)
        word_ids, weights = np.asarray(word_ids), np.asarray(weights, dtype=np.float64)
        if word_ids.ndim != 2 or word_ids.shape != weights.shape:
            raise ValueError(
                "queries must be two arrays of shape (q, m), word ids and weights; got "
                f"{word_ids.shape} and {weights.shape}"
            )
        q = len(word_ids)
        if exclude is None:
            exclude = np.full(q, -1)
        exclude = np.asarray(exclude)
        if exclude.shape != (q,):
            raise ValueError(f"exclude must have shape ({q},), one image per query; got {exclude.shape}")
        scores = np.full((q, k), -np.inf)
        ids = np.full((q, k), -1, dtype=np.int64)
        for r in range(q):
            query = Query.from_weights(word_ids[r], weights[r])
            self._check_words(query.word_ids)
            skip = frozenset() if exclude[r] < 0 else frozenset([int(exclude[r])])
            found, _ = self._nearest(query, k, skip)
            for c, (d, node) in enumerate(found):
                scores[r, c], ids[r, c] = -d, node - 1
        return scores, ids

    def path_labels(self, path: Sequence[int]) -> list[str]:
        """Readable nodes of a hit's path: words as words, images as "image 12"."""
        return [self.graph.describe(node) for node in path]

    def _check_words(self, word_ids: Sequence[int]) -> None:
        bad = [w for w in word_ids if not 0 <= w < self.graph.n_words]
        if bad:
            raise ValueError(
                f"query word ids {bad} are outside 0..{self.graph.n_words - 1}: word ids are "
                "positions in the vocabulary the index was built with"
            )

    def _nearest(self, query: Query, k: int, exclude: frozenset[int]):
        """Early-stopping Dijkstra (see the module doc): [(distance, image node)] and predecessors."""
        inf = math.inf
        base = self._word_base
        word_ptr, word_next, word_weight = self._word_ptr, self._word_next, self._word_weight
        first_image, run_end = self._first_image, self._run_end
        edge_image, edge_word, edge_cost = self._edge_image, self._edge_word, self._edge_cost
        image_word, image_cost, width = self._image_word, self._image_cost, self._width
        push, pop = heapq.heappush, heapq.heappop

        dist = {base + w: c for w, c in zip(query.word_ids, query.costs)}
        pred = dict.fromkeys(dist, QUERY_NODE)
        # Entries (distance, node, p): p = -1 for a word, else the image edge that offers node.
        heap = [(c, node, -1) for node, c in dist.items()]
        heapq.heapify(heap)
        settled: set[int] = set()
        found: list[tuple[float, int]] = []
        bound = inf
        while heap and heap[0][0] <= bound:
            d, node, p = pop(heap)
            if p < 0:
                if node in settled:
                    continue
                settled.add(node)
                w = node - base
                for e in range(word_ptr[w], word_ptr[w + 1]):
                    v, nd = word_next[e], d + word_weight[e]
                    if nd < dist.get(v, inf):
                        dist[v], pred[v] = nd, node
                        push(heap, (nd, v, -1))
                e = first_image[w]
                if e >= 0:
                    push(heap, (d + edge_cost[e], edge_image[e], e))
                continue
            word = edge_word[p]
            if node not in settled:
                settled.add(node)
                pred[node] = word
                if node - 1 not in exclude:
                    found.append((d, node))
                    if len(found) == k:
                        bound = d
                row = (node - 1) * width
                for e in range(row, row + width):
                    v = image_word[e]
                    if v >= 0:
                        nd = d + image_cost[e]
                        if nd < dist.get(v, inf):
                            dist[v], pred[v] = nd, node
                            push(heap, (nd, v, -1))
            p += 1
            if p < run_end[p - 1]:
                push(heap, (dist[word] + edge_cost[p], edge_image[p], p))
        found.sort()
        return found[:k], pred

    # --- persistence -------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the graph to an .npz file (the suffix is added if missing); returns its path."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        g = self.graph
        np.savez(
            path,
            format=np.array(INDEX_FORMAT),
            words=np.array(g.words, dtype=str),
            edge_a=g.edge_a,
            edge_b=g.edge_b,
            edge_weight=g.edge_weight,
            image_words=g.image_words,
            image_costs=g.image_costs,
            top_wwk=np.array(g.top_wwk),
            strength=np.array(g.strength),
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> IwanIndex:
        path = Path(path)
        with np.load(path, allow_pickle=False) as saved:
            found = str(saved["format"]) if "format" in saved.files else None
            if found != INDEX_FORMAT:
                raise ValueError(
                    f"{path}: not an IWAN index of format {INDEX_FORMAT} (found {found}); "
                    "build the index again"
                )
            arrays = {name: saved[name] for name in _SAVED_ARRAYS}
            graph = IwanGraph(
                words=arrays.pop("words").tolist(),
                top_wwk=int(saved["top_wwk"]),
                strength=str(saved["strength"]),
                **arrays,
            )
        return cls(graph)


def networkx_search(
    nx_graph: nx.Graph, graph: IwanGraph, query: Query, k: int, exclude: Iterable[int] = ()
) -> list[Hit]:
    """The reference: wire the query node to the query words, run networkx's Dijkstra over the
    whole graph (`graph.to_networkx()`, built once by the caller), unwire, rank the images."""
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
    ranked = sorted(
        (d, node)
        for node, d in dist.items()
        if 1 <= node <= graph.n_images and node - 1 not in exclude
    )[:k]
    return [Hit(node - 1, d, tuple(paths[node][1:])) for d, node in ranked]


def _path(pred: dict[int, int], node: int) -> tuple[int, ...]:
    path = []
    while node != QUERY_NODE:
        path.append(node)
        node = pred[node]
    return tuple(reversed(path))
