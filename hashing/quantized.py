"""Unit embeddings held as int8: about 1 byte per dimension instead of 4 (float32 rows up to
FLOAT_ROWS_UP_TO dimensions, where int8 saves little and costs much).

Each row (or its offset from a centre, `quantize_along`) is scaled on its own so that its largest
component is +-127 and rounded; its float32 `scales` entry scales it back (onto the unit sphere,
or as the least-squares fit of the offset), so a cosine against a unit query is
`centre . query + scale * (row . query)`. A per-row scale keeps the full int8 range for every row;
one global scale would spend it on the largest component in the collection and leave typical
100-dimensional unit rows (components about 0.1) a few dozen levels (benchmarks/bench_scale.py measures both: `int8_agreement`).
"""

from __future__ import annotations

import numpy as np

LEVELS = 127
FINE_LEVELS = 32767
"""quantize16's levels: int16, for rows read often but only to order things (hashing.cells's
centroids: half the bytes of float32, an error within 1e-4 of a cosine)."""
FLOAT_ROWS_UP_TO = 16
"""Rows of at most this many dimensions stay float32: 64 bytes at most, what an int8 row of 60
dimensions with its scale costs. Few dimensions is where int8 costs most: the real CIFAR-10
embeddings (10 dimensions, a class's 5,000 images within a few millionths of one another's
cosine near the 100th place) kept 0.84 of their float32 top 100 in int8, against 0.99 for
100-dimensional ones (benchmarks/bench_scale.py)."""
ROWS_PER_STEP = 1 << 16
"""Rows converted per step, so a conversion's float32 temporaries stay small for any n."""


def row_dtype(dim: int) -> np.dtype:
    """What rows of `dim` dimensions are held as: int8, or float32 up to FLOAT_ROWS_UP_TO."""
    return np.dtype(np.float32 if dim <= FLOAT_ROWS_UP_TO else np.int8)


def quantize(unit_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) rows of row_dtype(d) and (n,) float32 scales of (n, d) finite, non-zero rows, each
    row's scale putting it back on the unit sphere (float32 rows are the rows as given, their
    scales 1 / their norm)."""
    n, d = unit_rows.shape
    if row_dtype(d) == np.float32:
        rows = np.ascontiguousarray(unit_rows, dtype=np.float32)
        return rows, (1.0 / np.sqrt(np.einsum("nd,nd->n", rows, rows))).astype(np.float32)
    rows = np.empty((n, d), dtype=np.int8)
    scales = np.empty(n, dtype=np.float32)
    for start in range(0, n, ROWS_PER_STEP):
        rounded = _rounded(np.asarray(unit_rows[start : start + ROWS_PER_STEP], dtype=np.float64))
        rows[start : start + len(rounded)] = rounded
        scales[start : start + len(rounded)] = 1.0 / np.sqrt(np.einsum("nd,nd->n", rounded, rounded))
    return rows, scales


def quantize_along(
    unit_rows: np.ndarray, centres: np.ndarray, axes: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, d) int8 rows, (n,) float32 scales and (n,) float64 shifts such that each unit row is
    about `centre + shift * axis + scale * row`, with no error at all along its axis.

    `centres` (n, d): what each row is an offset from (its cell's mean, hashing.cells), whose
    components are a fraction of the row's when rows gather around centres, so the same 255
    levels are finer. `axes` (n, d), unit: the direction the centre lies along (the cell's
    centroid). The shift and the scale are the least-squares fit of the row by the centre slid
    along the axis plus the scaled int8 offset, so the rounding error left is orthogonal to the
    axis. Why that direction: the queries a cell is visited for lie close to its centroid
    (cosines about 0.9 on benchmarks/bench_scale.py's clustered data), so a score's error is
    mostly the error's component along the centroid; removing it is ScaNN's anisotropic
    quantisation (Guo et al. 2020) in its simplest form, and raised the top 100 of every row
    scored at 10,000,000 images from 0.989 to 0.992 of float32's (module doc of hashing.cells)."""
    n, d = unit_rows.shape
    if row_dtype(d) == np.float32:
        raise ValueError(f"quantize_along: rows of {d} dimensions are kept as float32, whole; use quantize")
    rows = np.empty((n, d), dtype=np.int8)
    scales = np.empty(n, dtype=np.float32)
    shifts = np.empty(n, dtype=np.float64)
    for start in range(0, n, ROWS_PER_STEP):
        stop = min(start + ROWS_PER_STEP, n)
        offset = np.asarray(unit_rows[start:stop], np.float64) - np.asarray(centres[start:stop], np.float64)
        axis = np.asarray(axes[start:stop], np.float64)
        rounded = _rounded(offset)
        rows[start:stop] = rounded
        # The 2x2 normal equations of offset ~ shift * axis + scale * rounded (|axis| = 1).
        across = np.einsum("nd,nd->n", axis, rounded)
        square = np.einsum("nd,nd->n", rounded, rounded)
        on_axis = np.einsum("nd,nd->n", axis, offset)
        on_row = np.einsum("nd,nd->n", rounded, offset)
        det = square - across * across
        # A row whose offset lies along its axis leaves the fit one unknown too many: no shift.
        fits = det > 1e-9 * square
        safe = np.where(fits, det, 1.0)
        shifts[start:stop] = np.where(fits, (on_axis * square - across * on_row) / safe, 0.0)
        scales[start:stop] = np.where(fits, (on_row - across * on_axis) / safe, on_row / square)
    return rows, scales, shifts


def quantize16(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(n, d) int16 rows, (n,) float32 steps such that `steps[i] * levels[i]` is rows[i] to
    within half a step per component, and the largest norm of a row's error (for a unit query,
    a bound on the error of its dot product). Finite rows."""
    rows = np.asarray(rows, dtype=np.float64)
    n, d = rows.shape
    peak = np.abs(rows).max(axis=1) if n and d else np.zeros(n)
    steps = np.where(peak > 0, peak / FINE_LEVELS, 1.0).astype(np.float32)
    levels = np.clip(np.rint(rows / steps[:, None]), -FINE_LEVELS, FINE_LEVELS).astype(np.int16)
    error = rows - levels * steps[:, None].astype(np.float64)
    return levels, steps, float(np.sqrt(np.einsum("nd,nd->n", error, error)).max()) if n else 0.0


def _rounded(offsets: np.ndarray) -> np.ndarray:
    """Each (float64) row scaled so that its largest component is +-LEVELS, and rounded."""
    peak = np.abs(offsets).max(axis=1, keepdims=True)
    return np.rint(offsets * (LEVELS / peak))


def dequantize(rows: np.ndarray, scales: np.ndarray, centres: np.ndarray | None = None) -> np.ndarray:
    """The float32 vectors that `rows` with their `scales` (and `centres`, shifts included) stand
    for: unit vectors, up to the rounding error of quantize_along."""
    offsets = rows.astype(np.float32) * scales[:, None]
    return offsets if centres is None else (centres + offsets).astype(np.float32)
