"""The image-word association network (IWAN) as arrays, and as a networkx graph for reference.

Nodes: 0 is the query, 1..n_words are the words (word w at node 1 + w), and the images follow,
numbered by their database id (image id i at node 1 + n_words + i), so that a node's number does
not change as images come and go (iwan.network.index.IwanIndex is live). Edges, all weighted 1/strength:

* image - word: each image to the words of its top classes, weight 1/probability. A class with
  no word (id -1) or a probability <= 0 gives no edge; two classes with one word keep the cheaper.
* word - word: each cue of the norms to its `top_wwk` strongest targets. A word thus links to at
  least `top_wwk` words when it is a cue with that many targets, and to more when other cues
  choose it; a word that is never a cue has only the edges that cues give it.

Direction. Free association is directed (FSG: cue -> target, BSG: target -> cue), but the graph is
undirected, as in the original work: a query reaches an image through a chain of associations in
either direction. `strength` decides which number ranks a cue's targets and weighs the edge:
"forward" (FSG, the original work), "backward" (BSG, how strongly the target calls up the cue) or
"max" (the stronger of the two). Missing (NaN) and zero strengths give no edge, nor does a cue
with itself; a pair linked twice (A chose B and B chose A) keeps the cheaper edge. Ties among a
cue's targets go to the lower word id, so the graph does not depend on row order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numpy as np

from iwan.config import DEFAULT_STRENGTH, DEFAULT_TOP_WWK, STRENGTHS

if TYPE_CHECKING:
    import networkx as nx

QUERY_NODE = 0


@dataclass(frozen=True)
class Associations:
    """A norm set as arrays: pair j is words[cue[j]] -> words[target[j]] with FSG and BSG."""

    words: list[str]
    cue: np.ndarray
    target: np.ndarray
    forward: np.ndarray
    """FSG per pair; NaN where missing."""
    backward: np.ndarray
    """BSG per pair; NaN where missing."""

    def __post_init__(self):
        object.__setattr__(self, "words", list(self.words))
        for name in ("cue", "target"):
            ids = np.asarray(getattr(self, name))
            if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
                raise ValueError(
                    f"Associations.{name} must be a 1-D array of word ids, got {ids.dtype} {ids.shape}"
                )
            if ids.size and (ids.min() < 0 or ids.max() >= len(self.words)):
                raise ValueError(
                    f"Associations.{name} holds id {ids.min() if ids.min() < 0 else ids.max()}, "
                    f"outside the {len(self.words)} words: ids are positions in `words`"
                )
            object.__setattr__(self, name, ids.astype(np.int64))
        for name in ("forward", "backward"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float64))
        shapes = {n: getattr(self, n).shape for n in ("cue", "target", "forward", "backward")}
        if len(set(shapes.values())) != 1:
            raise ValueError(f"Associations arrays must have one length, got {shapes}")

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[str, str, float | None, float | None]]) -> Associations:
        """From (cue, target, fsg, bsg) rows, None for missing; the words are sorted."""
        rows = list(rows)
        words = sorted({r[0] for r in rows} | {r[1] for r in rows})
        position = {word: i for i, word in enumerate(words)}

        def number(value):
            return np.nan if value is None else float(value)

        return cls(
            words=words,
            cue=np.array([position[r[0]] for r in rows], dtype=np.int64),
            target=np.array([position[r[1]] for r in rows], dtype=np.int64),
            forward=np.array([number(r[2]) for r in rows], dtype=np.float64),
            backward=np.array([number(r[3]) for r in rows], dtype=np.float64),
        )

    def strength(self, kind: str) -> np.ndarray:
        """The strength of each pair that `kind` (one of STRENGTHS) reads; NaN where missing."""
        if kind == "forward":
            return self.forward
        if kind == "backward":
            return self.backward
        if kind == "max":
            return np.fmax(self.forward, self.backward)  # fmax: one missing side is no veto
        raise ValueError(f"strength={kind!r} is not one of {', '.join(STRENGTHS)}")


@dataclass(frozen=True)
class IwanGraph:
    """The network's edges as arrays, query node unwired (a search wires it)."""

    words: list[str]
    edge_a: np.ndarray
    """Word-word edges, each once with edge_a < edge_b (word ids), and their weights."""
    edge_b: np.ndarray
    edge_weight: np.ndarray
    image_words: np.ndarray
    """(n_images, topIWK) word ids of each image's edges; -1 where there is no edge."""
    image_costs: np.ndarray
    """(n_images, topIWK) edge weights 1/probability; inf where there is no edge."""
    top_wwk: int
    strength: str
    """How the word-word edges were chosen (see build_graph)."""
    image_ids: np.ndarray | None = None
    """(n_images,) database id of each image row, ascending; None: the positions 0..n_images-1."""

    def __post_init__(self):
        n = self.image_words.shape[0]
        ids = np.arange(n, dtype=np.int64) if self.image_ids is None else np.asarray(self.image_ids)
        if ids.shape != (n,) or (n and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"IwanGraph.image_ids must be {n} integer ids, one per image row; got {ids.dtype} {ids.shape}")
        ids = ids.astype(np.int64)
        if n and (ids[0] < 0 or (np.diff(ids) <= 0).any()):
            raise ValueError("IwanGraph.image_ids must be ascending database ids >= 0, each once")
        object.__setattr__(self, "image_ids", ids)

    @property
    def n_images(self) -> int:
        return self.image_words.shape[0]

    @property
    def n_words(self) -> int:
        return len(self.words)

    @property
    def n_nodes(self) -> int:
        return 1 + self.n_images + self.n_words

    def image_node(self, image_id):
        """Node id(s) of database image id(s)."""
        return 1 + self.n_words + (np.asarray(image_id) if np.ndim(image_id) else int(image_id))

    def word_node(self, word):
        """Node id(s) of word id(s) 0..n_words-1."""
        return 1 + (np.asarray(word) if np.ndim(word) else int(word))

    def describe(self, node: int) -> str:
        """A label for a node: the query, the word or "image 12" (a database id)."""
        return describe_node(node, self.words)

    def to_networkx(self) -> nx.Graph:
        """The whole network as an undirected networkx graph with `weight` on every edge.

        Nodes carry `kind` ("query", "image" or "word"), images their database id as `image`,
        words their text as `word` and their id as `word_id`.
        """
        import networkx as nx  # the reference only: the CLI starts without it

        graph = nx.Graph()
        graph.add_node(QUERY_NODE, kind="query")
        graph.add_nodes_from(
            (self.word_node(w), {"kind": "word", "word": word, "word_id": w})
            for w, word in enumerate(self.words)
        )
        image_ids = cast(np.ndarray, self.image_ids)  # __post_init__ replaces None with the positions
        graph.add_nodes_from(
            (self.image_node(i), {"kind": "image", "image": i}) for i in image_ids.tolist()
        )
        a, b = self.word_node(self.edge_a), self.word_node(self.edge_b)
        graph.add_weighted_edges_from(zip(a.tolist(), b.tolist(), self.edge_weight.tolist()))
        has_edge = self.image_words >= 0
        images = np.broadcast_to(image_ids[:, None], self.image_words.shape)
        graph.add_weighted_edges_from(
            zip(
                self.image_node(images[has_edge]).tolist(),
                self.word_node(self.image_words[has_edge]).tolist(),
                self.image_costs[has_edge].tolist(),
            )
        )
        return graph


