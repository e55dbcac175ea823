"""`fused`: one ranking from several methods' rankings (iwan.retrieval.fusion: weighted or reciprocal rank).

Each member is searched `depth_factor` times deeper than asked, so that an image ranked just below
k by one member can still be lifted by the others. Every member gets the same query batch and
reads its part of it. The fused retriever holds its members: `add` and `remove` reach each one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from iwan.retrieval.fusion import METHODS, check_weights, fuse
from iwan.retrieval import Batch, Corpus, Retriever, check_k, get_retriever, register_retriever

DEFAULT_MEMBERS = ("iwan", "hashes")


class FusedRetriever:
    name = "fused"

    def __init__(
        self,
        members: Sequence[Retriever],
        method: str = "rrf",
        weights: Sequence[float] | None = None,
        depth_factor: int = 2,
        k0: float = 60,
    ):
        if not members:
            raise ValueError("a fused retriever needs at least one member retriever")
        if method not in METHODS:
            raise ValueError(f"fusion method {method!r} is unknown: use one of {METHODS}")
        if depth_factor < 1:
            raise ValueError(f"depth_factor={depth_factor} must be >= 1")
        self.members = list(members)
        self.method = method
        self.weights = None if weights is None else [float(w) for w in check_weights(weights, len(self.members))]
        self.depth_factor = depth_factor
        self.k0 = k0

    @property
    def reads(self) -> tuple[str, ...]:
        """What the members read of a query batch."""
        return tuple(dict.fromkeys(f for m in self.members for f in getattr(m, "reads", ())))

    @property
    def ntotal(self) -> int:
        return self.members[0].ntotal

    def add(self, image_ids: np.ndarray, images: Batch) -> None:
        for member in self.members:
            member.add(image_ids, images)

    def remove(self, image_ids: np.ndarray) -> None:
        for member in self.members:
            member.remove(image_ids)

    def search(self, queries: Batch, k: int, *, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        depth = self.depth_factor * check_k(k)
        rankings = [member.search(queries, depth, exclude=exclude) for member in self.members]
        return fuse(rankings, k, method=self.method, weights=self.weights, k0=self.k0)


@register_retriever("fused")
def build(
    engine,
    corpus: Corpus,
    *,
    members: Sequence[str | Retriever] = DEFAULT_MEMBERS,
    fusion: str = "rrf",
    weights: Sequence[float] | None = None,
    depth_factor: int = 2,
    k0: float = 60,
) -> FusedRetriever:
    """Members by name (built over the corpus) or as built retrievers, which are then shared."""
    built = [get_retriever(m, engine, corpus) if isinstance(m, str) else m for m in members]
    return FusedRetriever(built, fusion, weights, depth_factor, k0)
