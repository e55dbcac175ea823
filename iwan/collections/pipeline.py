"""The one search pipeline: a `SearchRequest` in, a `SearchResult` out, for `iwan search
--collection`, the Python API and `iwan serve` alike.

A request holds one query (an image's bytes, a text, or a stored image's id), the method, k and
offset. `search` checks it, turns the query into a batch once (the one image decoder and the
collection's encoder for an image; the norms' words for a text; the stored data for an image id),
searches the method once with reasons (`Retriever.explain`: a fused search searches each member
once and explains by what those searches found), and returns the hits with their labels, scores
and explanations, the query's words, and the timing. `SearchResult.as_dict()` is the JSON
document the HTTP search answers.
"""

from __future__ import annotations

import math
import time
import unicodedata
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from iwan.config import DEFAULT_K, MAX_SEARCH_K, MAX_SEARCH_OFFSET, MAX_TEXT_QUERY_CHARS
from iwan.vision.decode import DecodePolicy, MemoryBudget

if TYPE_CHECKING:
    from iwan.collections.live import LiveCollection
    from iwan.retrieval.protocol import Batch


@dataclass(frozen=True)
class SearchRequest:
    """One search: exactly one of `image` (bytes of an image file), `text` ("cat:0.8,dog:0.2" or
    plain words) and `image_id` (a stored image: more like this, itself left out)."""

    image: bytes | None = field(default=None, repr=False)
    text: str | None = None
    image_id: int | None = None
    method: str | None = None
    """A method the collection has (default: the collection's, or iwan for a text)."""
    k: int = DEFAULT_K
    offset: int = 0
    image_name: str = "image"
    """How errors name the image (its file name)."""

    def __post_init__(self):
        given = [name for name in ("image", "text", "image_id") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"a search needs exactly one query: an image, a text or an image id (got {given or 'none'})")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= MAX_SEARCH_K:
            raise ValueError(f"k={self.k!r} must be a whole number from 1 to {MAX_SEARCH_K}")
        if isinstance(self.offset, bool) or not isinstance(self.offset, int) or not 0 <= self.offset <= MAX_SEARCH_OFFSET:
            raise ValueError(f"offset={self.offset!r} must be a whole number from 0 to {MAX_SEARCH_OFFSET}")
        if self.text is not None:
            check_text(self.text, "text")
            if not 1 <= len(self.text) <= MAX_TEXT_QUERY_CHARS:
                raise ValueError(f"text must have 1 to {MAX_TEXT_QUERY_CHARS} characters")


@dataclass(frozen=True)
class Hit:
    rank: int
    image_id: int
    label: str | None
    score: float | None
    """Higher is better: IWAN's minus distance, the hash methods' cosine, fused the fused score."""
    explanation: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "image_id": self.image_id, "label": self.label, "score": self.score,
                "thumbnail_url": f"/v1/images/{self.image_id}/thumbnail", "explanation": self.explanation}


@dataclass(frozen=True)
class SearchResult:
    collection: str
    method: str
    words: list[tuple[str, float]]
    """The words the search starts from, with their weights, heaviest first."""
    unknown: list[str]
    """Words of a text query that the norms do not have (left out)."""
    hits: list[Hit]
    timing_ms: dict[str, float]
    """model (turning the query into a batch), search, total."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "collection": self.collection, "method": self.method,
            "query": {"words": [{"word": w, "weight": p} for w, p in self.words], "unknown": list(self.unknown)},
            "results": [hit.as_dict() for hit in self.hits], "timing_ms": dict(self.timing_ms),
        }


def search(collection: LiveCollection, request: SearchRequest, policy: DecodePolicy | None = None,
           budget: MemoryBudget | None = None) -> SearchResult:
    """Answer `request` over `collection`; ValueError for a bad request (an ImageRefused, with its
    HTTP status, for an unacceptable image), LookupError for an image id the collection lacks;
    ImageBusy when `budget` (what concurrent image work may hold) stays full."""
    from iwan.retrieval.protocol import WORD_FIELDS
    from iwan.vision.decode import decode_image

    start = time.perf_counter()
    method = choose_method(collection, request)
    exclude, unknown, words = None, [], None
    if request.image is not None:
        decoded = decode_image(request.image, request.image_name, policy or DecodePolicy(), budget)
        queries = collection.image_queries([decoded.pixels], budget)
    elif request.text is not None:
        parsed = collection.text_queries(request.text)
        queries, unknown, words = parsed.batch, list(parsed.unknown), list(parsed.words)
    else:
        queries = collection.stored_queries(np.array([request.image_id], dtype=np.int64))
        exclude = np.array([request.image_id], dtype=np.int64)
    if words is None:
        words = query_words(collection.words, queries) if queries.has(WORD_FIELDS) else []
    modelled = time.perf_counter()
    found = collection.explain(queries, request.offset + request.k, method=method, exclude=exclude)
    searched = time.perf_counter()
    ids = found.ids[0, request.offset:]
    scores = found.scores[0, request.offset:]
    reasons = found.reasons[0][request.offset:]
    keep = (ids >= 0).tolist()
    ids = ids[keep].tolist()
    labels = collection.labels(ids) if ids else []
    hits = [
        Hit(rank=request.offset + i + 1, image_id=image_id, label=label, score=finite(score), explanation=why)
        for i, (image_id, label, score, why) in enumerate(
            zip(ids, labels, scores[keep].tolist(), [r for r, ok in zip(reasons, keep) if ok]))
    ]
    end = time.perf_counter()
    timing = {"model": round((modelled - start) * 1e3, 3), "search": round((searched - modelled) * 1e3, 3),
              "total": round((end - start) * 1e3, 3)}
    return SearchResult(collection.name, method, [(w, finite(p) or 0.0) for w, p in words], unknown, hits, timing)


def choose_method(collection: LiveCollection, request: SearchRequest) -> str:
    """The request's method, or the collection's default; a text query needs a method that reads
    only words (the hash methods compare images)."""
    from iwan.retrieval.protocol import WORD_FIELDS

    text_methods = [m for m in collection.methods if set(collection.retrievers[m].reads) <= set(WORD_FIELDS)]
    method = request.method
    if method is None:
        method = collection.default_method
        if request.text is not None and method not in text_methods:
            method = text_methods[0]
    if method not in collection.methods:
        raise ValueError(f"method {method!r} is not available in {collection.name!r}: choose from "
                         f"{', '.join(collection.methods)}")
    if request.text is not None and method not in text_methods:
        raise ValueError(f"method {method!r} needs an image query (it compares images' hashes); "
                         f"a text query is searched by {', '.join(text_methods)}")
    return method


def query_words(vocabulary: list[str], queries: Batch) -> list[tuple[str, float]]:
    """The words one query starts from, heaviest first (a word given twice keeps its larger weight)."""
    best: dict[int, float] = {}
    word_ids, weights = queries.need("word_ids", "weights", method="iwan")
    for word_id, weight in zip(word_ids[0].tolist(), weights[0].tolist()):
        if word_id >= 0 and weight > 0 and math.isfinite(weight):
            best[word_id] = max(best.get(word_id, 0.0), weight)
    return [(vocabulary[w], p) for w, p in sorted(best.items(), key=lambda item: -item[1])]


def check_text(text: str, what: str) -> None:
    """Refuse control characters (a NUL cannot reach PostgreSQL, and none means anything in a query)."""
    bad = sorted({f"U+{ord(c):04X}" for c in text if unicodedata.category(c) == "Cc" and c not in "\t\n\r"})
    if bad:
        raise ValueError(f"{what} contains control characters ({', '.join(bad)}); send words only")


def finite(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None
