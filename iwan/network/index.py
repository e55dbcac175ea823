"""IWAN retrieval: the images nearest to a query in the image-word association network.

A query is a set of words, each at its own cost 1/weight from the query node: a query image's
top class words with their probabilities, or a text query "cat:0.8,dog:0.2". Images are ranked
by shortest-path distance from the query node, nearest first, ties to the lower database id.

`iwan.network.reference.networkx_search` is the reference: `nx.single_source_dijkstra` over the whole graph.
`IwanIndex.search_one` / `IwanIndex.search` give the same answer, bit for bit, much faster:

* It is Dijkstra over the same graph, images included, so paths that cross an image (word ->
  image -> word costs 1/p_a + 1/p_b, often less than any association) are found as they are,
  and every distance is summed edge by edge in path order exactly as networkx sums it.
* It stops early: nodes leave the heap in distance order, so once k images have left it, none
  farther than the k-th can enter the top k. The search stops when the heap's next distance
  exceeds the k-th's (images tied with the k-th are all taken, then cut by image id).
* A settled word offers its images lazily, one at a time, cheapest first (each word's images
  are kept sorted by cost): a word shared by thousands of images costs one heap entry until its
  next image is due, not thousands.

With the early stop a query settles a few hundred nodes, whatever the corpus size; the loop is
compiled (iwan.network.kernels, numba) over flat arrays (iwan.network.edges): a median 0.05 ms per query
for k=20 and 0.45 ms for k=250 at 50,000 images and at 1,000,000 alike, against 0.7 to 2 s for
networkx at 50,000 (benchmarks/bench_iwan.py).

The index is live: `add` and `remove` change the images without a rebuild, and every search
after them equals a fresh build over the images held, bit for bit. A removed image is neither a
result nor a bridge. An image excluded from a search (the query image itself, when it is in the
corpus) is left out of the results only; it stays in the graph, as a path may cross it.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hashing.arrays import read_arrays, save_folder
from hashing.search import check_k
from iwan.network.edges import ImageEdges
from iwan.network.graph import IwanGraph, describe_node, image_edges
from iwan.network.kernels import nearest, parallel_rows, run_floors
from iwan.vision.words import WordMapping, WordMatcher

INDEX_FORMAT = "iwan-index/2"
MIN_WEIGHT = 1e-300
"""Smaller query weights are refused: a word's cost is 1/weight, and a distance must stay finite."""
_GRAPH_FORMAT = "iwan-index/1"
"""The earlier format: a built graph (_GRAPH_ARRAYS), image ids its positions, no checksum;
still loaded, as a fresh build."""
_GRAPH_ARRAYS = ("words", "edge_a", "edge_b", "edge_weight", "top_wwk", "strength", "image_words", "image_costs")
_SAVED_ARRAYS = (*_GRAPH_ARRAYS, "image_ids", "max_id")
FLOOR_BLOCK = 32
"""parallel_nearest bounds each path by the least cost of its block of this many run entries
(one cost read per block, kept until the runs change; 8 to 256 timed alike within the noise of a
shared machine on CIFAR-10, 32 scoring ~180 rows per 5-example query at k=20)."""
BUILT_FORMAT = "iwan-built-index/1"
_BUILT_ARRAYS = {  # what `save_built` writes: name -> (dtype, ndim)
    "words": ("U", 1), "edge_a": ("i", 1), "edge_b": ("i", 1), "edge_weight": ("float64", 1),
    "ids": ("int64", 1), "state": ("int32", 1), "row_words": ("i", 2), "row_costs": ("float64", 2),
    **{f"{level}_{part}": kind for level in ("main", "delta")
       for part, kind in (("ptr", ("int64", 1)), ("slot", ("int32", 1)))},
}


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
    image_id: int
    """The image's database id."""
    distance: float
    path: tuple[int, ...]
    """Node ids (iwan.network.graph's numbering) from a query word to the image: words, and the images
    that bridge them; `IwanIndex.path_labels` reads them."""


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
        if weight < MIN_WEIGHT:
            raise ValueError(
                f"text query {text!r}: weight {weight:g} of {word!r} is too small (its cost 1/weight "
                f"would overflow); use weights >= {MIN_WEIGHT:g}"
            )
        terms.append((word, weight))
    if not terms:
        raise ValueError(f"text query {text!r} has no words; write e.g. cat:0.8,dog:0.2")
    return terms


