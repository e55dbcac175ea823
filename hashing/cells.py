"""The semantic-hash retrieval at scale: an inverted file of cells over int8 embeddings, visited
best centroid first until the re-ranked top k is stable. Same protocol as hashing.search (ids
given by the caller, ties to the lower id, padding -1 / -inf, `exclude`, `among`, add/remove).

Why not a Hamming shortlist: at 48 bits the Hamming order is a weak proxy for the cosine order
(random-projection codes: a 200-code shortlist finds 0.30 of the exhaustive top 100 at 1M, 5,000
codes 0.63 at 10M), and semantic codes are worse in the other direction: a class's images share a
handful of codes, so one Hamming bucket can hold a tenth of the collection and every distance in
it ties. So the cells are k-means cells of the embeddings (hashing.partition: grouping by code
first was measured and lowered recall), and the codes are kept for the explanations' Hamming
distances (`codes_of`).

Layout (bytes per row, 100-dimensional embeddings: 129 in all): in id order the id (8), its
code (8) and where its row is (4); in cell order, each cell's rows contiguous so that a visit
streams them (a gather by row numbers was 15x slower), the int8 embedding (100,
hashing.quantized: float32 up to 16 dimensions), its scale (4), its shift (1) and its id's rank
(4: ties and results); per cell a float32 centroid and an int16 copy of it, its radius and the
norm of its centre (0.6 bytes per row at CELL_ROWS).

The int8 rows code each embedding's offset from its cell's centre (the cell's mean, along its
centroid), not the embedding: rows gather around their centre, so the offset's components are a
fraction of the embedding's and the same 255 levels are finer. On benchmarks/bench_scale.py's
class-clustered data (centre norms about 0.86, offsets about half a unit vector long) that halves
the rounding error of a score (6.2e-4 to 3.3e-4), and the top 100 of every row scored agrees with
the float32 one at 0.990 instead of 0.985 at 1,000,000 images (0.989 instead of 0.981 at
10,000,000). Each row's centre also slides along the centroid by its own shift (an int8 multiple
of one step per index), fitted with its scale so that no rounding error is left along the
centroid (hashing.quantized's quantize_along), the direction a cell's queries come from: at
10,000,000 clustered images that raised the agreement from 0.989 to 0.992 for 1 byte per row.
A row added between rebuilds is coded from its nearest cell's centre as it is; a rebuild codes
each old row again from what it stood for, one more rounding.

Search: each query's cosine with every centroid (the int16 copies, whose error the bounds below
allow for), then cells in that order, every row of a cell scored exactly against the int8 rows
(with the cell's float32 centroid), into a top-k heap. Two stops:
- exact: the k-th best score exceeds what any row of an unvisited cell could reach (the query's
  angle to a centroid less the cell's radius, the widest angle between the centroid and its rows);
  on small or tight data this ends the search with the exhaustive answer.
- stable: once `min_rows` rows (shortlist_factor x k) were scored, `patience` cells in a row
  that change nothing in the top k end it. Centroid order makes later cells ever less likely to
  contribute, so a run of cells that contribute nothing says the rest would contribute little
  (the "patience" early stop Teofili and Lin proposed for HNSW graph searches).
  benchmarks/bench_scale.py measures the recall it gives against exhaustive cosine: at 1,000,000
  images DEFAULT_PATIENCE gave 0.993 on class-clustered data and 0.959 on random-projection data.
The cells are built by an addition to an empty index (one cell until the index holds more than
SPLIT_ABOVE cells' worth of rows) and again each time it has grown REBUILD_GROWTH times since
(cost amortised over the additions); in between, new rows join the cell of their nearest
centroid and widen its radius, so the exact stop stays exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hashing import DEFAULT_SHORTLIST_FACTOR, HASH_BITS
from hashing.arrays import read_arrays, save_folder
from hashing.cell_kernels import search as _search_kernel
from hashing.partition import SPLIT_ABOVE, nearest_cells, partition
from hashing.quantized import LEVELS, ROWS_PER_STEP, dequantize, quantize, quantize16, quantize_along, row_dtype
from hashing.search import (
    _check_exclusions,
    _eligible,
    _held_ids,
    _positions,
    _rows_of,
    _same,
    _score_margin,
    _unit_rows,
    check_codes,
    check_k,
    empty_results,
    kept_rows,
    merge_ids,
)

CELL_ROWS = 1024
"""Rows per cell the partition aims at: a cell is a few scored rows' worth of work (about 25 us),
and the centroids (float32 and int16) cost 0.6 bytes per row."""
DEFAULT_PATIENCE = 13
"""Cells in a row that leave the top k unchanged before a search stops (measured: module doc)."""
REBUILD_GROWTH = 2
CELLS_FORMAT = "cell-cosine/3"
_ARRAYS = {  # what `save` writes: name -> (dtype, ndim)
    "ids": ("int64", 1), "codes": ("uint64", 1), "row_of": ("uint32", 1), "vectors": ("int8|float32", 2),
    "scales": ("float32", 1), "shifts": ("int8", 1), "rank": ("uint32", 1), "cell_start": ("int64", 1), "centroids": ("float32", 2),
    "cos_radius": ("float32", 1), "sin_radius": ("float32", 1), "centre_norms": ("float32", 1),
}
CENTRE_NORM_AT_MOST = 0.999
"""A cell's centre stays inside the unit sphere, so every row is a non-zero offset from it
(hashing.quantized) even in a cell of one repeated row."""
HEAD_CELLS = 128
"""Cells put in order up front; the rest are ordered in groups growing GROWTH times
(hashing.cell_kernels), each only if a search gets past the one before. 128: a class-clustered
query at 10,000,000 images visits about 100 cells, which one group then holds (with 64, a second
group of 256 was ordered too): the fastest of 32, 64, 128 and 256, 5% faster than 64 (measured
in one process, query by query)."""


class CellCosineIndex:
    """Cells of int8 embeddings searched until the re-ranked top k is stable (the module doc)."""

    def __init__(
        self,
        n_bits: int = HASH_BITS,
        shortlist_factor: int = DEFAULT_SHORTLIST_FACTOR,
        patience: int = DEFAULT_PATIENCE,
        cell_rows: int = CELL_ROWS,
    ) -> None:
        if not 0 < n_bits <= 64:
            raise ValueError(f"CellCosineIndex: n_bits must be 1..64 (one uint64 per code), got {n_bits}")
        for name, value in (("shortlist_factor", shortlist_factor), ("patience", patience), ("cell_rows", cell_rows)):
            if value < 1:
                raise ValueError(f"CellCosineIndex: {name} must be >= 1, got {value}")
        self.n_bits = n_bits
        self.shortlist_factor = shortlist_factor
        self.patience = patience
        self.cell_rows = cell_rows
        # In id order: the ids (ascending), their codes, and where each one's row is.
        self._ids = np.zeros(0, dtype=np.int64)
        self._codes = np.zeros(0, dtype=np.uint64)
        self._row_of = np.zeros(0, dtype=np.uint32)
        # In cell order (each cell's rows contiguous, so a visit streams them): the int8 rows, their
        # scales and each row's rank (its id's position in _ids: the same order as the ids, for ties).
        self._vectors = np.zeros((0, 0), dtype=np.int8)
        self._scales = np.zeros(0, dtype=np.float32)
        # Each row's centre slid along its centroid by shifts * _shift_step (hashing.quantized's
        # quantize_along; one step for the index, set by a rebuild).
        self._shifts = np.zeros(0, dtype=np.int8)
        self._shift_step = 0.0
        self._rank = np.zeros(0, dtype=np.uint32)
        self._cell_start = np.zeros(1, dtype=np.int64)
        self._centroids = np.zeros((0, 0), dtype=np.float32)
        # The centroids again in int16 (hashing.quantized's quantize16), derived, never saved: a
        # search reads them for every cell to order the cells, and the float32 ones only for the
        # cells it visits, to score their rows.
        self._centroid_levels = np.zeros((0, 0), dtype=np.int16)
        self._centroid_steps = np.zeros(0, dtype=np.float32)
        self._centroid_error = 0.0
        self._cos_radius = np.ones(0, dtype=np.float32)
        self._sin_radius = np.zeros(0, dtype=np.float32)
        # The norm of each cell's centre, centre_norms[c] * centroids[c], the point its int8 rows
        # are offsets from (0 for float32 rows, held whole).
        self._centre_norms = np.zeros(0, dtype=np.float32)
        self._built_at = 0

    @property
    def ntotal(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> np.ndarray:
        """The ids held, ascending."""
        return self._ids

    @property
    def codes(self) -> np.ndarray:
        """The codes of the ids held, in id order."""
        return self._codes

    @property
    def n_cells(self) -> int:
        return len(self._centroids)

    @property
    def nbytes(self) -> int:
        """Bytes of every array the index holds."""
        arrays = (self._ids, self._codes, self._row_of, self._vectors, self._scales, self._shifts, self._rank, self._cell_start,
                  self._centroids, self._centroid_levels, self._centroid_steps, self._cos_radius, self._sin_radius,
                  self._centre_norms)
        return sum(a.nbytes for a in arrays)

    def save(self, path: str | Path) -> Path:
        """Write the built index into folder `path` atomically (hashing.arrays): `load` reads it
        back without building anything."""
        return save_folder(path, *self.to_arrays())

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict]:
        """(arrays, meta) of the index as it is now, for hashing.arrays.write_arrays: its own
        arrays, which changes replace and never rewrite (so this is cheap)."""
        meta = {"format": CELLS_FORMAT, "n_bits": self.n_bits, "shortlist_factor": self.shortlist_factor,
                "patience": self.patience, "cell_rows": self.cell_rows, "built_at": self._built_at,
                "shift_step": self._shift_step}
        return {name: getattr(self, f"_{name}") for name in _ARRAYS}, meta

    @classmethod
    def load(cls, path: str | Path, *, mmap: bool = False) -> CellCosineIndex:
        """An index `save` wrote; ValueError naming the folder if it is damaged, inconsistent or of
        another kind. `mmap`: its arrays map the files (hashing.arrays; the index never writes
        into its arrays)."""
        path = Path(path)
        arrays, meta = read_arrays(path, _ARRAYS, mmap=mmap)
        if meta.get("format") != CELLS_FORMAT:
            raise ValueError(f"{path}: not a cell index of format {CELLS_FORMAT} (found {meta.get('format')})")
        try:
            index = cls(int(meta["n_bits"]), int(meta["shortlist_factor"]), int(meta["patience"]), int(meta["cell_rows"]))
            index._built_at = int(meta["built_at"])
            index._shift_step = float(meta["shift_step"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path}: its settings are unreadable ({error})") from None
        for name, array in arrays.items():
            setattr(index, f"_{name}", array)
        why = index._inconsistency()
        if why:
            raise ValueError(f"{path}: inconsistent index ({why})")
        index._level_centroids()
        return index

    def _inconsistency(self) -> str | None:
        """What is wrong with the arrays' shapes and links, if anything (cheap checks, vectorised)."""
        n, cells = len(self._ids), len(self._centroids)
        for name in ("codes", "row_of", "scales", "shifts", "rank"):
            if len(getattr(self, f"_{name}")) != n:
                return f"{n} ids but {len(getattr(self, f'_{name}'))} {name}"
        if len(self._vectors) != n or (n and self._vectors.shape[1] != self._centroids.shape[1]):
            return f"vectors {self._vectors.shape} do not fit {n} ids and centroids {self._centroids.shape}"
        if n and self._vectors.dtype != row_dtype(self._vectors.shape[1]):
            return f"vectors of {self._vectors.shape[1]} dimensions held as {self._vectors.dtype}, not {row_dtype(self._vectors.shape[1])}"
        if len(self._cell_start) != cells + 1 or len(self._cos_radius) != cells or len(self._sin_radius) != cells \
                or len(self._centre_norms) != cells:
            return (f"{cells} centroids but {len(self._cell_start)} cell starts, {len(self._cos_radius)} radii "
                    f"and {len(self._centre_norms)} centre norms")
        if not (np.isfinite(self._shift_step) and self._shift_step >= 0):
            return f"a shift step of {self._shift_step}"
        if cells and not (np.all(self._centre_norms >= 0) and np.all(self._centre_norms <= CENTRE_NORM_AT_MOST)):
            return f"centre norms outside [0, {CENTRE_NORM_AT_MOST}]"
        if self._cell_start[0] != 0 or self._cell_start[-1] != n or (np.diff(self._cell_start) < 0).any():
            return "the cell starts do not cover the rows in order"
        if n and (self._ids[0] < 0 or (np.diff(self._ids) <= 0).any()):
            return "the ids are not ascending database ids"
        if n and (self._rank.max() >= n or self._row_of.max() >= n or (self._rank[self._row_of] != np.arange(n)).any()):
            return "the rows and ranks do not point at each other"
        return None

    def add(self, ids: np.ndarray | None, embeddings: np.ndarray, codes: np.ndarray) -> None:
        """Take in (n,) ids, none of them held (None: continuing from the highest id held), with
        their (n, d) embeddings and (n,) uint64 codes (see hashing.codes)."""
        codes = check_codes(codes, self.n_bits, "CellCosineIndex: codes")
        if len(codes) != len(embeddings):
            raise ValueError(
                f"CellCosineIndex.add: {len(embeddings)} embeddings but {len(codes)} codes; "
                "pass one code per embedding"
            )
        unit = _unit_rows(embeddings, "embeddings", self._vectors.shape[1] if self.ntotal else None)
        merged_ids, order = merge_ids(self._ids, ids, len(unit), "CellCosineIndex")
        if not len(unit):
            return
        n_old = self.ntotal
        old_cells = self._cell_of_row()
        self._ids = merged_ids
        self._codes = _merged(self._codes, codes, order)
        position = np.arange(self.ntotal, dtype=np.int64)  # of each concatenated (old, new) id in _ids
        if order is not None:
            position[order] = np.arange(self.ntotal)
        ranks = np.concatenate([position[self._rank], position[n_old:]])
        grown = self.ntotal > SPLIT_ABOVE * self.cell_rows and self.ntotal >= REBUILD_GROWTH * self._built_at
        if grown or not n_old:
            # Rows as they are stored (the old ones in cell order, then the new ones). The old int8
            # rows as they stand for their embeddings, the given float32 ones being gone; float32
            # rows as held, so that they are held again bit for bit.
            held_whole = row_dtype(unit.shape[1]) == np.float32

            def stored(rows: np.ndarray) -> np.ndarray:
                old = rows[rows < n_old]
                new = unit[rows[len(old):] - n_old]
                if not len(old):
                    return new
                return np.concatenate([self._vectors[old] if held_whole else self._unit_rows_at(old, old_cells[old]), new])

            cells, centroids = partition(stored, self.ntotal, self.cell_rows)
            centre_norms = _centre_norms(stored, cells, centroids)
            vectors, scales, shifts, self._shift_step, reach = _encode(stored, cells, centroids, centre_norms, None)
            self._cos_radius = np.ones(len(centroids), dtype=np.float32)
            self._built_at = self.ntotal
        else:
            cells = nearest_cells(unit, self._centroids)
            centroids, centre_norms = self._centroids, self._centre_norms
            vectors, scales, shifts, _, reach = _encode(lambda rows: unit[rows], cells, centroids, centre_norms,
                                                        self._shift_step)
            vectors, scales = _merged(self._vectors, vectors, None), _merged(self._scales, scales, None)
            shifts = _merged(self._shifts, shifts, None)
            cells = np.concatenate([old_cells, cells])
        self._widen(cells[len(cells) - len(reach):], reach)
        self._vectors, self._scales, self._shifts, self._rank = vectors, scales, shifts, ranks
        self._centre_norms = centre_norms
        self._arrange(cells, centroids)

    def remove(self, ids: np.ndarray) -> None:
        """Drop the rows of `ids`; an id not held is a ValueError naming it. Cells keep their
        centroids and radii (a radius that was wide enough stays wide enough)."""
        keep = kept_rows(self._ids, ids, "CellCosineIndex")
        position = np.cumsum(keep) - 1
        stays = keep[self._rank]
        cells = self._cell_of_row()[stays]
        self._ids, self._codes = self._ids[keep], self._codes[keep]
        self._vectors, self._scales, self._shifts = self._vectors[stays], self._scales[stays], self._shifts[stays]
        self._rank = position[self._rank[stays]].astype(np.uint32)
        self._arrange(cells, self._centroids)

    def share(self, ids: np.ndarray, codes: np.ndarray | None = None) -> None:
        """Hold `ids` (and `codes`) in place of equal arrays of the index's own (ValueError if
        they differ), so that a holder of several indexes over the same images keeps one copy.
        Safe since the index never writes into these arrays (changes replace them)."""
        self._ids = _same(self._ids, ids, "ids")
        if codes is not None:
            self._codes = _same(self._codes, codes, "codes")

    def embeddings_of(self, ids: np.ndarray) -> np.ndarray:
        """The unit float32 vectors the int8 embeddings of held ids stand for (their cosines are
        the scores a search gives); a LookupError for an id not held."""
        rows = self._row_of[_rows_of(self._ids, ids, "CellCosineIndex")]
        return self._unit_rows_at(rows, np.searchsorted(self._cell_start, rows, side="right") - 1)

    def codes_of(self, ids: np.ndarray) -> np.ndarray:
        """The codes of held ids (a LookupError for an id not held)."""
        return self._codes[_rows_of(self._ids, ids, "CellCosineIndex")]

    def search(
        self,
        query_embeddings: np.ndarray,
        k: int,
        *,
        exclude: np.ndarray | None = None,
        among: np.ndarray | None = None,
        patience: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The best k by cosine (of the ids `among`, when given), cells visited until the top k is
        stable (the module doc); `patience` overrides the index's for this search."""
        return self.search_counting(query_embeddings, k, exclude=exclude, among=among, patience=patience)[:2]

    def search_counting(
        self,
        query_embeddings: np.ndarray,
        k: int,
        *,
        exclude: np.ndarray | None = None,
        among: np.ndarray | None = None,
        patience: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`search`'s (scores, ids), and (q,) how many rows each query scored."""
        k = check_k(k)
        patience = self.patience if patience is None else patience
        if patience < 1:
            raise ValueError(f"CellCosineIndex.search: patience must be >= 1, got {patience}")
        queries = _unit_rows(query_embeddings, "query_embeddings", self._vectors.shape[1] if self.ntotal else None)
        exclusions = _check_exclusions(exclude, len(queries))
        exclude = _positions(self._ids, exclusions.ravel()).reshape(exclusions.shape)
        scores, ranks = empty_results(len(queries), k)
        visited = np.zeros(len(queries), dtype=np.int64)
        if not self.ntotal:
            return scores, ranks, visited
        eligible = np.zeros(0, dtype=bool) if among is None else _eligible(self._ids, among)[self._rank]
        exclude_rows = np.where(exclude >= 0, self._row_of[np.maximum(exclude, 0)].astype(np.int64), -1)
        margin = _score_margin(queries.shape[1])
        _search_kernel(
            # The int16 centroids' error, and float32's in summing their dot products (as any).
            self._centroids, self._centroid_levels, self._centroid_steps, np.float32(self._centroid_error + margin),
            queries, self._cos_radius, self._sin_radius, np.float32(margin), self._centre_norms, self._cell_start,
            self._vectors, self._scales, self._shifts,
            np.float32(self._shift_step), self._rank, k, self.shortlist_factor * k, patience,
            HEAD_CELLS, eligible, exclude_rows, scores, ranks, visited,
        )
        return scores, _held_ids(self._ids, ranks), visited

    def _arrange(self, cell_of_row: np.ndarray, centroids: np.ndarray) -> None:
        """Rows (vectors, scales, shifts, ranks) put in cell order, ascending rank within a cell."""
        order = np.lexsort((self._rank, cell_of_row))
        self._vectors, self._scales, self._shifts = self._vectors[order], self._scales[order], self._shifts[order]
        self._rank = self._rank[order]
        self._rank = self._rank.astype(np.uint32)
        self._row_of = np.empty(len(order), dtype=np.uint32)
        self._row_of[self._rank] = np.arange(len(order), dtype=np.uint32)
        if centroids is not self._centroids:  # additions between rebuilds and removals keep them
            self._centroids = np.ascontiguousarray(centroids, dtype=np.float32)
            self._level_centroids()
        counts = np.bincount(cell_of_row, minlength=len(centroids))
        self._cell_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def _level_centroids(self) -> None:
        self._centroid_levels, self._centroid_steps, self._centroid_error = quantize16(self._centroids)

    def _unit_rows_at(self, rows: np.ndarray, cells: np.ndarray) -> np.ndarray:
        """The unit vectors stored `rows` (of `cells`) stand for."""
        centres = _centres(cells, self._centroids, self._centre_norms, self._shifts[rows] * self._shift_step)
        return dequantize(self._vectors[rows], self._scales[rows], centres)

    def _cell_of_row(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_cells), np.diff(self._cell_start))

    def _widen(self, cells: np.ndarray, reach: np.ndarray) -> None:
        """Widen the radii of `cells` to cover rows whose cosines with their centroids are `reach`."""
        widest = np.ones(len(self._cos_radius), dtype=np.float32)
        np.minimum.at(widest, cells, reach)
        self._cos_radius = np.minimum(self._cos_radius, np.clip(widest, -1.0, 1.0))
        self._sin_radius = np.sqrt(np.maximum(0.0, 1.0 - self._cos_radius.astype(np.float64) ** 2)).astype(np.float32)


def _centres(cells: np.ndarray, centroids: np.ndarray, centre_norms: np.ndarray,
             shifts: np.ndarray | float = 0.0) -> np.ndarray | None:
    """(n, d) the centres rows of `cells` are offsets from, each slid `shifts` along its centroid
    (None: float32 rows, held whole)."""
    if row_dtype(centroids.shape[1]) == np.float32:
        return None
    return (centre_norms[cells] + shifts)[:, None] * centroids[cells]


def _centre_norms(unit_at, cells: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Per cell, the norm of the mean of its rows along its centroid (what minimises the rows'
    offsets from a centre on that line), at most CENTRE_NORM_AT_MOST; 0 for float32 rows."""
    if row_dtype(centroids.shape[1]) == np.float32:
        return np.zeros(len(centroids), dtype=np.float32)
    cosines = np.zeros(len(centroids), dtype=np.float64)
    for start in range(0, len(cells), ROWS_PER_STEP):
        rows = np.arange(start, min(start + ROWS_PER_STEP, len(cells)))
        part = cells[rows]
        cosines += np.bincount(part, np.einsum("nd,nd->n", unit_at(rows), centroids[part]), minlength=len(centroids))
    means = cosines / np.maximum(np.bincount(cells, minlength=len(centroids)), 1)
    return np.clip(means, 0.0, CENTRE_NORM_AT_MOST).astype(np.float32)


def _encode(unit_at, cells: np.ndarray, centroids: np.ndarray, centre_norms: np.ndarray, step: float | None):
    """(vectors, scales, shifts, step, reach) of rows 0..n-1 (`unit_at(rows)` their unit vectors,
    `cells` theirs): the int8 offsets from their cells' centres slid along the centroids
    (hashing.quantized's quantize_along), the slides as int8 multiples of `step` (None: the
    largest over these rows in LEVELS steps; a row added later that slides further is clipped,
    costing it only the part of its fit along the centroid), and the cosine of what each stands
    for with its centroid, which the cell's radius must cover."""
    n, d = len(cells), centroids.shape[1]
    vectors = np.empty((n, d), dtype=row_dtype(d))
    scales = np.empty(n, dtype=np.float32)
    slides = np.zeros(n, dtype=np.float64)
    for start in range(0, n, ROWS_PER_STEP):
        rows = np.arange(start, min(start + ROWS_PER_STEP, n))
        centres = _centres(cells[rows], centroids, centre_norms)
        if centres is None:
            vectors[rows], scales[rows] = quantize(unit_at(rows))
        else:
            vectors[rows], scales[rows], slides[rows] = quantize_along(unit_at(rows), centres, centroids[cells[rows]])
    if step is None:
        step = float(np.abs(slides).max(initial=0.0)) / LEVELS
    shifts = np.zeros(n, dtype=np.int8)
    if step > 0:
        shifts[:] = np.clip(np.rint(slides / step), -LEVELS, LEVELS)
    reach = np.empty(n, dtype=np.float32)
    for start in range(0, n, ROWS_PER_STEP):
        rows = np.arange(start, min(start + ROWS_PER_STEP, n))
        stands_for = dequantize(vectors[rows], scales[rows],
                                _centres(cells[rows], centroids, centre_norms, shifts[rows] * step))
        reach[rows] = np.einsum("nd,nd->n", stands_for, centroids[cells[rows]])
    return vectors, scales, shifts, step, reach


class CellScan:
    """Every cell of a `CellCosineIndex` visited: the exact top k over its int8 rows, scores as
    the index gives them (the exhaustive method of a collection that holds the index anyway).

    It holds no array of its own (`nbytes` 0) and takes no changes: the index it reads is the
    one that changes. The cells still pay: a cell that no row of which can reach the k-th best
    score so far is skipped (the index's exact stop), which is what makes it faster than scoring
    every row, with the same answer. Against the float32 rows the int8 ones stand for, the top
    100 agrees at 0.988-0.992 for 100 dimensions at 1M and 10M rows (benchmarks/bench_scale.py;
    hashing.quantized keeps rows of up to 16 dimensions float32, where int8 agreed at 0.84)."""

    def __init__(self, cells: CellCosineIndex):
        self.cells = cells

    @property
    def ntotal(self) -> int:
        return self.cells.ntotal

    @property
    def ids(self) -> np.ndarray:
        return self.cells.ids

    @property
    def nbytes(self) -> int:
        return 0

    def codes_of(self, ids: np.ndarray) -> np.ndarray:
        return self.cells.codes_of(ids)

    def embeddings_of(self, ids: np.ndarray) -> np.ndarray:
        return self.cells.embeddings_of(ids)

    def search(self, query_embeddings: np.ndarray, k: int, *, exclude: np.ndarray | None = None,
               among: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The best k by cosine over every row (of the ids `among`, when given); `exclude` as
        CellCosineIndex.search takes it."""
        # A patience above the number of cells never runs out: only the exact stop ends a search.
        return self.cells.search(query_embeddings, k, exclude=exclude, among=among, patience=self.cells.n_cells + 1)


def _merged(existing: np.ndarray, new: np.ndarray, order: np.ndarray | None) -> np.ndarray:
    rows = np.concatenate([existing, new]) if len(existing) else new
    return rows if order is None else rows[order]
