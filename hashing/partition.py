"""Cells of an inverted file over unit embeddings: spherical k-means, recursively.

A group of more than SPLIT_ABOVE x `cell_rows` rows is split into at most FANOUT parts by
spherical k-means trained on a sample and applied to all its rows, and each part again, so the
build costs n x FANOUT x d per level whatever the number of cells (log_FANOUT(n / cell_rows)
levels). A cell's centroid is the normalised mean of its rows.

The rows are not first grouped by hash code (Hamming buckets as the first level): measured at
200,000 of benchmarks/bench_hashing.py's embeddings (1,000 clusters) with class codes of
benchmarks/bench_scale.py's shape (10 classes of 100 clusters each), grouping first lowered
recall@100 at equal work from 0.89 to 0.68 (patience 3), since a code holds a share of a class
taken across all of the class's embedding clusters, so every cluster was cut into one piece per
code.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

FANOUT = 32
SPLIT_ABOVE = 2
"""A group is split once it holds more than this many cells' worth of rows."""
TRAIN_PER_PART = 64
"""k-means trains on at most this many sampled rows per part: enough for centroids, cheap to iterate."""
ITERATIONS = 10
ASSIGN_ROWS = 1 << 15
"""Rows assigned to the nearest centroid per matrix product (a bounded float32 temporary)."""


def partition(vectors: Callable[[np.ndarray], np.ndarray], n: int, cell_rows: int,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cells of rows 0..n-1: `(cell_of_row (n,) int64, centroids (cells, d) float32)`.

    `vectors(rows)` gives the float32 unit vectors of an ascending array of rows (the caller's
    store, int8 or float32), so the whole collection is never copied to float32 at once."""
    rng = np.random.default_rng(seed)
    cell_of_row = np.empty(n, dtype=np.int64)
    centroids: list[np.ndarray] = []
    groups = [np.arange(n)] if n else []
    while groups:
        rows = groups.pop()
        parts = _split(vectors, rows, cell_rows, rng) if len(rows) > SPLIT_ABOVE * cell_rows else [rows]
        if len(parts) == 1:
            cell_of_row[rows] = len(centroids)
            centroids.append(_centroid(vectors, rows))
        else:
            groups.extend(parts)
    return cell_of_row, np.array(centroids, dtype=np.float32).reshape(len(centroids), -1)


def nearest_cells(unit_rows: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(n,) the cell whose centroid has the largest cosine with each row (the lower cell on ties)."""
    out = np.empty(len(unit_rows), dtype=np.int64)
    for start in range(0, len(unit_rows), ASSIGN_ROWS):
        out[start : start + ASSIGN_ROWS] = np.argmax(unit_rows[start : start + ASSIGN_ROWS] @ centroids.T, axis=1)
    return out


def _split(vectors: Callable[[np.ndarray], np.ndarray], rows: np.ndarray, cell_rows: int,
           rng: np.random.Generator) -> list[np.ndarray]:
    """`rows` in at most FANOUT non-empty parts by spherical k-means (one part: they would not split)."""
    n_parts = int(min(FANOUT, -(-len(rows) // cell_rows)))
    sample = np.sort(rng.choice(rows, size=min(len(rows), TRAIN_PER_PART * n_parts), replace=False))
    train = vectors(sample)
    centroids = train[rng.choice(len(train), size=n_parts, replace=False)]
    for _ in range(ITERATIONS):
        labels = np.argmax(train @ centroids.T, axis=1)
        sums = np.zeros_like(centroids)
        np.add.at(sums, labels, train)
        norms = np.linalg.norm(sums, axis=1)
        empty = norms == 0  # a centroid no row chose keeps its place rather than vanish
        sums[~empty] /= norms[~empty, None]
        sums[empty] = centroids[empty]
        centroids = sums
    labels = np.concatenate([
        nearest_cells(vectors(rows[start : start + ASSIGN_ROWS]), centroids)
        for start in range(0, len(rows), ASSIGN_ROWS)
    ])
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    return [part for part in np.split(rows[order], bounds) if len(part)]


def _centroid(vectors: Callable[[np.ndarray], np.ndarray], rows: np.ndarray) -> np.ndarray:
    total = sum(vectors(rows[start : start + ASSIGN_ROWS]).sum(axis=0, dtype=np.float64)
                for start in range(0, len(rows), ASSIGN_ROWS))
    norm = float(np.linalg.norm(total))
    if not norm > 1e-9:  # rows that cancel out: any direction bounds them (the cell's radius covers it)
        return vectors(rows[:1])[0].astype(np.float32)
    return (total / norm).astype(np.float32)
