"""The image-word edges of a live IWAN, as flat arrays that images join and leave.

Each image holds a slot: slots are handed out in insertion order, so they ascend with the
database ids, and a slot's row holds the image's edges (word ids, -1 none; costs 1/probability).
Arrays indexed by slot grow by doubling; there is no Python object per image or edge.

The search offers each word's images cheapest first, so each word also keeps its images in a run
sorted by (cost, slot). Re-sorting everything on each addition would cost a full rebuild, so the
runs live in two levels, as in a log-structured merge tree: a main block and a small delta, both
sorted, searched side by side. Additions are merged into the delta (linear in its size); once the
delta outgrows a few times the square root of the main block, it is merged into the main block
(linear), which keeps both costs amortised small.

Removal marks the slot dead (a tombstone): the search skips dead slots, so a removed image is
neither a result nor a bridge at once. Once a quarter of the slots are dead they are compacted
away: rows and runs are filtered and slots renumbered in order, which keeps every run sorted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np

from iwan.network.kernels import merge_runs, sorted_runs

DELTA_MIN_EDGES = 4096
"""The delta is merged into the main block once it holds more than
max(DELTA_MIN_EDGES, DELTA_SQRT_FACTOR * sqrt(main edges)) edges."""
DELTA_SQRT_FACTOR = 8

Spare = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
"""Grown arrays (ids, state, row_words, row_costs) made ready before an append (`ImageEdges.spare`)."""
Runs = tuple[np.ndarray, np.ndarray]
"""Per-word runs: ptr (n_words + 1) int64 and slot int32, sorted by (word, cost, slot); a slot's
cost is read from its row (iwan.network.kernels.edge_cost), not kept twice."""


class ImageEdges:
    """Rows, ids and tombstones by slot, and the two levels of per-word runs (see the module doc)."""

    def __init__(self, n_words: int, width: int):
        self.n_words = n_words
        self.n_slots = 0
        self.n_dead = 0
        self.max_id = -1
        """The highest database id ever held: additions must come above it."""
        self.ids = np.empty(0, np.int64)
        self.state = np.empty(0, np.int32)
        """Per slot: -1 dead, 0 live; a search marks the slots it settles and resets them
        (iwan.network.kernels.nearest)."""
        self.row_words = np.empty((0, width), word_dtype(n_words))
        self.row_costs = np.empty((0, width), np.float64)
        self.main = _no_runs(n_words)
        self.delta = _no_runs(n_words)

    @classmethod
    def build(cls, n_words: int, ids: np.ndarray, words: np.ndarray, costs: np.ndarray) -> ImageEdges:
        """A fresh block over (n,) ascending ids and their (n, width) edge rows, all in the main block."""
        edges = cls(n_words, words.shape[1])
        n = len(ids)
        # C order: the compiled search is specialised for it.
        edges.ids = np.ascontiguousarray(ids, dtype=np.int64)
        edges.state = np.zeros(n, np.int32)
        edges.row_words = np.ascontiguousarray(words, dtype=word_dtype(n_words))
        edges.row_costs = np.ascontiguousarray(costs, dtype=np.float64)
        edges.n_slots = n
        edges.max_id = int(ids[-1]) if n else -1
        edges.main = _sorted_runs(n_words, 0, edges.row_words, edges.row_costs)
        return edges

    @classmethod
    def from_chunks(cls, n_words: int, width: int, chunks: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
                    edges_of: Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
                    total: int | None = None) -> ImageEdges:
        """A fresh block, as `build` makes it, from chunks of (ids, word ids, probabilities) taken
        one at a time: `edges_of(ids, word_ids, probabilities)` -> (words, costs) (n, width)
        checks and converts each chunk (iwan.network.graph.image_edges). With `total` (the
        number of images) the rows are allocated once; without it they grow by doubling and are
        trimmed at the end. Ids must ascend across chunks. Peak memory: the rows, then the rows
        and the runs (no sort over all edges at once)."""
        edges = cls(n_words, width)
        if total is not None:
            edges._reserve(total)
        for ids, word_ids, probabilities in chunks:
            ids = np.asarray(ids)
            if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
                raise ValueError(f"image ids must be a 1-D array of integers; got {ids.dtype} {ids.shape}")
            if not len(ids):
                continue
            ids = ids.astype(np.int64)
            if ids[0] <= edges.max_id or (np.diff(ids) <= 0).any():
                raise ValueError(f"image ids must ascend across the chunks, each once; chunk from id {ids[0]} "
                                 f"after id {edges.max_id}")
            if ids[0] < 0:
                raise ValueError(f"image id {ids[0]} is negative: database ids are >= 0")
            words, costs = edges_of(ids, word_ids, probabilities)
            if words.shape != (len(ids), width):
                raise ValueError(f"a chunk of {len(ids)} images has edge rows {words.shape}, not ({len(ids)}, {width})")
            edges._reserve(edges.n_slots + len(ids))
            start, stop = edges.n_slots, edges.n_slots + len(ids)
            edges.ids[start:stop] = ids
            edges.state[start:stop] = 0
            edges.row_words[start:stop] = words
            edges.row_costs[start:stop] = costs
            edges.n_slots, edges.max_id = stop, int(ids[-1])
        if len(edges.ids) > edges.n_slots:  # spare capacity: trimmed, as `build` holds none
            used = edges.n_slots
            edges.ids, edges.state = edges.ids[:used].copy(), edges.state[:used].copy()
            edges.row_words, edges.row_costs = edges.row_words[:used].copy(), edges.row_costs[:used].copy()
        edges.main = _sorted_runs(n_words, 0, edges.row_words[: edges.n_slots], edges.row_costs[: edges.n_slots])
        return edges

    def arrays(self) -> dict[str, np.ndarray]:
        """The block as named arrays without spare capacity (`from_arrays` takes them back)."""
        used = self.n_slots
        return {
            "ids": self.ids[:used], "state": self.state[:used], "row_words": self.row_words[:used],
            "row_costs": self.row_costs[:used],
            "main_ptr": self.main[0], "main_slot": self.main[1],
            "delta_ptr": self.delta[0], "delta_slot": self.delta[1],
        }

    @classmethod
    def from_arrays(cls, n_words: int, arrays: dict[str, np.ndarray], n_dead: int, max_id: int) -> ImageEdges:
        """A block from `arrays()`'s arrays, checked (cheaply, vectorised); ValueError saying what
        does not fit."""
        ids, state, words, costs = arrays["ids"], arrays["state"], arrays["row_words"], arrays["row_costs"]
        n = len(ids)
        if state.shape != (n,) or words.ndim != 2 or words.shape[0] != n or costs.shape != words.shape:
            raise ValueError(f"image rows of unequal shapes: ids {ids.shape}, state {state.shape}, "
                             f"words {words.shape}, costs {costs.shape}")
        if n and (ids[0] < 0 or (np.diff(ids) <= 0).any() or max_id < ids[-1]):
            raise ValueError("the image ids are not ascending database ids up to max_id")
        dead = state == -1
        if not (dead | (state == 0)).all() or int(dead.sum()) != n_dead:
            raise ValueError("the image states are not the live/removed marks (0/-1) counted by n_dead")
        if words.size and (words.min() < -1 or words.max() >= n_words):
            raise ValueError(f"image word ids outside -1..{n_words - 1}")
        runs = []
        for level in ("main", "delta"):
            ptr, slot = arrays[f"{level}_ptr"], arrays[f"{level}_slot"]
            if ptr.shape != (n_words + 1,) or ptr[0] != 0 or ptr[-1] != len(slot) or (np.diff(ptr) < 0).any() \
                    or (len(slot) and (slot.min() < 0 or slot.max() >= n)):
                raise ValueError(f"the {level} runs do not fit {n_words} words and {n} image slots")
            runs.append((ptr, slot))
        edges = cls(n_words, words.shape[1])
        edges.ids, edges.state, edges.row_words, edges.row_costs = ids, state, words, costs
        edges.n_slots, edges.n_dead, edges.max_id = n, n_dead, max_id
        edges.main, edges.delta = runs[0], runs[1]
        return edges

    @property
    def width(self) -> int:
        return self.row_words.shape[1]

    @property
    def n_alive(self) -> int:
        return self.n_slots - self.n_dead

    @property
    def nbytes(self) -> int:
        arrays = (self.ids, self.state, self.row_words, self.row_costs, *self.main, *self.delta)
        return sum(a.nbytes for a in arrays)

    def slots(self, ids: np.ndarray) -> np.ndarray:
        """The slot of each id held (alive), -1 for ids not held."""
        ids = np.asarray(ids, dtype=np.int64)
        if not self.n_slots:
            return np.full(ids.shape, -1, np.int64)
        held = self.ids[: self.n_slots]
        slots = np.minimum(np.searchsorted(held, ids), self.n_slots - 1)
        found = (held[slots] == ids) & (self.state[slots] == 0)
        return np.where(found, slots, -1)

    def live_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, words, costs) of the images held, in slot (= id) order."""
        keep = self.state[: self.n_slots] == 0
        return (
            self.ids[: self.n_slots][keep],
            self.row_words[: self.n_slots][keep],
            self.row_costs[: self.n_slots][keep],
        )

    def spare(self, n: int) -> Spare | None:
        """The arrays that `append` of n images would grow into, allocated and filled now (None if
        they need not grow). A holder that appends under a lock calls this before taking it: at
        10M images the first touch of the new arrays' pages took 0.3-9 s, which searches waiting
        on the lock would wait too; under it, `append` then only copies the rows over."""
        needed = self.n_slots + n
        return None if needed <= len(self.ids) else self._allocate(max(needed, 2 * len(self.ids), 16))

    def append(self, ids: np.ndarray, words: np.ndarray, costs: np.ndarray, spare: Spare | None = None) -> None:
        """New images after every slot: ids ascending above max_id, rows (n, m) already checked.
        `spare`: what `spare(n)` gave, used if it still fits (else the arrays grow here)."""
        n, m = words.shape
        if m > self.width:
            self._widen(m)
        elif m < self.width:
            words = np.pad(words, ((0, 0), (0, self.width - m)), constant_values=-1)
            costs = np.pad(costs, ((0, 0), (0, self.width - m)), constant_values=np.inf)
        self._reserve(self.n_slots + n, spare)
        start, stop = self.n_slots, self.n_slots + n
        self.ids[start:stop] = ids
        self.state[start:stop] = 0
        self.row_words[start:stop] = words
        self.row_costs[start:stop] = costs
        self.n_slots = stop
        self.max_id = int(ids[-1])
        added = _sorted_runs(self.n_words, start, self.row_words[start:stop], self.row_costs[start:stop])
        self.delta = merge_runs(*self.delta, *added, self.row_words, self.row_costs)
        if len(self.delta[1]) > max(DELTA_MIN_EDGES, DELTA_SQRT_FACTOR * math.isqrt(len(self.main[1]))):
            self.main = merge_runs(*self.main, *self.delta, self.row_words, self.row_costs)
            self.delta = _no_runs(self.n_words)

    def remove(self, slots: np.ndarray) -> None:
        """Tombstone the slots (held, each once); compact once a quarter of the slots are dead."""
        self.state[slots] = -1
        self.n_dead += len(slots)
        if 4 * self.n_dead > self.n_slots:
            self._compact()

    def _compact(self) -> None:
        keep = self.state[: self.n_slots] == 0
        renumber = (np.cumsum(keep) - 1).astype(np.int32)
        self.main = _filter_runs(self.main, keep, renumber)
        self.delta = _filter_runs(self.delta, keep, renumber)
        self.ids = self.ids[: self.n_slots][keep]
        self.row_words = self.row_words[: self.n_slots][keep]
        self.row_costs = self.row_costs[: self.n_slots][keep]
        self.n_slots = len(self.ids)
        self.n_dead = 0
        self.state = np.zeros(self.n_slots, np.int32)

    def _reserve(self, n: int, spare: Spare | None = None) -> None:
        capacity = len(self.ids)
        if n <= capacity:
            return
        current: Spare = (self.ids, self.state, self.row_words, self.row_costs)
        # A spare made before a widening or another holder's change may no longer fit.
        if spare is None or not _fits(spare, current, n):
            spare = self._allocate(max(n, 2 * capacity, 16))
        used = self.n_slots
        for i in range(len(current)):
            spare[i][:used] = current[i][:used]
        self.ids, self.state, self.row_words, self.row_costs = spare

    def _allocate(self, capacity: int) -> Spare:
        """Arrays of `capacity` slots, every slot unused (id and state -1, no edges)."""
        return (np.full(capacity, -1, self.ids.dtype), np.full(capacity, -1, self.state.dtype),
                np.full((capacity, self.width), -1, self.row_words.dtype),
                np.full((capacity, self.width), np.inf, self.row_costs.dtype))

    def _widen(self, width: int) -> None:
        """More edges per image than the rows hold (a predictor with a larger topIWK)."""
        extra = ((0, 0), (0, width - self.width))
        self.row_words = np.pad(self.row_words, extra, constant_values=-1)
        self.row_costs = np.pad(self.row_costs, extra, constant_values=np.inf)


