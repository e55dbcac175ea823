"""Compiled kernel of hashing.cells's search (numba): cells visited best centroid first, int8 rows
scored against a float32 query, a top-k heap, and the two stops (hashing.cells's module doc).

A row's score in cell c is `(centre_norms[c] + shift_step * shift) * (centroid . query) +
scale * sum(row[t] * query[t])` (hashing.quantized's quantize_along), summed in one fixed order
(the same code for every row), so equal rows of one cell get equal scores. Ties in the top k go
to the lower id.
"""

from __future__ import annotations

import numba
import numpy as np

GROWTH = 4
"""Each group of cells search orders is this many times the one before (head cells first)."""


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract", "nsz", "arcp"})
def _score(vectors, scales, row, query):
    acc = np.float32(0.0)
    for t in range(query.shape[0]):
        acc += np.float32(vectors[row, t]) * query[t]
    return acc * scales[row]


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract", "nsz", "arcp"})
def _cell_scores(vectors, scales, shifts, lo, hi, query, base, slide, filtered, eligible, out):
    """out[row - lo]: the score of each row of lo..hi (-inf for a row not eligible)."""
    for row in range(lo, hi):
        if filtered and not eligible[row]:
            out[row - lo] = -np.inf
        else:
            out[row - lo] = base + slide * np.float32(shifts[row]) + _score(vectors, scales, row, query)


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract", "nsz", "arcp"})
def _cosine(centroids, c, query):
    acc = np.float32(0.0)
    for t in range(query.shape[0]):
        acc += np.float32(centroids[c, t]) * query[t]
    return acc


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract", "nsz", "arcp"})
def _centroid_cosines(levels, steps, query, out):
    for c in range(levels.shape[0]):
        out[c] = _cosine(levels, c, query) * steps[c]


@numba.njit(nogil=True, cache=True)
def _worse(s_a, id_a, s_b, id_b):
    return s_a < s_b or (s_a == s_b and id_a > id_b)


@numba.njit(nogil=True, cache=True)
def _sift_down(hs, hi, size, i):
    s, d = hs[i], hi[i]
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and _worse(hs[child + 1], hi[child + 1], hs[child], hi[child]):
            child += 1
        if not _worse(hs[child], hi[child], s, d):
            break
        hs[i], hi[i] = hs[child], hi[child]
        i = child
    hs[i], hi[i] = s, d


@numba.njit(nogil=True, cache=True)
def _push(hs, hi, size, s, d):
    """Add (s, d) to the worst-first heap of `size` entries; returns the new size."""
    i = size
    while i > 0:
        parent = (i - 1) >> 1
        if not _worse(s, d, hs[parent], hi[parent]):
            break
        hs[i], hi[i] = hs[parent], hi[parent]
        i = parent
    hs[i], hi[i] = s, d
    return size + 1


@numba.njit(nogil=True, cache=True)
def _next_cells(alpha, unvisited, take, heap_s, heap_i, out):
    """out[:take]: the `take` unvisited cells of best cosine `alpha`, best first (ties to the lower
    cell), marked visited; returns take. A worst-first heap of `take` entries: one pass."""
    size = 0
    for c in range(alpha.shape[0]):
        if not unvisited[c]:
            continue
        if size < take:
            size = _push(heap_s, heap_i, size, alpha[c], np.int64(c))
        elif _worse(heap_s[0], heap_i[0], alpha[c], np.int64(c)):
            heap_s[0], heap_i[0] = alpha[c], np.int64(c)
            _sift_down(heap_s, heap_i, size, 0)
    for j in range(size - 1, -1, -1):
        out[j] = heap_i[0]
        unvisited[heap_i[0]] = False
        heap_s[0], heap_i[0] = heap_s[j], heap_i[j]
        _sift_down(heap_s, heap_i, j, 0)
    return size


