"""`fused`: one ranking from several methods' rankings (iwan.retrieval.fusion: a weighted sum of
normalised scores, or reciprocal rank fusion).

Each member is searched `depth_factor` times deeper than asked, so that an image ranked just below
k by one member can still be lifted by the others. Every member gets the same query batch and
reads its part of it. The fused retriever holds its members: `add` and `remove` reach each one.
An explained search searches each member once and explains each hit by what those searches found:
its rank in each member (None where a member did not rank it that deep) and the members' reasons.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hashing.search import check_k
from iwan.config import DEFAULT_FUSION_RULE, FUSED_MEMBERS, FUSION_DEPTH_FACTOR, RRF_K0
from iwan.retrieval.fusion import RULES, check_weights, fuse
from iwan.retrieval.protocol import Batch, CorpusData, ExampleRetriever, Examples, Explained, Retriever
from iwan.retrieval.registry import Corpus, get_retriever, register_retriever


class FusedRetriever:
    name = "fused"

    def __init__(
        self,
        members: Sequence[Retriever],
        rule: str = DEFAULT_FUSION_RULE,
        weights: Sequence[float] | None = None,
        depth_factor: int = FUSION_DEPTH_FACTOR,
        k0: float = RRF_K0,
    ):
        if not members:
            raise ValueError("a fused retriever needs at least one member retriever")
        if rule not in RULES:
            raise ValueError(f"fusion rule {rule!r} is unknown: use one of {RULES}")
        if depth_factor < 1:
            raise ValueError(f"depth_factor={depth_factor} must be >= 1")
        self.members = list(members)
        self.rule = rule
        self.weights = None if weights is None else [float(w) for w in check_weights(weights, len(self.members))]
        self.depth_factor = depth_factor
        self.k0 = k0

    @property
    def reads(self) -> tuple[str, ...]:
        """What the members read of a query batch."""
        return tuple(dict.fromkeys(f for m in self.members for f in m.reads))

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
        return fuse(rankings, k, rule=self.rule, weights=self.weights, k0=self.k0)

    def explain(self, queries: Batch, k: int, *, exclude: np.ndarray | None = None) -> Explained:
        depth = self.depth_factor * check_k(k)
        return self._fused([member.explain(queries, depth, exclude=exclude) for member in self.members], k)

    def explain_examples(self, examples: Examples, k: int, *, among: np.ndarray | None = None,
                         exclude: np.ndarray | None = None) -> Explained:
        """Each member answers the examples in its own terms, `depth_factor` times deeper; the
        rankings are fused as any others. A hit's `example` is that of the first member ranking it."""
        depth = self.depth_factor * check_k(k)
        found = []
        for member in self.members:
            if not isinstance(member, ExampleRetriever):
                raise ValueError(f"the fused member {member.name!r} answers one example per query")
            found.append(member.explain_examples(examples, depth, among=among, exclude=exclude))
        fused = self._fused(found, k)
        led: dict[int, int | None] = {}
        for f in reversed(found):  # the first member's word stands
            led.update({i: why.get("example") for i, why in zip(f.ids[0].tolist(), f.reasons[0]) if i >= 0})
        for why, image_id in zip(fused.reasons[0], fused.ids[0].tolist()):
            if image_id >= 0:
                why["example"] = led.get(image_id)
        return fused

    def search_examples(self, queries: Sequence[Examples], k: int, *,
                        exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`explain_examples`'s scores and ids for many queries at once, without the reasons."""
        depth = self.depth_factor * check_k(k)
        rankings = []
        for member in self.members:
            if not isinstance(member, ExampleRetriever):
                raise ValueError(f"the fused member {member.name!r} answers one example per query")
            rankings.append(member.search_examples(queries, depth, exclude=exclude))
        return fuse(rankings, k, rule=self.rule, weights=self.weights, k0=self.k0)

    def _fused(self, found: list[Explained], k: int) -> Explained:
        """The members' explained rankings fused, each hit explained by what they found."""
        scores, ids = fuse([(f.scores, f.ids) for f in found], k, rule=self.rule, weights=self.weights, k0=self.k0)
        reasons = []
        for r, row_ids in enumerate(ids.tolist()):
            seen = [{i: (rank, why) for rank, (i, why) in enumerate(zip(f.ids[r].tolist(), f.reasons[r]), start=1)
                     if i >= 0} for f in found]
            row: list[dict] = []
            for image_id in row_ids:
                if image_id < 0:
                    row.append({})
                    continue
                why: dict = {}
                for member_seen in seen:
                    why.update(member_seen.get(image_id, (None, {}))[1])
                why["ranks"] = {m.name: s[image_id][0] if image_id in s else None for m, s in zip(self.members, seen)}
                row.append(why)
            reasons.append(row)
        return Explained(scores, ids, reasons)


@register_retriever("fused")
def build(
    corpus: Corpus,
    data: CorpusData,
    *,
    members: Sequence[str | Retriever] = FUSED_MEMBERS,
    fusion: str = DEFAULT_FUSION_RULE,
    weights: Sequence[float] | None = None,
    depth_factor: int = FUSION_DEPTH_FACTOR,
    k0: float = RRF_K0,
) -> FusedRetriever:
    """Members by name (built over the corpus) or as built retrievers, which are then shared."""
    built = [get_retriever(m, corpus, data) if isinstance(m, str) else m for m in members]
    return FusedRetriever(built, fusion, weights, depth_factor, k0)
