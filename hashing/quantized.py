"""Unit embeddings held as int8: about 1 byte per dimension instead of 4 (float32 rows up to
FLOAT_ROWS_UP_TO dimensions, where int8 saves little and costs much).

Each row (or its offset from a centre, `quantize`) is scaled on its own so that its largest
component is +-127 and rounded; its float32 `scales` entry puts what it stands for back on the
unit sphere, so a cosine against a unit query is `centre . query + scale * (row . query)`. A
per-row scale keeps the full int8 range for every row; one global scale would spend it on the
largest component in the collection and leave typical 100-dimensional unit rows (components
about 0.1) a few dozen levels (benchmarks/bench_scale.py measures both: `int8_agreement`).
"""

from __future__ import annotations

import numpy as np

LEVELS = 127
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


def quantize(unit_rows: np.ndarray, centres: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) rows of row_dtype(d) and (n,) float32 scales of (n, d) finite, non-zero rows
    (float32 rows are the rows as given, their scales 1 / their norm).

    `centres` (n, d), each of norm below 1: int8 rows code each row's offset from its centre
    (the cell's mean, hashing.cells), whose components are a fraction of the row's when rows
    gather around centres, so the same 255 levels are finer. The scale is the one that puts
    `centre + scale * row` on the unit sphere (the positive root of |c + s r|^2 = 1), so what a
    row stands for is still a unit vector. float32 rows are kept whole: no centres."""
    n, d = unit_rows.shape
    if row_dtype(d) == np.float32:
        if centres is not None:
            raise ValueError(f"quantize: rows of {d} dimensions are kept as float32, whole; pass no centres")
        rows = np.ascontiguousarray(unit_rows, dtype=np.float32)
        return rows, (1.0 / np.sqrt(np.einsum("nd,nd->n", rows, rows))).astype(np.float32)
    rows = np.empty((n, d), dtype=np.int8)
    scales = np.empty(n, dtype=np.float32)
    for start in range(0, n, ROWS_PER_STEP):
        part = np.asarray(unit_rows[start : start + ROWS_PER_STEP], dtype=np.float64)
        centre = np.zeros_like(part) if centres is None else np.asarray(centres[start : start + ROWS_PER_STEP], np.float64)
        offset = part - centre
        peak = np.abs(offset).max(axis=1, keepdims=True)
        rounded = np.rint(offset * (LEVELS / peak))
        rows[start : start + len(part)] = rounded
        a = np.einsum("nd,nd->n", rounded, rounded)
        b = np.einsum("nd,nd->n", centre, rounded)
        c = np.einsum("nd,nd->n", centre, centre) - 1.0
        scales[start : start + len(part)] = (np.sqrt(b * b - a * c) - b) / a
    return rows, scales


def dequantize(rows: np.ndarray, scales: np.ndarray, centres: np.ndarray | None = None) -> np.ndarray:
    """The float32 unit vectors that `rows` with their `scales` (and `centres`) stand for."""
    offsets = rows.astype(np.float32) * scales[:, None]
    return offsets if centres is None else (centres + offsets).astype(np.float32)