@numba.njit(nogil=True, cache=True)
def search(centroids, centroid_levels, centroid_steps, centroid_error, queries, cos_radius, sin_radius, slack,
           centre_norms, cell_start, vectors, scales, shifts, shift_step, ranks, k, min_rows, patience, head,
           eligible, exclude, out_scores, out_ranks, visited):
    """For each query i: out_scores[i], out_ranks[i] (best first, padded by the caller's fill) and
    visited[i], the rows scored.

    centroids (cells, d): the cells' unit centroids, read for the cells a query visits, to score
    their rows. centroid_levels and centroid_steps (hashing.quantized's quantize16): the same in
    int16, whose cosines with a query, within centroid_error of the exact ones, order the cells
    and bound what they hold (read for every cell: in float32 at 10,000 cells that read cost 0.3
    ms of a 2 ms search, the 4 MB evicted by the rows of the search before; and here rather than
    one matrix product for the batch: a multithreaded BLAS call on busy cores cost a batch of 100
    queries 10-20 ms where 100 single products took 1.2). cos/sin_radius
    (cells,): the widest angle between a cell's centroid and its rows. centre_norms (cells,): a
    row's vector is centre_norms[c] * centroids[c], slid shift_step * shifts[row] along it, plus
    its scaled int8 offset (hashing.quantized). eligible: (n,) bool, or empty for all rows.
    exclude (q, e): rows to leave out per query, -1 for none. head: how many best cells are
    ordered first; each further group of cells put in order is GROWTH times larger. Rows are in
    cell order; ranks (n,) order them as their ids do, and are what the top k holds."""
    n_cells = centroids.shape[0]
    alpha = np.empty(n_cells, dtype=np.float32)
    heap_s = np.empty(k, dtype=np.float32)
    heap_i = np.empty(k, dtype=np.int64)
    bound = np.empty(n_cells, dtype=np.float32)
    unvisited = np.empty(n_cells, dtype=np.bool_)
    filtered = eligible.shape[0] > 0
    widest = 0
    for c in range(n_cells):
        widest = max(widest, cell_start[c + 1] - cell_start[c])
    buf = np.empty(widest, dtype=np.float32)
    cell_s = np.empty(n_cells, dtype=np.float32)
    cell_i = np.empty(n_cells, dtype=np.int64)
    order = np.empty(n_cells, dtype=np.int64)
    for q in range(queries.shape[0]):
        query = queries[q]
        _centroid_cosines(centroid_levels, centroid_steps, query, alpha)
        for c in range(n_cells):
            # The best cosine any row of c can have: the query's angle to the centroid less the
            # cell's radius (triangle inequality on the sphere), cos(theta - r) expanded; it grows
            # with the centroid's cosine, taken at the most its int16 levels leave possible.
            a = min(alpha[c] + centroid_error, np.float32(1.0))
            if a >= cos_radius[c]:
                bound[c] = 1.0 + slack
            else:
                bound[c] = a * cos_radius[c] + np.sqrt(max(0.0, 1.0 - a * a)) * sin_radius[c] + slack
        unvisited[:] = True
        left = n_cells
        take = head
        size = 0
        seen = 0
        quiet = 0
        done = False
        while left > 0 and not done:
            # The next `take` best cells by cosine, in order, chosen in one pass through a heap (a
            # partition and a sort per group cost 0.25-0.4 ms of a 2 ms search at 10,000 cells): a search
            # that stops early never pays for ordering the thousands of cells it does not visit.
            cells = order[:_next_cells(alpha, unvisited, min(take, left), cell_s, cell_i, order)]
            left -= len(cells)
            take *= GROWTH
            # suffix[j]: the best bound of any cell not yet visited when cells[j] is next.
            suffix = np.empty(len(cells) + 1, dtype=np.float32)
            suffix[len(cells)] = -2.0
            if left:
                for c in range(n_cells):
                    if unvisited[c]:
                        suffix[len(cells)] = max(suffix[len(cells)], bound[c])
            for j in range(len(cells) - 1, -1, -1):
                suffix[j] = max(suffix[j + 1], bound[cells[j]])
            for j in range(len(cells)):
                if size == k and heap_s[0] > suffix[j]:
                    done = True  # exact: no row of an unvisited cell can enter the top k
                    break
                c = cells[j]
                lo, hi = cell_start[c], cell_start[c + 1]
                a = _cosine(centroids, c, query)
                # The cell's rows scored in one tight loop, apart from the heap's branches (9%
                # faster at 10M rows), then left out or taken in.
                _cell_scores(vectors, scales, shifts, lo, hi, query, centre_norms[c] * a, shift_step * a, filtered,
                             eligible, buf)
                hidden = filtered
                for e in range(exclude.shape[1]):
                    if lo <= exclude[q, e] < hi:
                        buf[exclude[q, e] - lo] = -np.inf
                        hidden = True
                if hidden:
                    for row in range(hi - lo):
                        seen += buf[row] != -np.inf
                else:
                    seen += hi - lo
                # Most rows fall below the k-th best: one comparison with a local copy of it.
                floor = heap_s[0] if size == k else -np.inf
                entered = 0
                for row in range(lo, hi):
                    s = buf[row - lo]
                    if s < floor or s == -np.inf:
                        continue
                    if size < k:
                        size = _push(heap_s, heap_i, size, s, np.int64(ranks[row]))
                        entered += 1
                        if size == k:
                            floor = heap_s[0]
                    else:  # the rank is read (a tie decided) only for a row that may enter
                        d = np.int64(ranks[row])
                        if _worse(heap_s[0], heap_i[0], s, d):
                            heap_s[0], heap_i[0] = s, d
                            _sift_down(heap_s, heap_i, size, 0)
                            entered += 1
                            floor = heap_s[0]
                if size == k and seen >= min_rows:
                    quiet = 0 if entered else quiet + 1
                    if quiet >= patience:
                        done = True  # stable: `patience` cells in a row left the top k as it was
                        break
        visited[q] = seen
        for j in range(size - 1, -1, -1):  # pop worst first into the back of the row
            out_scores[q, j], out_ranks[q, j] = heap_s[0], heap_i[0]
            heap_s[0], heap_i[0] = heap_s[j], heap_i[j]
            _sift_down(heap_s, heap_i, j, 0)
