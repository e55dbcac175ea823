"""The one search pipeline: a `SearchRequest` in, a `SearchResult` out, for `iwan search
--collection`, the Python API and `iwan serve` alike.

A request holds its examples: `positive` ones to be near (an image's bytes, a text, or a stored
image's id each; `image`, `text` or `image_id` alone is the one-positive case) and, optionally,
`negative` ones to be far from; the method, k and offset; and what cuts the results:
`min_score`, the `labels` kept and `exclude_labels` left out (before the top k is taken), and
`collapse_duplicates`. `search` checks it, turns the examples into batches once (the uploaded
images decoded and encoded in one pass of the collection's models; the norms' words for a text;
the stored data for an image id), searches the method once with reasons
(`ExampleRetriever.explain_examples`: each method answers the examples in its own terms; a fused
search searches each member once and explains by what those searches found), and returns the
hits with their labels, scores and explanations (`example`: the positive that led to a hit), the
query's words, how many results `passed` the cut, and the timing. `SearchResult.as_dict()` is
the JSON document the HTTP search answers.
"""

from __future__ import annotations

import math
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from iwan.config import (
    DEFAULT_K,
    DUPLICATE_MAX_HAMMING,
    DUPLICATE_MIN_COSINE,
    MAX_EXAMPLES,
    MAX_LABEL_CHARS,
    MAX_LABEL_FILTERS,
    MAX_SEARCH_K,
    MAX_SEARCH_OFFSET,
    MAX_TEXT_QUERY_CHARS,
)
from iwan.vision.decode import DecodePolicy, MemoryBudget

if TYPE_CHECKING:
    from iwan.collections.live import LiveCollection
    from iwan.retrieval.protocol import Batch


@dataclass(frozen=True)
class Example:
    """One example: exactly one of `image` (bytes of an image file), `text` ("cat:0.8,dog:0.2" or
    plain words) and `image_id` (a stored image, itself left out of the results)."""

    image: bytes | None = field(default=None, repr=False)
    text: str | None = None
    image_id: int | None = None
    image_name: str = "image"
    """How errors name the image (its file name)."""

    def __post_init__(self):
        given = [name for name in ("image", "text", "image_id") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"an example is exactly one of an image, a text or an image id (got {given or 'none'})")
        if self.image_id is not None and (isinstance(self.image_id, bool) or not isinstance(self.image_id, int)
                                          or self.image_id < 0):
            raise ValueError(f"image_id={self.image_id!r} must be a whole number >= 0")
        if self.text is not None:
            check_text(self.text, "text")
            if not 1 <= len(self.text) <= MAX_TEXT_QUERY_CHARS:
                raise ValueError(f"text must have 1 to {MAX_TEXT_QUERY_CHARS} characters")


