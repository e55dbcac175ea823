"""One retriever protocol for every method, and a registry that builds them by name.

Modelled on FAISS's `Index` (`add`, `search(queries, k) -> (scores, ids)`, batch first) and on
torchvision's `register_model` / `get_model`:

* Every method (`iwan`, `exhaustive`, `hashes`, `fused`, `hashes-pg`, `exhaustive-pg`) answers
  `search(queries, k, *, exclude=None) -> (scores, ids)`: (q, k) arrays, best first, higher score
  is better, ids are database image ids, ties go to the lower id, and a row with fewer than k hits
  is padded with id -1 and score -inf.
* A `Batch` carries what any method may need, queries and the images a method holds alike; each
  method reads its part (IWAN the words, the hash methods the embeddings and codes).
* `register_retriever("name")` marks a builder; `get_retriever("name", engine, corpus)` builds the
  method over a corpus from the database. A new method is one module that registers itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from importlib import import_module
from typing import Protocol, runtime_checkable

import numpy as np

from iwan.config import DEFAULT_TOP_IWK, DEFAULT_TOP_WWK, USF_SOURCE


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
    """(q,) uint64 binary hash codes (iwan.config.HASH_BITS bits)."""
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

    def need(self, *names: str, method: str) -> None:
        """Raise a ValueError naming what `method` needs and the batch lacks."""
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ValueError(f"the {method} method needs {' and '.join(missing)} in its queries")


@dataclass(frozen=True)
class Corpus:
    """What a method is built over: images of the database and the stored data that name them."""

    image_ids: np.ndarray
    """int64 database ids of the images, in ascending order."""
    predictor: str | None = None
    """Whose stored word predictions name the images (IWAN)."""
    hash_model: str | None = None
    """Whose stored embeddings and codes represent the images (exhaustive, hashes)."""
    top_iwk: int = DEFAULT_TOP_IWK
    top_wwk: int = DEFAULT_TOP_WWK
    strength: str = "forward"
    source: str = USF_SOURCE
    options: dict = field(default_factory=dict)
    """Method-specific settings by method name, passed to its builder, e.g.
    {"fused": {"fusion": "weighted", "weights": (0.3, 0.7)}, "hashes": {"shortlist_factor": 4}}."""


@runtime_checkable
class Retriever(Protocol):
    name: str

    @property
    def ntotal(self) -> int:
        """How many images the retriever holds."""

    def add(self, image_ids: np.ndarray, images: Batch) -> None:
        """Take in images (their ids ascending, above those held) with their data."""

    def remove(self, image_ids: np.ndarray) -> None:
        """Drop images by id; an id not held is a ValueError naming it."""

    def search(self, queries: Batch, k: int, *, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (q, k); `exclude` (q,) holds one image id per query to leave out (-1: none)."""


Builder = Callable[..., Retriever]
_BUILDERS: dict[str, Builder] = {}
_BUILTIN_MODULES = (
    "iwan.retrieval.iwan",
    "iwan.retrieval.exhaustive",
    "iwan.retrieval.hashes",
    "iwan.retrieval.fused",
    "iwan.retrieval.hashes_pg",
    "iwan.retrieval.exhaustive_pg",
)
"""Modules of the project's own methods, imported on first use so that they register."""


def register_retriever(name: str) -> Callable[[Builder], Builder]:
    """Decorator: `builder(engine, corpus, **options) -> Retriever` becomes method `name`."""

    def wrap(builder: Builder) -> Builder:
        if name in _BUILDERS and _BUILDERS[name] is not builder:
            raise ValueError(f"a retriever named {name!r} is already registered")
        _BUILDERS[name] = builder
        return builder

    return wrap


def retriever_names() -> tuple[str, ...]:
    _import_builtins()
    return tuple(sorted(_BUILDERS))


def get_retriever(name: str, engine, corpus: Corpus, **options) -> Retriever:
    """Build method `name` over `corpus` from the database behind `engine`; `options` add to (and
    override) the corpus's options for that method."""
    _import_builtins()
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown retrieval method {name!r}: choose from {', '.join(sorted(_BUILDERS))}") from None
    return builder(engine, corpus, **{**corpus.options.get(name, {}), **options})


def _import_builtins() -> None:
    for module in _BUILTIN_MODULES:
        import_module(module)


def check_k(k: int) -> int:
    """k as an int; a ValueError unless it is a whole number >= 1."""
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k={k!r} must be a whole number >= 1")
    return int(k)


def empty_results(n_queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of padding: scores -inf, ids -1."""
    return np.full((n_queries, k), -np.inf, dtype=np.float32), np.full((n_queries, k), -1, dtype=np.int64)
