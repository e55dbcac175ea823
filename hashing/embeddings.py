"""Barz & Denzler's hierarchy-based class embeddings: unit vectors whose dot products are the
hierarchy's class similarities.

Their incremental construction places class 0 at e_0 and each next class c at the point whose dot
products with classes 0..c-1 are the wanted similarities (a lower-triangular solve), completing it to
unit length along the new axis e_c. That is, row by row, the Cholesky factor L of the similarity
matrix S = L L^T, so `np.linalg.cholesky` computes exactly their vectors (same positive diagonal,
same axes) in one LAPACK call. S is positive definite for any tree: it is a sum of non-negative
multiples of block indicators of the subtrees plus a positive multiple of the identity from the
leaves, so the factorisation always exists.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hashing.hierarchy import ClassHierarchy, load_hierarchy

EMBEDDING_TOLERANCE = 1e-6
"""The largest error allowed in a norm or a dot product of the embeddings."""


def class_embeddings(hierarchy: ClassHierarchy) -> np.ndarray:
    """(n_classes, n_classes) float64, row i the embedding of class id i: unit norm, and
    row_a . row_b == hierarchy.similarity_matrix()[a, b] within EMBEDDING_TOLERANCE."""
    sim = hierarchy.similarity_matrix()
    embeddings = np.linalg.cholesky(sim)
    error = np.abs(embeddings @ embeddings.T - sim).max()
    if error > EMBEDDING_TOLERANCE:
        raise ValueError(
            f"class_embeddings: the embeddings reproduce the similarities only within {error:.2e} "
            f"(allowed {EMBEDDING_TOLERANCE:.0e}); the hierarchy of {hierarchy.n_classes} classes "
            "is too ill-conditioned for float64"
        )
    return embeddings


def write_embeddings(
    hierarchy_path: str | Path, out_npy: str | Path, names_path: str | Path | None = None
) -> np.ndarray:
    """Load a parent-child file, compute its class embeddings and save them as a .npy file."""
    embeddings = class_embeddings(load_hierarchy(hierarchy_path, names_path))
    out_npy = Path(out_npy)
    out_npy.parent.mkdir(parents=True, exist_ok=True)
    with out_npy.open("wb") as f:  # np.save(path) would append .npy to any other suffix
        np.save(f, embeddings)
    return embeddings