def word_dtype(n_words: int) -> type[np.signedinteger]:
    """The narrowest signed type for word ids -1..n_words-1 in the rows (int16 for any norm set
    of up to 32,767 words, as USF's 5,018: 8 bytes per image less than int32 at topIWK 4)."""
    return np.int16 if n_words <= np.iinfo(np.int16).max else np.int32


def _no_runs(n_words: int) -> Runs:
    return np.zeros(n_words + 1, np.int64), np.empty(0, np.int32)


def _sorted_runs(n_words: int, first_slot: int, words: np.ndarray, costs: np.ndarray) -> Runs:
    """The runs of rows (words, costs) (n, width) at slots first_slot, first_slot + 1, ..."""
    return sorted_runs(n_words, np.ascontiguousarray(words), np.ascontiguousarray(costs, dtype=np.float64),
                       first_slot)


def _fits(spare: Spare, current: Spare, n: int) -> bool:
    """Whether `spare` holds `n` slots shaped and typed like `current`'s arrays."""
    return len(spare[0]) >= n and all(spare[i].shape[1:] == current[i].shape[1:]
                                      and spare[i].dtype == current[i].dtype
                                      for i in range(len(current)))


def _filter_runs(runs: Runs, keep: np.ndarray, renumber: np.ndarray) -> Runs:
    ptr, slot = runs
    kept = keep[slot]
    before = np.concatenate([[0], np.cumsum(kept)])
    return before[ptr].astype(np.int64), renumber[slot[kept]]