def describe_node(node: int, words: list[str]) -> str:
    """A label for a node of a graph over `words`: the query, the word or "image 12"."""
    if node == QUERY_NODE:
        return "query"
    if node <= len(words):
        return words[node - 1]
    return f"image {node - 1 - len(words)}"


def build_graph(
    associations: Associations,
    image_word_ids: np.ndarray,
    image_probabilities: np.ndarray,
    top_wwk: int = DEFAULT_TOP_WWK,
    strength: str = DEFAULT_STRENGTH,
    image_ids: np.ndarray | None = None,
) -> IwanGraph:
    """The IWAN of a corpus (see the module doc for the edge rules).

    `image_word_ids` (n_images, topIWK) are ids in `associations.words` of each image's top
    classes, -1 for a class that maps to no word; `image_probabilities` their probabilities;
    `image_ids` the images' database ids, ascending (default: their positions).
    """
    if top_wwk < 1:
        raise ValueError(f"top_wwk={top_wwk} must be >= 1")
    edge_a, edge_b, edge_weight = _word_edges(associations, top_wwk, strength)
    image_words, image_costs = image_edges(
        image_word_ids, image_probabilities, len(associations.words), image_ids
    )
    return IwanGraph(
        associations.words, edge_a, edge_b, edge_weight, image_words, image_costs, top_wwk, strength,
        image_ids,
    )


