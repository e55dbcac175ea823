"""Choosing a retrieval method by name, as torchvision's `register_model` / `get_model` do.

`register_retriever("name")` marks a builder, `builder(corpus, data, **options) -> Retriever`;
`get_retriever("name", corpus, data)` builds the method over `corpus` from what `data` (a
`CorpusData`: arrays in memory or a reader over the store) gives. Every built-in method is
registered when `iwan.retrieval` is imported: a new method is one module that registers itself,
imported there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from iwan.config import DEFAULT_STRENGTH, DEFAULT_TOP_IWK, DEFAULT_TOP_WWK, USF_SOURCE
from iwan.retrieval.protocol import CorpusData, Retriever


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
    strength: str = DEFAULT_STRENGTH
    source: str = USF_SOURCE
    options: dict = field(default_factory=dict)
    """Method-specific settings by method name, passed to its builder, e.g.
    {"fused": {"fusion": "weighted", "weights": (0.3, 0.7)}, "hashes": {"shortlist_factor": 4}}."""


Builder = Callable[..., Retriever]
_BUILDERS: dict[str, Builder] = {}


def register_retriever(name: str) -> Callable[[Builder], Builder]:
    """Decorator: `builder(corpus, data, **options) -> Retriever` becomes method `name`."""

    def wrap(builder: Builder) -> Builder:
        if name in _BUILDERS and _BUILDERS[name] is not builder:
            raise ValueError(f"a retriever named {name!r} is already registered")
        _BUILDERS[name] = builder
        return builder

    return wrap


def retriever_names() -> tuple[str, ...]:
    return tuple(sorted(_BUILDERS))


def get_retriever(name: str, corpus: Corpus, data: CorpusData, **options) -> Retriever:
    """Build method `name` over `corpus` from `data`; `options` add to (and override) the
    corpus's options for that method."""
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown retrieval method {name!r}: choose from {', '.join(sorted(_BUILDERS))}") from None
    return builder(corpus, data, **{**corpus.options.get(name, {}), **options})


def require_predictor(corpus: Corpus, method: str) -> str:
    if not corpus.predictor:
        raise ValueError(f"the {method} method needs a predictor (whose stored word predictions name the images)")
    return corpus.predictor


def require_hash_model(corpus: Corpus, method: str) -> str:
    if not corpus.hash_model:
        raise ValueError(f"the {method} method needs a hash model (whose stored codes represent the images): give --hash-model")
    return corpus.hash_model
