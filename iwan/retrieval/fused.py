"""`fused`: one ranking from several methods' rankings (iwan.retrieval.fusion: a weighted sum of
normalised scores, or reciprocal rank fusion).

Each member is searched `depth_factor` times deeper than asked, so that an image ranked just below
k by one member can still be lifted by the others. Every member gets the same query batch and
reads its part of it. The fused retriever holds its members: `add` and `remove` reach each one.
An explained search searches each member once and explains each hit by what those searches found:
its rank in each member (None where a member did not rank it that deep) and the members' reasons.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
        found = [member.explain(queries, depth, exclude=exclude) for member in self.members]
        fused, _ = self._fused([(f.scores, f.ids, _given(f.reasons)) for f in found], k)
        return fused

    def explain_examples(self, examples: Examples, k: int, *, among: np.ndarray | None = None,
                         exclude: np.ndarray | None = None) -> Explained:
        """Each member answers the examples in its own terms, `depth_factor` times deeper; the
        rankings are fused as any others. A hit's `example` is that of the first member ranking it.
        A member that explains on demand (`ranked_examples`) explains the fused hits only."""
        depth = self.depth_factor * check_k(k)
        found: list[tuple[np.ndarray, np.ndarray, Reason]] = []
        for member in self.members:
            ranked = getattr(member, "ranked_examples", None)  # duck-typed: a Protocol isinstance costs tens of us
            if ranked is not None:
                scores, ids, why = ranked(examples, depth, among=among, exclude=exclude)
                found.append((scores, ids, _of_one_query(why)))
            elif isinstance(member, ExampleRetriever):
                f = member.explain_examples(examples, depth, among=among, exclude=exclude)
                found.append((f.scores, f.ids, _given(f.reasons)))
            else:
                raise ValueError(f"the fused member {member.name!r} answers one example per query")
        fused, first = self._fused(found, k)
        for why, led in zip(fused.reasons[0], first[0]):  # the first member's word stands
            if led is not None:
                why["example"] = led.get("example")
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

    def _fused(self, found: list[tuple[np.ndarray, np.ndarray, Reason]],
               k: int) -> tuple[Explained, list[list[dict | None]]]:
        """The members' rankings (scores, ids, reason(r, c)) fused, each hit explained by what they
        found (asking each member only for the fused hits), and per hit the reason of the first
        member that ranked it (None for padding)."""
        scores, ids = fuse([(s, i) for s, i, _ in found], k, rule=self.rule, weights=self.weights, k0=self.k0)
        reasons, firsts = [], []
        for r, row_ids in enumerate(ids.tolist()):
            where = [{i: c for c, i in enumerate(member_ids[r].tolist()) if i >= 0} for _, member_ids, _ in found]
            row: list[dict] = []
            first: list[dict | None] = []
            for image_id in row_ids:
                if image_id < 0:
                    row.append({})
                    first.append(None)
                    continue
                why: dict = {}
                given = [reason(r, at[image_id]) for (_, _, reason), at in zip(found, where) if image_id in at]
                for member_why in given:
                    why.update(member_why)
                why["ranks"] = {m.name: at[image_id] + 1 if image_id in at else None
                                for m, at in zip(self.members, where)}
                row.append(why)
                first.append(given[0] if given else {})
            reasons.append(row)
            firsts.append(first)
        return Explained(scores, ids, reasons), firsts


Reason = Callable[[int, int], dict]
"""A member's reason for its hit c of query r."""


def _given(reasons: list[list[dict]]) -> Reason:
    return lambda r, c: reasons[r][c]


def _of_one_query(why: Callable[[int], dict]) -> Reason:
    return lambda r, c: why(c)


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