def _word_edges(associations: Associations, top_wwk: int, strength: str):
    s = associations.strength(strength)
    cue, target = associations.cue, associations.target
    keep = np.isfinite(s) & (s > 0) & (cue != target)
    cue, target, s = cue[keep], target[keep], s[keep]
    # Strongest first within each cue, ties to the lower target id; a repeated pair then comes
    # right after its strongest copy and is dropped before the top-k cut.
    order = np.lexsort((target, -s, cue))
    cue, target, s = cue[order], target[order], s[order]
    first = _run_starts(cue, target)
    cue, target, s = cue[first], target[first], s[first]
    position = np.arange(len(cue))
    rank = position - np.maximum.accumulate(np.where(_run_starts(cue), position, 0))
    chosen = rank < top_wwk
    a = np.minimum(cue[chosen], target[chosen])
    b = np.maximum(cue[chosen], target[chosen])
    weight = 1.0 / s[chosen]
    order = np.lexsort((weight, b, a))
    a, b, weight = a[order], b[order], weight[order]
    first = _run_starts(a, b)
    return a[first], b[first], weight[first]


def _run_starts(*keys: np.ndarray) -> np.ndarray:
    """Over rows sorted by `keys`: True where a row's keys differ from the row before."""
    starts = np.ones(len(keys[0]), dtype=bool)
    starts[1:] = np.any([key[1:] != key[:-1] for key in keys], axis=0)
    return starts


def image_edges(
    word_ids: np.ndarray, probabilities: np.ndarray, n_words: int, image_ids: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Images' edges from their predictions (see the module doc): (word ids, -1 for none; costs
    1/probability, inf for none), both (n, topIWK). Errors name the image by `image_ids` if given."""
    word_ids = np.asarray(word_ids)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if word_ids.ndim != 2 or word_ids.shape != probabilities.shape:
        raise ValueError(
            "image predictions must be two arrays of shape (n_images, topIWK), word ids and "
            f"probabilities; got {word_ids.shape} and {probabilities.shape}"
        )
    if word_ids.size and not np.issubdtype(word_ids.dtype, np.integer):
        raise ValueError(f"image word ids must be integers, got {word_ids.dtype}")
    word_ids = word_ids.astype(np.int64)
    bad = (word_ids < -1) | (word_ids >= n_words)
    if bad.any():
        image, column = np.argwhere(bad)[0]
        name = f"image {image}" if image_ids is None else f"image id {int(np.asarray(image_ids)[image])}"
        raise ValueError(
            f"{name}, prediction {column}: word id {word_ids[image, column]} is outside "
            f"0..{n_words - 1} (use -1 for a class that maps to no word)"
        )
    usable = (word_ids >= 0) & (probabilities > 0)  # NaN compares False: no edge
    costs = np.where(usable, 1.0 / np.where(usable, probabilities, 1.0), np.inf)
    word_ids = np.where(usable, word_ids, -1)
    # Within an image, sort by (word, cost) so that a repeated word follows its cheapest copy.
    order = np.lexsort((costs, word_ids))
    sorted_words = np.take_along_axis(word_ids, order, axis=1)
    repeat = np.zeros_like(sorted_words, dtype=bool)
    repeat[:, 1:] = (sorted_words[:, 1:] == sorted_words[:, :-1]) & (sorted_words[:, 1:] >= 0)
    drop = np.zeros_like(repeat)
    np.put_along_axis(drop, order, repeat, axis=1)
    word_ids = np.where(drop, -1, word_ids)
    costs = np.where(drop, np.inf, costs)
    return word_ids, costs