class IwanIndex:
    """A live IWAN: word associations fixed, images added and removed by database id.

    Safe to share between threads: searches and changes take one lock (the search scratch is
    shared, and a search must not see half a change).
    """

    def __init__(self, graph: IwanGraph, image_ids: np.ndarray | None = None):
        n_words = graph.n_words
        ids = np.asarray(graph.image_ids) if image_ids is None else _checked_ids(image_ids, graph.n_images)
        words = np.asarray(graph.image_words)
        costs = np.asarray(graph.image_costs, dtype=np.float64)
        if words.ndim != 2 or words.shape != costs.shape:
            raise ValueError(f"IwanGraph image edges must be two (n, topIWK) arrays; got {words.shape} and {costs.shape}")
        if words.size and (words.min() < -1 or words.max() >= n_words):
            raise ValueError(f"IwanGraph.image_words holds word ids outside -1..{n_words - 1}")
        if not (costs[words >= 0] > 0).all():
            raise ValueError("IwanGraph.image_costs must be > 0 wherever an image has an edge")
        self._set_words(graph)
        self._edges = ImageEdges.build(n_words, ids, words, costs)

    @classmethod
    def from_chunks(cls, graph: IwanGraph, chunks: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], *,
                    width: int, total: int | None = None) -> IwanIndex:
        """The index of `graph`'s words and word edges (its images, if any, are ignored) over
        images taken in chunks of (ids int64 (n,), word ids (n, width) (-1: none), probabilities
        (n, width)), ids ascending across chunks, as a database cursor yields them: the same
        index as a build over all the arrays at once, with a peak memory within twice the final
        index (benchmarks/bench_iwan.py measures it). `total`: the number of images, if known
        (the rows are then allocated once)."""
        index = cls.__new__(cls)
        index._set_words(graph)
        n_words = graph.n_words

        def edges_of(ids, word_ids, probabilities):
            word_ids = np.asarray(word_ids)
            if word_ids.ndim != 2 or word_ids.shape[1] != width:
                raise ValueError(f"word ids must have shape ({len(ids)}, {width}); got {word_ids.shape}")
            return image_edges(word_ids, probabilities, n_words, ids)

        index._edges = ImageEdges.from_chunks(n_words, width, chunks, edges_of, total)
        return index

    def _set_words(self, graph: IwanGraph) -> None:
        """The vocabulary, the word-word edges (checked) and the search scratch, from `graph`."""
        n_words = graph.n_words
        for name in ("edge_a", "edge_b"):
            edge = np.asarray(getattr(graph, name))
            if edge.size and (edge.min() < 0 or edge.max() >= n_words):
                raise ValueError(f"IwanGraph.{name} holds word ids outside 0..{n_words - 1}")
        if not (np.asarray(graph.edge_weight) >= 0).all():
            raise ValueError("IwanGraph.edge_weight must be >= 0 (1/strength)")
        self.words = list(graph.words)
        self.top_wwk, self.strength = graph.top_wwk, graph.strength
        self._edge_a, self._edge_b = np.asarray(graph.edge_a), np.asarray(graph.edge_b)
        self._edge_weight = np.asarray(graph.edge_weight, dtype=np.float64)
        self._matcher: WordMatcher | None = None
        self._lock = threading.Lock()

        # Word-word edges in both directions, as CSR over word ids.
        a = np.concatenate([self._edge_a, self._edge_b])
        b = np.concatenate([self._edge_b, self._edge_a])
        weight = np.concatenate([self._edge_weight, self._edge_weight])
        order = np.lexsort((b, a))
        self._word_ptr = np.searchsorted(a[order], np.arange(n_words + 1)).astype(np.int64)
        self._word_next = b[order].astype(np.int64)
        self._word_weight = weight[order]
        # Search scratch, left as found by every search: distances inf, nothing settled.
        self._word_dist = np.full(n_words, np.inf)
        self._word_pred = np.zeros(n_words, np.int64)
        self._word_done = np.zeros(n_words, np.uint8)
        # parallel_nearest's scratch, all 0, grown to the slots; and its runs' floors, per level:
        # (the runs they were read from, block_ptr, floors), read again once those runs are replaced.
        # A slot is touched once per start word its row holds (at most the row's width): uint8.
        self._slot_touches = np.zeros(0, np.uint8)
        self._slot_bound = np.zeros(0, np.float64)
        self._start_cost = np.full(n_words + 1, np.inf)  # parallel_nearest's scratch, all inf
        self._floors: list[tuple[np.ndarray, np.ndarray, np.ndarray] | None] = [None, None]

    @property
    def ntotal(self) -> int:
        """How many images the index holds."""
        return self._edges.n_alive

    @property
    def image_ids(self) -> np.ndarray:
        """The database ids held, ascending."""
        with self._lock:
            return self._edges.live_rows()[0]

    def share_ids(self, ids: np.ndarray) -> None:
        """Hold `ids` in place of an equal array of the index's own, so that a holder of several
        indexes over the same images keeps one copy; nothing when the index's array differs
        (removed images not compacted yet, spare capacity). Safe since the index writes into its
        ids only past their end (additions; here there is no room: they move to a new array)."""
        with self._lock:
            edges = self._edges
            own = edges.ids
            if len(own) == edges.n_slots and own.dtype == ids.dtype and np.array_equal(own, ids):
                edges.ids = ids

    @property
    def ids(self) -> np.ndarray:
        """`image_ids`, by the name the hashing indexes use."""
        return self.image_ids

    @property
    def nbytes(self) -> int:
        """Bytes of all the index's arrays (spare capacity included), the search scratch and the
        runs' floors too (parallel_nearest's: held from the first query of several examples on)."""
        word_arrays = (self._word_ptr, self._word_next, self._word_weight, self._word_dist,
                       self._word_pred, self._word_done, self._edge_a, self._edge_b, self._edge_weight,
                       self._slot_touches, self._slot_bound, self._start_cost)
        floors = sum(a.nbytes for kept in self._floors if kept is not None for a in kept[1:])
        return self._edges.nbytes + sum(a.nbytes for a in word_arrays) + floors

    # --- changes -----------------------------------------------------------------------

    def add(self, image_ids: np.ndarray, word_ids: np.ndarray, probabilities: np.ndarray) -> None:
        """Add images: (n,) database ids, ascending and above every id the index ever held, with
        their top classes' (n, m) word ids (-1: none) and probabilities, as `build_graph` takes."""
        ids = np.asarray(image_ids)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"image ids must be a 1-D array of integers; got {ids.dtype} {ids.shape}")
        ids = ids.astype(np.int64)
        word_ids = np.asarray(word_ids)
        if word_ids.ndim != 2 or len(word_ids) != len(ids):
            raise ValueError(
                f"word ids must have shape ({len(ids)}, m), a row per image id; got {word_ids.shape}"
            )
        words, costs = image_edges(word_ids, probabilities, len(self.words), ids)
        if not len(ids):
            return
        if (np.diff(ids) <= 0).any():
            raise ValueError(f"image ids must ascend, each once; got {_some(ids)}")
        spare = self._edges.spare(len(ids))  # before the lock: searches need not wait for new pages
        with self._lock:
            if ids[0] <= self._edges.max_id:
                raise ValueError(
                    f"image id {ids[0]} is not above {self._edges.max_id}, the highest id this index has "
                    "held: new images take new, higher ids"
                )
            if ids[0] < 0:
                raise ValueError(f"image id {ids[0]} is negative: database ids are >= 0")
            self._edges.append(ids, words.astype(self._edges.row_words.dtype), costs, spare)

    def remove(self, image_ids: np.ndarray) -> None:
        """Remove images by database id; ValueError naming any id not held (and nothing removed)."""
        ids = np.asarray(image_ids)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"image ids must be a 1-D array of integers; got {ids.dtype} {ids.shape}")
        ids = np.unique(ids.astype(np.int64))
        with self._lock:
            slots = self._edges.slots(ids)
            missing = ids[slots < 0]
            if len(missing):
                raise ValueError(
                    f"image ids not in the index: {_some(missing)}; nothing was removed"
                )
            self._edges.remove(slots)

    # --- queries -----------------------------------------------------------------------

    def text_query(self, text: str) -> Query:
        """A query from "cat:0.8,dog:0.2"; see `words_query` for how words are matched."""
        terms = parse_text_query(text)
        return self.words_query([w for w, _ in terms], [p for _, p in terms])

    def word_mapping(self, words: Sequence[str]) -> WordMapping:
        """`words` matched onto the vocabulary as class names are (iwan.vision.words: case, plurals, head
        nouns); ValueError if none matches."""
        if self._matcher is None:
            self._matcher = WordMatcher(self.words)
        mapping = self._matcher.map(words)
        if (mapping.word_ids < 0).all():
            raise ValueError(
                f"no query word is in the norms' vocabulary: {', '.join(map(repr, words))}; "
                "try other words (the norms use common English nouns such as CAT, DOG, CAR)"
            )
        return mapping

    def words_query(self, words: Sequence[str], weights: Sequence[float]) -> Query:
        """Words matched onto the vocabulary as class names are (iwan.vision.words: case, plurals,
        head nouns). Unmatched words are listed in `Query.unknown`; if none matches, ValueError."""
        bad = [(w, p) for w, p in zip(words, weights, strict=True) if not (p >= MIN_WEIGHT and math.isfinite(p))]
        if bad:
            raise ValueError(f"query weights must be finite and >= {MIN_WEIGHT:g}; got {bad}")
        mapping = self.word_mapping(words)
        found = mapping.word_ids >= 0
        return Query.from_weights(
            mapping.word_ids,
            weights,
            mapped=tuple((n, w) for n, w in zip(mapping.names, mapping.words) if w is not None),
            unknown=tuple(n for n, ok in zip(mapping.names, found) if not ok),
        )

    # --- search ------------------------------------------------------------------------

    def search_one(self, query: Query, k: int, exclude: Iterable[int] = ()) -> list[Hit]:
        """The k nearest images (fewer if fewer are reachable), nearest first, with paths;
        `exclude`: database ids left out of the results."""
        k = check_k(k)
        self._check_words(query.word_ids)
        words = np.array([query.word_ids], dtype=np.int64).reshape(1, -1)
        costs = np.array([query.costs], dtype=np.float64).reshape(1, -1)
        skip = np.fromiter((int(i) for i in exclude), dtype=np.int64)
        with self._lock:
            skip = self._edges.slots(skip)
            distances, slots, counts, nodes, offsets = self._nearest(
                words, costs, skip[skip >= 0].reshape(1, -1), None, k, True
            )
            n = int(counts[0])
            ids = self._edges.ids[slots[0, :n]].tolist()
        nodes, offsets = nodes.tolist(), offsets.tolist()
        return [
            Hit(ids[c], d, tuple(nodes[offsets[c] : offsets[c + 1]]))
            for c, d in enumerate(distances[0, :n].tolist())
        ]

    def search(
        self,
        word_ids: np.ndarray,
        weights: np.ndarray,
        k: int,
        exclude: np.ndarray | None = None,
        paths: bool = False,
        among: np.ndarray | None = None,
    ):
        """Batch search in the project's retriever protocol.

        Query r starts from words word_ids[r] (ids, -1 for none) with weights[r], both (q, m),
        as an image's predictions are given. `exclude` (q,) or (q, e) names database image ids per
        query to leave out of its results (-1: none). Returns (scores, ids), each (q, k): scores =
        -distance (higher is better), ids int64 database ids; rows with fewer hits are padded
        with id -1 and score -inf. A query with no usable word gets a row of padding. With
        `paths`, also each hit's path of node ids (`paths[r][c]`, () for padding), found by the
        same search. `among` (ids, any order): the only images that may be results, for every
        query (None: all); the others still bridge words on a path, as an excluded image does.
        """
        k = check_k(k)
        word_ids, weights = np.asarray(word_ids), np.asarray(weights, dtype=np.float64)
        if word_ids.ndim != 2 or word_ids.shape != weights.shape:
            raise ValueError(
                "queries must be two arrays of shape (q, m), word ids and weights; got "
                f"{word_ids.shape} and {weights.shape}"
            )
        q = len(word_ids)
        exclude = np.full(q, -1) if exclude is None else np.asarray(exclude)
        if exclude.ndim == 1:
            exclude = exclude.reshape(-1, 1)
        if exclude.ndim != 2 or len(exclude) != q:
            raise ValueError(f"exclude must have shape ({q},) or ({q}, e), image ids per query; got {exclude.shape}")
        # As Query.from_weights: a word id -1, or a weight <= 0 or NaN, gives no start.
        usable = (word_ids >= 0) & (weights > 0)
        self._check_words(np.unique(word_ids[usable]).tolist())
        costs = np.divide(1.0, weights, out=np.full(weights.shape, np.inf), where=usable)
        words = np.where(usable, word_ids, -1).astype(np.int64)
        with self._lock:
            skip = self._edges.slots(exclude.astype(np.int64))
            eligible = None
            if among is not None:
                eligible = np.zeros(self._edges.n_slots, np.uint8)
                held = self._edges.slots(np.asarray(among, dtype=np.int64))
                eligible[held[held >= 0]] = 1
            distances, slots, counts, nodes, offsets = self._nearest(words, costs, skip, eligible, k, paths)
            found = slots >= 0
            ids = np.full(slots.shape, -1, np.int64)
            ids[found] = self._edges.ids[slots[found]]
        if not paths:
            return -distances, ids
        nodes, offsets, counts = nodes.tolist(), offsets.tolist(), counts.tolist()
        hit_paths = [
            [tuple(nodes[offsets[r * k + c] : offsets[r * k + c + 1]]) if c < counts[r] else () for c in range(k)]
            for r in range(q)
        ]
        return -distances, ids, hit_paths

    def _nearest(self, words, costs, exclude_slots, eligible, k: int, want_paths: bool):
        edges = self._edges
        eligible = np.zeros(0, np.uint8) if eligible is None else eligible
        return nearest(
            self._word_ptr, self._word_next, self._word_weight,
            edges.row_words, edges.row_costs, edges.state, edges.ids,
            *edges.main, *edges.delta,
            self._word_dist, self._word_pred, self._word_done,
            words, costs, exclude_slots, eligible, k, want_paths,
        )

    def parallel_nearest(self, words: np.ndarray, weights: np.ndarray, k: int, exclude: np.ndarray | None = None,
                         among: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The k live images holding several start words nearest by parallel distance
        (iwan.retrieval.iwan's module doc), nearest first, ties to the lower id, with their rows:
        (ids, distances, word ids (n, width) int64, path lengths (n, width), inf where the start
        lacks the word). The start: word ids and weights, as a query's (a word -1, or a weight
        <= 0, NaN or inf, gives no start; a word given twice keeps its larger weight). `exclude`
        (ids, -1 none) are no results, and with `among` (ids) only those are. The runs and rows
        are read under the index's lock, as its searches read them."""
        k = check_k(k)
        words, weights = np.asarray(words, np.int64).ravel(), np.asarray(weights, np.float64).ravel()
        if words.shape != weights.shape:
            raise ValueError(f"start words and weights must be two arrays of one shape; got {words.shape} and "
                             f"{weights.shape}")
        if words.size and words.max() >= len(self.words):
            self._check_words(np.unique(words[words >= 0]).tolist())
        exclude = np.zeros(0, np.int64) if exclude is None else np.asarray(exclude, np.int64).ravel()
        with self._lock:
            edges = self._edges
            if len(self._slot_touches) < edges.n_slots:
                self._slot_touches = np.zeros(len(edges.state), np.uint8)
                self._slot_bound = np.zeros(len(edges.state), np.float64)
            eligible = np.zeros(0, np.uint8)
            if among is not None:
                eligible = np.zeros(edges.n_slots, np.uint8)
                held = edges.slots(np.asarray(among, dtype=np.int64))
                eligible[held[held >= 0]] = 1
            main, delta = self._run_floors(0, edges.main), self._run_floors(1, edges.delta)
            slots, distances, hit_words, lengths = parallel_rows(
                words, weights, self._start_cost, edges.ids, exclude, *edges.main, *main, *edges.delta, *delta,
                FLOOR_BLOCK, edges.row_words, edges.row_costs, edges.state, self._slot_touches[:edges.n_slots],
                self._slot_bound[:edges.n_slots], eligible, k)
            return edges.ids[slots], distances, hit_words, lengths

    def _run_floors(self, level: int, runs: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The floors of a level's runs (kernels.run_floors), kept until the runs are replaced:
        additions replace the delta's, merges and compactions both levels' (the rows of the slots
        in a run never change). Called under the lock."""
        kept = self._floors[level]
        if kept is None or kept[0] is not runs[1]:
            kept = (runs[1], *run_floors(*runs, self._edges.row_words, self._edges.row_costs, FLOOR_BLOCK))
            self._floors[level] = kept
        return kept[1], kept[2]

    def path_labels(self, path: Sequence[int]) -> list[str]:
        """Readable nodes of a hit's path: words as words, images as "image 12" (database id)."""
        words = self.words
        return [words[node - 1] if 0 < node <= len(words) else describe_node(node, words) for node in path]

    def _check_words(self, word_ids: Sequence[int]) -> None:
        bad = [w for w in word_ids if not 0 <= w < len(self.words)]
        if bad:
            raise ValueError(
                f"query word ids {bad} are outside 0..{len(self.words) - 1}: word ids are "
                "positions in the vocabulary the index was built with"
            )

    def to_graph(self) -> IwanGraph:
        """The graph of the images held now (for the networkx reference, or a fresh build)."""
        with self._lock:
            ids, words, costs = self._edges.live_rows()
        return IwanGraph(
            self.words, self._edge_a, self._edge_b, self._edge_weight,
            words.astype(np.int64), costs, self.top_wwk, self.strength, ids,
        )

    # --- persistence -------------------------------------------------------------------

    def save_built(self, path: str | Path) -> Path:
        """Write the built index into folder `path` atomically (hashing.arrays: one .npy per array,
        renamed into place): `load_built` reads it back without building anything, the fast open
        of a large collection. `save` writes the images' rows only, rebuilt on load."""
        return save_folder(path, *self.to_arrays())

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict]:
        """(arrays, meta) of the built index as it is now, for hashing.arrays.write_arrays: the
        arrays are the index's own, which changes replace or extend past their end and never
        rewrite, except the removal marks, copied here (so this is cheap)."""
        with self._lock:
            arrays = self._edges.arrays()
            arrays["state"] = arrays["state"].copy()
            n_dead, max_id = self._edges.n_dead, self._edges.max_id
        arrays.update(words=np.array(self.words, dtype=str), edge_a=self._edge_a, edge_b=self._edge_b,
                      edge_weight=self._edge_weight)
        meta = {"format": BUILT_FORMAT, "top_wwk": self.top_wwk, "strength": self.strength, "n_dead": n_dead,
                "max_id": max_id}
        return arrays, meta

    @classmethod
    def load_built(cls, path: str | Path, *, mmap: bool = False) -> IwanIndex:
        """An index `save_built` wrote; ValueError naming the folder if it is damaged, inconsistent
        or of another kind. `mmap`: its arrays map the files (hashing.arrays) but the removal
        marks, which searches write (the rows grow into new arrays: the maps are never written)."""
        path = Path(path)
        arrays, meta = read_arrays(path, _BUILT_ARRAYS, mmap=mmap)
        arrays["state"] = np.array(arrays["state"])
        if meta.get("format") != BUILT_FORMAT:
            raise ValueError(f"{path}: not a built IWAN index of format {BUILT_FORMAT} (found {meta.get('format')})")
        try:
            graph = IwanGraph(
                words=arrays["words"].tolist(), edge_a=arrays["edge_a"], edge_b=arrays["edge_b"],
                edge_weight=arrays["edge_weight"], image_words=np.zeros((0, 1), np.int64),
                image_costs=np.zeros((0, 1)), top_wwk=int(meta["top_wwk"]), strength=str(meta["strength"]),
            )
            index = cls.__new__(cls)
            index._set_words(graph)
            index._edges = ImageEdges.from_arrays(graph.n_words, arrays, int(meta["n_dead"]), int(meta["max_id"]))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path}: inconsistent index ({error})") from None
        return index

    def save(self, path: str | Path) -> Path:
        """Write a snapshot of the images held (an .npz file; the suffix is added if missing),
        atomically: a reader sees the old file or the new one, never half of one."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        with self._lock:
            ids, words, costs = self._edges.live_rows()
            max_id = self._edges.max_id
        arrays = {
            "words": np.array(self.words, dtype=str),
            "edge_a": self._edge_a,
            "edge_b": self._edge_b,
            "edge_weight": self._edge_weight,
            "top_wwk": np.array(self.top_wwk),
            "strength": np.array(self.strength),
            "image_ids": ids,
            "image_words": words,
            "image_costs": costs,
            "max_id": np.array(max_id, dtype=np.int64),
        }
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                saved: dict[str, Any] = {"format": np.array(INDEX_FORMAT), "digest": np.array(_digest(arrays)), **arrays}
                np.savez(file, **saved)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path) -> IwanIndex:
        """A saved index; ValueError naming the file if it is not a whole, unedited snapshot."""
        path = Path(path)

        def damaged(why: str) -> ValueError:
            return ValueError(f"{path}: {' '.join(why.split())}; rebuild the index (iwan index build)")

        saved = _read_arrays(path, damaged)
        found = str(saved["format"]) if "format" in saved else None
        if found not in (INDEX_FORMAT, _GRAPH_FORMAT):
            raise damaged(f"not an IWAN index of format {INDEX_FORMAT} (found {found})")
        required = (*_SAVED_ARRAYS, "digest") if found == INDEX_FORMAT else _GRAPH_ARRAYS
        missing = [n for n in required if n not in saved]
        if missing:
            raise damaged(f"the snapshot lacks {', '.join(missing)}")
        if found == INDEX_FORMAT and _digest({n: saved[n] for n in _SAVED_ARRAYS}) != str(saved["digest"]):
            raise damaged("its contents do not match the checksum saved with them (edited or damaged)")
        try:
            if saved["words"].dtype.kind != "U":
                raise ValueError(f"words are {saved['words'].dtype}, not text")
            graph = IwanGraph(
                words=saved["words"].tolist(),
                edge_a=saved["edge_a"],
                edge_b=saved["edge_b"],
                edge_weight=saved["edge_weight"],
                image_words=saved["image_words"],
                image_costs=saved["image_costs"],
                top_wwk=int(saved["top_wwk"]),
                strength=str(saved["strength"]),
                image_ids=saved.get("image_ids"),
            )
            index = cls(graph)
            max_id = int(saved.get("max_id", index._edges.max_id))
        except (ValueError, TypeError) as error:
            raise damaged(f"inconsistent snapshot ({error})") from None
        if max_id < index._edges.max_id:
            raise damaged(f"inconsistent snapshot (max_id {max_id} is below an id it holds)")
        index._edges.max_id = max_id
        return index


def _read_arrays(path: Path, damaged) -> dict[str, np.ndarray]:
    """Every array of an .npz file, read whole; `damaged(why)` for anything unreadable."""
    try:
        saved = np.load(path, allow_pickle=False)
        if not isinstance(saved, np.lib.npyio.NpzFile):
            raise damaged("not an .npz archive")
        with saved:
            return {name: saved[name] for name in saved.files}
    except FileNotFoundError:
        raise
    except ValueError as error:
        if str(error).startswith(str(path)):
            raise
        raise damaged(f"unreadable ({error})") from None
    # Untrusted bytes: whatever numpy or zipfile raises on them is "unreadable", never a crash.
    except Exception as error:  # noqa: BLE001
        raise damaged(f"unreadable ({type(error).__name__}: {error})") from None


def _digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the arrays' names, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _checked_ids(image_ids, n: int) -> np.ndarray:
    """Validated by IwanGraph's rules (ascending database ids >= 0, one per image row)."""
    ids = np.asarray(image_ids)
    if ids.shape != (n,) or (n and not np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(f"image_ids must be {n} integer ids, one per image row; got {ids.dtype} {ids.shape}")
    ids = ids.astype(np.int64)
    if n and (ids[0] < 0 or (np.diff(ids) <= 0).any()):
        raise ValueError("image_ids must be ascending database ids >= 0, each once")
    return ids


def _some(ids: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(str(i) for i in ids[:limit].tolist())
    return shown + (f" ... ({len(ids)} in all)" if len(ids) > limit else "")
