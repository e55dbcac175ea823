"""The service's request and response shapes (its OpenAPI document is built from these)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from iwan.config import MAX_SEARCH_K, MAX_SEARCH_OFFSET, MAX_TEXT_QUERY_CHARS

MAX_IMAGE_ID = 2**31 - 1
"""Image ids are PostgreSQL integers; anything larger is refused before it reaches the database."""

ImageId = Field(ge=0, le=MAX_IMAGE_ID)


class SearchBody(BaseModel):
    """A JSON search: by words (`text`) or by a stored image (`image_id`), exactly one of them."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(
        default=None, min_length=1, max_length=MAX_TEXT_QUERY_CHARS,
        description='Words, plain ("cat dog") or weighted ("cat:0.8,dog:0.2").',
    )
    image_id: int | None = Field(default=None, ge=0, le=MAX_IMAGE_ID, description="Search by a stored image (more like this).")
    method: str | None = Field(default=None, max_length=40, description="iwan, hashes, exhaustive or fused (default: the collection's).")
    k: int | None = Field(default=None, ge=1, le=MAX_SEARCH_K, description="How many results (default 20).")
    offset: int | None = Field(default=None, ge=0, le=MAX_SEARCH_OFFSET, description="Results to skip, for paging.")

    @model_validator(mode="after")
    def _one_query(self) -> SearchBody:
        if (self.text is None) == (self.image_id is None):
            raise ValueError("give exactly one of text or image_id (or upload an image as multipart form data)")
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
    """iwan: distance and path; hashes/exhaustive: hamming and cosine; fused: each member's rank."""


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
    timing_ms: Timing


class CollectionOut(BaseModel):
    name: str
    size: int
    predictor: str
    hash_model: str | None
    methods: list[str]
    default_method: str


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


class AddResponse(BaseModel):
    added: list[Added]
    skipped: list[Skipped]


class Status(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    loaded: list[str]
    pending: list[str]
    error: str | None = None


class Error(BaseModel):
    detail: Any