@dataclass(frozen=True)
class SearchRequest:
    """One search: `positive` examples (or exactly one of `image`, `text` and `image_id`: the
    one-positive case), optionally `negative` ones, and what cuts the results."""

    image: bytes | None = field(default=None, repr=False)
    text: str | None = None
    image_id: int | None = None
    method: str | None = None
    """A method the collection has (default: the collection's, or iwan for a text)."""
    k: int = DEFAULT_K
    offset: int = 0
    image_name: str = "image"
    """How errors name the image (its file name)."""
    positive: Sequence[Example] = ()
    """Examples to be near, at most MAX_EXAMPLES; a hit's `explanation.example` is a position here."""
    negative: Sequence[Example] = ()
    """Examples to be far from, at most MAX_EXAMPLES."""
    min_score: float | None = None
    """Only results with a score at least this (higher is better): fewer than k may pass."""
    labels: Sequence[str] | None = None
    """Only images with one of these labels (applied before the top k is taken)."""
    exclude_labels: Sequence[str] | None = None
    """No image with one of these labels."""
    collapse_duplicates: bool = False
    """Near-identical results (code and embedding) shown once, the best of each group, with its size."""

    def __post_init__(self):
        given = [name for name in ("image", "text", "image_id") if getattr(self, name) is not None]
        if len(given) > 1 or (given and self.positive):
            raise ValueError(f"a search needs exactly one query: an image, a text or an image id, or a list of "
                             f"positive examples (got {given + (['positive'] if self.positive else [])})")
        if given:
            shorthand = Example(image=self.image, text=self.text, image_id=self.image_id, image_name=self.image_name)
            object.__setattr__(self, "positive", (shorthand,))
        for name in ("positive", "negative"):
            examples = getattr(self, name)
            if isinstance(examples, (str, bytes, Example)) or not all(isinstance(e, Example) for e in examples):
                raise ValueError(f"{name} must be a list of examples (iwan.collections.pipeline.Example)")
            if len(examples) > MAX_EXAMPLES:
                raise ValueError(f"{len(examples)} {name} examples: give at most {MAX_EXAMPLES}")
            object.__setattr__(self, name, tuple(examples))
        if not self.positive:
            raise ValueError("a search needs exactly one query: an image, a text or an image id, or a list of "
                             "positive examples (got none)")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= MAX_SEARCH_K:
            raise ValueError(f"k={self.k!r} must be a whole number from 1 to {MAX_SEARCH_K}")
        if isinstance(self.offset, bool) or not isinstance(self.offset, int) or not 0 <= self.offset <= MAX_SEARCH_OFFSET:
            raise ValueError(f"offset={self.offset!r} must be a whole number from 0 to {MAX_SEARCH_OFFSET}")
        if self.min_score is not None and (isinstance(self.min_score, bool) or not isinstance(self.min_score, (int, float))
                                           or not math.isfinite(self.min_score)):
            raise ValueError(f"min_score={self.min_score!r} must be a finite number")
        for name in ("labels", "exclude_labels"):
            labels = getattr(self, name)
            if labels is None:
                continue
            if isinstance(labels, str) or not all(isinstance(x, str) for x in labels):
                raise ValueError(f"{name} must be a list of labels (text)")
            if not 1 <= len(labels) <= MAX_LABEL_FILTERS:
                raise ValueError(f"{name} must name 1 to {MAX_LABEL_FILTERS} labels (leave it out for no filter)")
            for label in labels:
                check_text(label, name)
                if not 1 <= len(label) <= MAX_LABEL_CHARS:
                    raise ValueError(f"{name}: a label has 1 to {MAX_LABEL_CHARS} characters")
            object.__setattr__(self, name, tuple(labels))
        if not isinstance(self.collapse_duplicates, bool):
            raise ValueError(f"collapse_duplicates={self.collapse_duplicates!r} must be true or false")

    @property
    def examples(self) -> list[Example]:
        """Every example, positives first."""
        return [*self.positive, *self.negative]


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
    passed: int = 0
    """How many results met `min_score` (all of them without one): the results returned."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "collection": self.collection, "method": self.method,
            "query": {"words": [{"word": w, "weight": p} for w, p in self.words], "unknown": list(self.unknown)},
            "results": [hit.as_dict() for hit in self.hits], "passed": self.passed, "timing_ms": dict(self.timing_ms),
        }


def search(collection: LiveCollection, request: SearchRequest, policy: DecodePolicy | None = None,
           budget: MemoryBudget | None = None) -> SearchResult:
    """Answer `request` over `collection`; ValueError for a bad request (an ImageRefused, with its
    HTTP status, for an unacceptable image), LookupError for an image id the collection lacks;
    ImageBusy when `budget` (what concurrent image work may hold) stays full."""
    from iwan.retrieval.protocol import Examples

    start = time.perf_counter()
    method = choose_method(collection, request)
    if request.collapse_duplicates and not collection.hash_model:
        raise ValueError(f"collapse_duplicates compares hash codes and embeddings: collection {collection.name!r} "
                         "has no hash model (create it with --hash-model to use the option)")
    positive = _examples_batch(collection, request.positive, policy, budget, "positive")
    negative = _examples_batch(collection, request.negative, policy, budget, "negative") if request.negative else None
    stored = [e.image_id for e in request.examples if e.image_id is not None]
    exclude = np.array(stored, dtype=np.int64) if stored else None
    among = collection.eligible(request.labels, request.exclude_labels)
    modelled = time.perf_counter()
    examples = Examples(positive.batch, None if negative is None else negative.batch)
    want = request.offset + request.k
    fetch = 2 * want if request.collapse_duplicates else want
    while True:
        found = collection.explain_examples(examples, fetch, method=method, among=among, exclude=exclude)
        ids = found.ids[0]
        held = [(int(i), float(s), why) for i, s, why in zip(ids.tolist(), found.scores[0].tolist(), found.reasons[0])
                if i >= 0]
        if not request.collapse_duplicates:
            break
        held = collapse(collection, held)
        # Short of groups while the search filled its depth: look deeper.
        if len(held) >= want or int((ids >= 0).sum()) < fetch or fetch >= collection.size:
            break
        fetch = min(2 * fetch, max(collection.size, want))
    searched = time.perf_counter()
    page = held[request.offset:want]
    if request.min_score is not None:
        page = [hit for hit in page if math.isfinite(hit[1]) and hit[1] >= request.min_score]
    labels = collection.labels([i for i, _, _ in page]) if page else []
    hits = [Hit(rank=request.offset + c + 1, image_id=image_id, label=label, score=finite(score), explanation=why)
            for c, ((image_id, score, why), label) in enumerate(zip(page, labels))]
    end = time.perf_counter()
    timing = {"model": round((modelled - start) * 1e3, 3), "search": round((searched - modelled) * 1e3, 3),
              "total": round((end - start) * 1e3, 3)}
    words = [(w, finite(p) or 0.0) for w, p in positive.words]
    return SearchResult(collection.name, method, words, positive.unknown, hits, timing, passed=len(hits))


@dataclass(frozen=True)
class _ExampleBatch:
    batch: Batch
    """One row per example, in their order."""
    words: list[tuple[str, float]]
    """The words the examples start from together (IWAN's start), heaviest first."""
    unknown: list[str]


def _examples_batch(collection: LiveCollection, examples: Sequence[Example], policy: DecodePolicy | None,
                    budget: MemoryBudget | None, what: str) -> _ExampleBatch:
    """The examples as one batch: the uploaded images decoded, then encoded in one pass; the
    stored ones read in one lookup; each text by the norms' words."""
    from iwan.retrieval.iwan import combined_start
    from iwan.retrieval.protocol import WORD_FIELDS
    from iwan.vision.decode import decode_image

    rows: list[Batch | None] = [None] * len(examples)
    unknown: list[str] = []
    text_words: list[tuple[str, float]] | None = None
    uploads = [i for i, e in enumerate(examples) if e.image is not None]
    if uploads:
        pixels = [decode_image(cast(bytes, examples[i].image), examples[i].image_name, policy or DecodePolicy(),
                               budget).pixels for i in uploads]
        encoded = collection.image_queries(pixels, budget)
        for row, i in enumerate(uploads):
            rows[i] = encoded.rows(slice(row, row + 1))
    stored = [i for i, e in enumerate(examples) if e.image_id is not None]
    whole = None
    if stored:
        found = collection.stored_queries(np.array([examples[i].image_id for i in stored], dtype=np.int64))
        if len(stored) == len(examples) > 1:  # the rows are one batch already, in their order
            whole = stacked(found)
        for row, i in enumerate(stored if whole is None else ()):
            rows[i] = found.rows(slice(row, row + 1))
    for i, example in enumerate(examples):
        if example.text is not None:
            parsed = collection.text_queries(example.text)
            rows[i] = parsed.batch
            unknown += [w for w in parsed.unknown if w not in unknown]
            text_words = list(parsed.words)
    batch = whole if whole is not None else stack(cast("list[Batch]", rows))
    if not batch.has(WORD_FIELDS):
        words = []
    elif len(examples) == 1:  # one example's words as they were given (a text's in its order)
        words = text_words if text_words is not None else query_words(collection.words, batch)
    else:
        word_ids, weights, _ = combined_start(batch)
        order = np.argsort(-weights, kind="stable")  # heaviest first, ties in word order
        words = [(collection.words[w], p) for w, p in zip(word_ids[order].tolist(), weights[order].tolist())]
    return _ExampleBatch(batch, words, unknown)


def stacked(batch: Batch) -> Batch:
    """`batch` as `stack` gives its rows back: the fields a query carries, without `image_ids`."""
    from iwan.retrieval.protocol import Batch

    return Batch(word_ids=batch.word_ids, weights=batch.weights, embeddings=batch.embeddings, codes=batch.codes)


def stack(batches: list[Batch]) -> Batch:
    """One batch of the rows of `batches`, in order: a field every batch has (word rows padded to
    the widest with id -1 and weight 0), the others None."""
    from iwan.retrieval.protocol import Batch

    if len(batches) == 1:
        return batches[0]
    out: dict[str, np.ndarray | None] = {}
    for name in ("word_ids", "weights", "embeddings", "codes"):
        parts = [getattr(b, name) for b in batches]
        if any(p is None for p in parts):
            out[name] = None
        elif name in ("word_ids", "weights"):
            width = max(p.shape[1] for p in parts)
            fill = -1 if name == "word_ids" else 0.0
            out[name] = np.concatenate([p if p.shape[1] == width else
                                        np.pad(p, ((0, 0), (0, width - p.shape[1])), constant_values=fill) for p in parts])
        else:
            out[name] = np.concatenate(parts)
    return Batch(**out)


def collapse(collection: LiveCollection, hits: list[tuple[int, float, dict]]) -> list[tuple[int, float, dict]]:
    """The best hit of each group of near-identical ones (code within DUPLICATE_MAX_HAMMING bits and
    embedding cosine at least DUPLICATE_MIN_COSINE of the group's best), in rank order, each
    explained with its `group_size` and the `duplicates` it stands for."""
    from hashing.search import hamming_distances

    if not hits:
        return hits
    data = collection.stored_queries(np.array([i for i, _, _ in hits], dtype=np.int64))
    embeddings = np.asarray(data.embeddings, dtype=np.float64)
    embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    codes = np.asarray(data.codes, dtype=np.uint64)
    leaders: list[int] = []
    groups: dict[int, list[int]] = {}
    for row in range(len(hits)):
        if leaders:
            near = (hamming_distances(codes[leaders], codes[row:row + 1])[0] <= DUPLICATE_MAX_HAMMING) & \
                   (embeddings[leaders] @ embeddings[row] >= DUPLICATE_MIN_COSINE)
            if near.any():
                groups[leaders[int(np.flatnonzero(near)[0])]].append(row)
                continue
        leaders.append(row)
        groups[row] = []
    out = []
    for row in leaders:
        image_id, score, why = hits[row]
        why = {**why, "group_size": 1 + len(groups[row]), "duplicates": [hits[r][0] for r in groups[row]]}
        out.append((image_id, score, why))
    return out


def choose_method(collection: LiveCollection, request: SearchRequest) -> str:
    """The request's method, or the collection's default; a text query needs a method that reads
    only words (the hash methods compare images)."""
    from iwan.retrieval.protocol import WORD_FIELDS

    text_methods = [m for m in collection.methods if set(collection.retrievers[m].reads) <= set(WORD_FIELDS)]
    has_text = any(e.text is not None for e in request.examples)
    method = request.method
    if method is None:
        method = collection.default_method
        if has_text and method not in text_methods:
            method = text_methods[0]
    if method not in collection.methods:
        raise ValueError(f"method {method!r} is not available in {collection.name!r}: choose from "
                         f"{', '.join(collection.methods)}")
    if has_text and method not in text_methods:
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
