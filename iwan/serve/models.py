"""The service's request and response shapes (its OpenAPI document is built from these)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from iwan.config import (
    MAX_EXAMPLES,
    MAX_LABEL_CHARS,
    MAX_LABEL_FILTERS,
    MAX_SEARCH_K,
    MAX_SEARCH_OFFSET,
    MAX_TEXT_QUERY_CHARS,
)

MAX_IMAGE_ID = 2**31 - 1
"""Image ids are PostgreSQL integers; anything larger is refused before it reaches the database."""

ImageId = Field(ge=0, le=MAX_IMAGE_ID)


class ExampleBody(BaseModel):
    """An example of a search: a stored image (`image_id`) or words (`text`), exactly one of them."""

    model_config = ConfigDict(extra="forbid")

    image_id: int | None = Field(default=None, ge=0, le=MAX_IMAGE_ID, description="A stored image.")
    text: str | None = Field(default=None, min_length=1, max_length=MAX_TEXT_QUERY_CHARS,
                             description='Words, plain ("cat dog") or weighted ("cat:0.8,dog:0.2").')

    @model_validator(mode="after")
    def _one_of(self) -> ExampleBody:
        if (self.text is None) == (self.image_id is None):
            raise ValueError('an example is exactly one of {"image_id": N} or {"text": "..."}')
        return self


Label = Annotated[str, Field(min_length=1, max_length=MAX_LABEL_CHARS)]


class SearchFilters(BaseModel):
    """What cuts a search's results, in a JSON body and a multipart form alike."""

    model_config = ConfigDict(extra="forbid")

    method: str | None = Field(default=None, max_length=40, description="iwan, hashes, exhaustive or fused (default: the collection's).")
    k: int | None = Field(default=None, ge=1, le=MAX_SEARCH_K, description="How many results (default 20).")
    offset: int | None = Field(default=None, ge=0, le=MAX_SEARCH_OFFSET, description="Results to skip, for paging.")
    min_score: float | None = Field(default=None, allow_inf_nan=False,
                                    description="Only results scoring at least this (the results' `score`, higher is better).")
    labels: list[Label] | None = Field(default=None, min_length=1, max_length=MAX_LABEL_FILTERS,
                                       description="Only images with one of these labels (before the top k is taken).")
    exclude_labels: list[Label] | None = Field(default=None, min_length=1, max_length=MAX_LABEL_FILTERS,
                                               description="No image with one of these labels.")
    collapse_duplicates: bool = Field(default=False, description="Near-identical results shown once, with their group's size.")


class SearchBody(SearchFilters):
    """A JSON search: by words (`text`), by a stored image (`image_id`), or by `positive` examples
    and, optionally, `negative` ones: exactly one of `text`, `image_id` and `positive`."""

    text: str | None = Field(
        default=None, min_length=1, max_length=MAX_TEXT_QUERY_CHARS,
        description='Words, plain ("cat dog") or weighted ("cat:0.8,dog:0.2").',
    )
    image_id: int | None = Field(default=None, ge=0, le=MAX_IMAGE_ID, description="Search by a stored image (more like this).")
    positive: list[ExampleBody] | None = Field(
        default=None, min_length=1, max_length=MAX_EXAMPLES,
        description="Examples to be near; a result's explanation.example is a position here.")
    negative: list[ExampleBody] | None = Field(default=None, max_length=MAX_EXAMPLES, description="Examples to be far from.")

    @model_validator(mode="after")
    def _one_query(self) -> SearchBody:
        given = [self.text is not None, self.image_id is not None, self.positive is not None]
        if sum(given) != 1:
            raise ValueError("give exactly one of text, image_id or positive (or upload an image as multipart form data)")
        return self


class Word(BaseModel):
    word: str
    weight: float


class QueryInfo(BaseModel):
    words: list[Word]
    """The words the search starts from, with their weights."""
    unknown: list[str]
    """Words of a text query that are not in the norms (left out)."""


class Result(BaseModel):
    rank: int
    image_id: int
    label: str | None
    score: float | None
    thumbnail_url: str
    explanation: dict[str, Any]
    """example (the positive that led to it); iwan: distance and path (penalty and negative when a
    negative example pushed it down); hashes/exhaustive: hamming and cosine; fused: each member's
    rank; group_size and duplicates when duplicates are collapsed."""


class Timing(BaseModel):
    model: float
    """Turning the query into words/codes (decoding and the predictor for an image), ms."""
    search: float
    total: float


class SearchResponse(BaseModel):
    collection: str
    method: str
    query: QueryInfo
    results: list[Result]
    passed: int
    """How many results met min_score (all of them without one)."""
    timing_ms: Timing


class CollectionOut(BaseModel):
    name: str
    size: int
    predictor: str
    hash_model: str | None
    methods: list[str]
    default_method: str


class LabelCount(BaseModel):
    label: str
    count: int


class LabelsOut(BaseModel):
    labels: list[LabelCount]
    """The most frequent first, at most `limit` of them."""
    distinct: int
    """How many labels the collection has in all."""


class WordProbability(BaseModel):
    word: str
    probability: float


class ImageOut(BaseModel):
    image_id: int
    collections: list[str]
    label: str | None
    words: list[WordProbability]
    hash_code: str | None
    thumbnail_url: str


class Added(BaseModel):
    image_id: int
    file: str


class Skipped(BaseModel):
    file: str
    reason: str


class NearDuplicate(BaseModel):
    file: str
    image_id: int
    """The image stored from `file`."""
    of: int
    """The image the collection already held that it nearly duplicates."""


class AddResponse(BaseModel):
    added: list[Added]
    skipped: list[Skipped]
    near_duplicates: list[NearDuplicate]
    """Added images whose code and embedding are near-identical to an image held before (as
    collapse_duplicates compares them); empty for a collection without a hash model."""


class Status(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    loaded: list[str]
    pending: list[str]
    error: str | None = None


class Error(BaseModel):
    detail: Any
