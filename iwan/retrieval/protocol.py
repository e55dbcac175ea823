"""The retriever protocol: what every retrieval method is, in terms of numpy arrays only.

Modelled on FAISS's `Index`: `add`, `remove`, `search(queries, k) -> (scores, ids)`, batch first.
This module imports nothing of the project, so that a method can be written against it alone.

* Every method answers `search(queries, k, *, exclude=None) -> (scores, ids)`: (q, k) arrays,
  best first, higher score is better, ids are database image ids, ties go to the lower id, and a
  row with fewer than k hits is padded with id -1 and score -inf.
* `explain(queries, k, *, exclude=None) -> Explained` is the same search, with the reason for
  each hit as the method sees it (IWAN's word path, the hash methods' Hamming distance and
  cosine, a fusion's member ranks): the reasons come from that one search, never from another.
* `explain_examples(examples, k, *, among=None, exclude=None) -> Explained` (an
  `ExampleRetriever`) answers one query of several examples, `Examples(positive, negative)`, in
  the method's own terms, as one row; `among` (ids) restricts the results to those images (a
  filter applied before the top k is taken) and `exclude` (ids) leaves images out. Each hit's
  reason names `example`, the row of `positive` that led to it. `search_examples(queries, k, *,
  exclude=None)` ranks many such queries at once, as `explain_examples` ranks each, without the
  reasons (an evaluation's batch).
* A `Batch` carries what any method may need, queries and the images a method holds alike; each
  method reads its part (`reads`: IWAN the words, the hash methods the embeddings and codes).
* Builders read the images they are built over through a `CorpusData`: arrays in memory, or a
  small reader over the store; never a database connection of their own.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol, runtime_checkable

import numpy as np

FIELDS: tuple[str, ...] = ("word_ids", "weights", "embeddings", "codes")
"""What a query or an image can carry; `Batch.image_ids` names stored images besides."""
WORD_FIELDS: tuple[str, ...] = ("word_ids", "weights")


@dataclass(frozen=True)
class Batch:
    """q queries, or q images to add: every field given has q rows; the rest are None."""

    word_ids: np.ndarray | None = None
    """(q, m) int64 ids of words in the norms' vocabulary (-1: none), e.g. an image's top-class words."""
    weights: np.ndarray | None = None
    """(q, m) float64 weight of each word (a class probability; a text query's weight); cost 1/weight."""
    embeddings: np.ndarray | None = None
    """(q, d) float32 semantic embeddings (the hash model's output)."""
    codes: np.ndarray | None = None
    """(q,) uint64 binary hash codes."""
    image_ids: np.ndarray | None = None
    """(q,) int64 database ids of stored images: a method may look up what it holds for them."""

    def __post_init__(self):
        lengths = {f.name: len(getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"a Batch's fields must have one row per query, got {lengths}")

    def __len__(self) -> int:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                return len(value)
        return 0

    def rows(self, rows) -> Batch:
        """The queries at `rows` (an index array or slice)."""
        return Batch(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[rows]
                        for f in fields(self)})

    def has(self, names: Collection[str]) -> bool:
        """Whether every field in `names` is given."""
        return all(getattr(self, n) is not None for n in names)

    def need(self, *names: str, method: str) -> tuple[np.ndarray, ...]:
        """The fields `names`, in that order; a ValueError naming what `method` needs and the batch lacks."""
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ValueError(f"the {method} method needs {' and '.join(missing)} in its queries")
        return tuple(getattr(self, n) for n in names)


@dataclass(frozen=True)
class Explained:
    """A search's hits with the reason for each: scores and ids as `search` returns them, and
    `reasons[r][c]` the reason (a dict of plain values) for hit c of query r ({} for padding)."""

    scores: np.ndarray
    ids: np.ndarray
    reasons: list[list[dict[str, Any]]] = field(default_factory=list)


@dataclass(frozen=True)
class Examples:
    """One query of several examples: results near the `positive` rows (at least one) and away
    from the `negative` ones (None: none)."""

    positive: Batch
    negative: Batch | None = None

    def __post_init__(self):
        if not len(self.positive):
            raise ValueError("a query of examples needs at least one positive example")

    @property
    def has_negative(self) -> bool:
        return self.negative is not None and len(self.negative) > 0


@runtime_checkable
class Retriever(Protocol):
    @property
    def name(self) -> str:
        """The method's registered name."""

    @property
    def reads(self) -> tuple[str, ...]:
        """The fields of a query batch (and of added images) the method reads."""

    @property
    def ntotal(self) -> int:
        """How many images the retriever holds."""

    def add(self, image_ids: np.ndarray, images: Batch) -> None:
        """Take in images (their ids ascending, above those held) with their data, ids first."""

    def remove(self, image_ids: np.ndarray) -> None:
        """Drop images by id; an id not held is a ValueError naming it."""

    def search(self, queries: Batch, k: int, *, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (q, k); `exclude` (q,) holds one image id per query to leave out (-1: none)."""

    def explain(self, queries: Batch, k: int, *, exclude: np.ndarray | None = None) -> Explained:
        """The same search as `search`, with each hit's reason."""


class CorpusData(Protocol):
    """What a builder reads about the images it is built over (and stored images as queries)."""

    def images(self, image_ids: np.ndarray, fields: Collection[str] | None = None) -> Batch:
        """A batch for these images, in their order, with the `fields` asked (default: all there
        are); LookupError naming an image without its data."""

    def associations(self) -> Any:
        """The norm set's word associations, as the IWAN graph is built from them."""

    @property
    def unmapped_classes(self) -> Sequence[str]:
        """The predictor's classes that map to no word of the norms (reported, not searched)."""



@runtime_checkable
class ExampleRetriever(Retriever, Protocol):
    """A method that answers queries of several examples, for and against."""

    def explain_examples(self, examples: Examples, k: int, *, among: np.ndarray | None = None,
                         exclude: np.ndarray | None = None) -> Explained:
        """One row: the k best images for the examples, of `among` (ids; None: all) less `exclude`
        (ids), each hit's reason with `example`, the positive row that led to it."""

    def search_examples(self, queries: Sequence[Examples], k: int, *,
                        exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (q, k): row r what `explain_examples(queries[r], k, exclude=...)`
        ranks, for many queries at once and without the reasons (evaluations); `exclude` (q, e)
        holds each query's ids to leave out (-1: none)."""
