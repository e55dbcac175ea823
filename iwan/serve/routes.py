"""The HTTP endpoints (the contract of `iwan serve`)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import unicodedata
from contextlib import contextmanager
from typing import Annotated, Any, cast

import numpy as np
from fastapi import (
    APIRouter,
    Depends,
    File,
    Form,
    HTTPException,
    Path,
    Query,
    Request,
    Response,
    UploadFile,
)
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import DBAPIError
from starlette.datastructures import UploadFile as FormFile

from iwan.collections.pipeline import Example, SearchRequest, check_text, finite
from iwan.config import DEFAULT_K, MAX_EXAMPLES, MAX_LABEL_FILTERS, MAX_SEARCH_K, MAX_SEARCH_OFFSET
from iwan.db.engine import DatabaseError
from iwan.serve import models
from iwan.serve.limits import JsonRefused, strict_json
from iwan.serve.service import RETRY_AFTER_S, STATIC, Service, Thumbnail
from iwan.vision.decode import ImageBusy, ImageRefused, decode_thumbnail, open_checked

log = logging.getLogger(__name__)
router = APIRouter()
THUMBNAIL_PIXELS = 256
MAX_LABEL_CHARS = 200
MAX_FILES = 1000
DEFAULT_LABELS_LISTED = 1000
MAX_LABELS_LISTED = 10_000

PAGE_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
DOCS_POLICY = PAGE_POLICY.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")


def _error(status: int, description: str) -> dict:
    return {status: {"model": models.Error, "description": description}}


UNAVAILABLE = _error(503, "The database is down (writes; retry after Retry-After seconds) or the collection is still loading")
UNKNOWN = _error(404, "Unknown collection or image")
INVALID = _error(422, "A field out of range, an unknown method, or a text query with no known word")


async def service_of(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(service_of)]
CollectionName = Annotated[str, Path(min_length=1, max_length=200, description="A served collection")]
ImageIdPath = Annotated[int, Path(ge=0, le=models.MAX_IMAGE_ID)]
bearer = HTTPBearer(auto_error=False, description="IWAN_API_KEY, the server's write key")


async def require_key(
    service: ServiceDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    """Writes need `Authorization: Bearer <IWAN_API_KEY>`; with no key configured they are refused."""
    key = service.settings.api_key
    if key is None:
        raise HTTPException(403, "writes are disabled: start the server with IWAN_API_KEY set to allow them")
    given = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), key.encode("utf-8", "surrogateescape")):
        raise HTTPException(401, "a write needs the header Authorization: Bearer <IWAN_API_KEY>",
                            headers={"WWW-Authenticate": "Bearer"})


KEYED = {**_error(401, "Missing or wrong key"), **_error(403, "Writes are disabled: no IWAN_API_KEY on the server")}


@contextmanager
def _answers():
    """Known failures of the engine, as HTTP answers: bad input 422, unknown 404, database down 503."""
    try:
        yield
    except ImageRefused as err:
        raise HTTPException(err.status, str(err)) from None
    except ImageBusy as err:
        raise HTTPException(503, str(err), headers={"Retry-After": str(err.retry_after)}) from None
    except (DatabaseError, DBAPIError) as err:
        # The detail (a socket's path, a host, a connection string) is for the operator's log only.
        log.warning("iwan serve: the database is unavailable: %s", _first_line(err))
        raise HTTPException(503, DATABASE_UNAVAILABLE, headers={"Retry-After": str(RETRY_AFTER_S)}) from None
    except LookupError as err:
        raise HTTPException(404, _first_line(err)) from None
    except ValueError as err:
        raise HTTPException(422, _first_line(err)) from None


DATABASE_UNAVAILABLE = f"the database is unavailable; retry in {RETRY_AFTER_S} seconds"


def _first_line(err: Exception) -> str:
    text = str(err).strip().strip("'\"")
    return text.splitlines()[0] if text else type(err).__name__


# Health, readiness, metrics -------------------------------------------------------------------

@router.get("/healthz", response_model=models.Status, tags=["operations"])
@router.head("/healthz", include_in_schema=False)
async def healthz() -> models.Status:
    """200 while the process runs."""
    return models.Status(status="ok")


@router.get("/readyz", response_model=models.Readiness, tags=["operations"],
            responses={503: {"model": models.Readiness, "description": "Collections still loading, or one failed"}})
@router.head("/readyz", include_in_schema=False)
async def readyz(service: ServiceDep, response: Response) -> models.Readiness:
    """200 once every collection is loaded; 503 before (or when one failed to load)."""
    status = "ready" if service.ready else ("failed" if service.error else "loading")
    if not service.ready:
        response.status_code = 503
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return models.Readiness(status=status, loaded=sorted(service.collections), pending=list(service.pending),
                            error=service.error)


@router.get("/metrics", tags=["operations"], response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text"}})
async def metrics(service: ServiceDep) -> Response:
    """Prometheus text: requests and latency per endpoint and method, collection sizes."""
    return Response(service.metrics.text(), media_type=CONTENT_TYPE_LATEST)


# Collections and search -----------------------------------------------------------------------

@router.get("/v1/collections", response_model=list[models.CollectionOut], tags=["search"])
async def list_served(service: ServiceDep) -> list[models.CollectionOut]:
    """The collections this server serves (loaded ones)."""
    return [
        models.CollectionOut(name=c.name, size=c.size, predictor=c.predictor, hash_model=c.hash_model,
                             methods=list(c.methods), default_method=c.default_method)
        for c in sorted(service.collections.values(), key=lambda c: c.name)
    ]


@router.get("/v1/collections/{name}/labels", response_model=models.LabelsOut, tags=["search"], responses={**UNKNOWN})
def collection_labels(
    name: CollectionName,
    service: ServiceDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LABELS_LISTED, description="How many labels at most")] = DEFAULT_LABELS_LISTED,
) -> models.LabelsOut:
    """The labels of the collection's images with how many carry each, the most frequent first:
    what a search's `labels` and `exclude_labels` choose from. (A thread: the first call after a
    change counts the labels of every image.)"""
    counts = service.collection(name).label_counts()
    return models.LabelsOut(labels=[models.LabelCount(label=label, count=n) for label, n in counts[:limit]],
                            distinct=len(counts))


SearchForm = models.SearchFilters
"""The fields of a multipart search (the images travel beside them)."""
FORM_LISTS = ("labels", "exclude_labels")
"""Multipart fields that may repeat, one label each."""
UPLOADED = ("image", "positive", "negative")
"""Multipart parts holding examples: `image` one uploaded image; `positive` and `negative` an
uploaded image each, or a JSON example ({"image_id": N} or {"text": "..."}), in their order."""


def _search_body_doc() -> dict:
    form = SearchForm.model_json_schema()
    image = {"type": "string", "format": "binary"}
    form["properties"]["image"] = {**image, "description": "A query image (the one-positive case)"}
    for name in ("positive", "negative"):
        form["properties"][name] = {"type": "array", "maxItems": MAX_EXAMPLES, "items": image, "description":
                                    f"{name.capitalize()} examples: image files, or JSON examples "
                                    '({"image_id": N} or {"text": "..."}) as text parts'}
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": models.SearchBody.model_json_schema()},
        "multipart/form-data": {"schema": form},
    }}}


@router.post(
    "/v1/collections/{name}/search", response_model=models.SearchResponse, tags=["search"],
    openapi_extra=_search_body_doc(),
    responses={**UNKNOWN, **INVALID, **UNAVAILABLE, **_error(400, "A malformed multipart body"),
               **_error(413, "Body over 10 MiB or image over the pixel limit"),
               **_error(415, "Not an image, or a body neither JSON nor multipart")},
)
async def search(
    name: CollectionName,
    request: Request,
    service: ServiceDep,
    method: Annotated[str | None, Query(max_length=40)] = None,
    k: Annotated[int | None, Query(ge=1, le=MAX_SEARCH_K)] = None,
    offset: Annotated[int | None, Query(ge=0, le=MAX_SEARCH_OFFSET)] = None,
) -> dict[str, Any]:
    """Search by an uploaded image (multipart `image`), by words (JSON `text`), by a stored image
    (JSON `image_id`), or by `positive` and `negative` examples (JSON lists of {"image_id": N} or
    {"text": "..."}; multipart parts of those names: image files or JSON examples). `min_score`,
    `labels`, `exclude_labels` and `collapse_duplicates` cut the results. `method`, `k`, `offset`
    may come as query parameters or body fields."""
    collection = service.collection(name)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    uploaded = False
    if content_type == "application/json":
        try:
            payload = strict_json(await request.body())
        except JsonRefused as err:
            raise HTTPException(422, str(err)) from None
        body: models.SearchFilters = _validated(models.SearchBody, payload, "body")
        with _answers():
            examples = _json_examples(cast(models.SearchBody, body))
    elif content_type == "multipart/form-data":
        async with request.form(max_files=1 + 2 * MAX_EXAMPLES, max_fields=20 + 2 * MAX_LABEL_FILTERS) as form:
            with _answers():
                body, examples = await _form_examples(form)
        uploaded = any(e.image is not None for e in examples["positive"] + examples["negative"])
    else:
        raise HTTPException(415, "send JSON ({\"text\": ...}, {\"image_id\": ...} or {\"positive\": [...]}) or "
                                 "multipart form data with an image")
    with _answers():
        query = SearchRequest(
            positive=examples["positive"], negative=examples["negative"],
            method=body.method or method, k=body.k or k or DEFAULT_K,
            offset=body.offset if body.offset is not None else (offset or 0),
            min_score=body.min_score, labels=body.labels, exclude_labels=body.exclude_labels,
            collapse_duplicates=body.collapse_duplicates,
        )
    if not uploaded:  # words or stored images: well under a millisecond, cheaper than a thread hop
        return _search(service, collection, query)
    return await run_in_threadpool(_search, service, collection, query)


def _json_examples(body: models.SearchBody) -> dict[str, list[Example]]:
    if body.positive is None:
        positive = [Example(text=body.text, image_id=body.image_id)]
    else:
        positive = [Example(text=e.text, image_id=e.image_id) for e in body.positive]
    return {"positive": positive, "negative": [Example(text=e.text, image_id=e.image_id) for e in body.negative or []]}


async def _form_examples(form) -> tuple[models.SearchFilters, dict[str, list[Example]]]:
    """The form's fields and its examples, in the order they were sent."""
    fields: dict[str, Any] = {}
    examples: dict[str, list[Example]] = {"image": [], "positive": [], "negative": []}
    for key, value in form.multi_items():
        if key in UPLOADED:
            if isinstance(value, FormFile):
                examples[key].append(Example(image=await value.read(), image_name=_file_name(value.filename, 0)))
            elif key == "image":
                raise RequestValidationError([{"type": "value_error", "loc": ("body", "image"),
                                               "msg": "the field 'image' holds an image file"}])
            else:
                try:
                    payload = strict_json(value.encode())
                except JsonRefused as err:
                    raise HTTPException(422, f"{key}: {err}") from None
                given = _validated(models.ExampleBody, payload, key)
                examples[key].append(Example(text=given.text, image_id=given.image_id))
        elif key in FORM_LISTS:
            fields.setdefault(key, []).append(value)
        elif key in fields:
            raise RequestValidationError([{"type": "value_error", "loc": ("body", key), "msg": f"{key} is given twice"}])
        else:
            fields[key] = value
    body = _validated(SearchForm, fields, "body")
    if bool(examples["image"]) == bool(examples["positive"]) or len(examples["image"]) > 1:
        raise RequestValidationError([{"type": "missing", "loc": ("body", "image"), "msg":
                                       "a multipart search needs one image file in the field 'image', or "
                                       "examples in the fields 'positive' (and 'negative')"}])
    for key in ("positive", "negative"):
        if len(examples[key]) > MAX_EXAMPLES:
            raise RequestValidationError([{"type": "too_long", "loc": ("body", key),
                                           "msg": f"{len(examples[key])} {key} examples: give at most {MAX_EXAMPLES}"}])
    return body, {"positive": examples["image"] or examples["positive"], "negative": examples["negative"]}


def _validated(model: type[BaseModel], payload, where: str):
    try:
        return model.model_validate(payload)
    except ValidationError as err:
        raise RequestValidationError(
            [{**e, "loc": (where, *e["loc"])} for e in err.errors(include_url=False, include_context=False)]
        ) from None


def _search(service: Service, collection, query: SearchRequest) -> dict[str, Any]:
    """Parsed, searched once by the pipeline, rendered (validated once, by the route's response_model)."""
    from iwan.collections.pipeline import search

    with _answers():
        result = search(collection, query, service.policy, service.budget)
    service.metrics.searches.labels(collection.name, result.method).observe(result.timing_ms["search"] / 1e3)
    return result.as_dict()


# Images ---------------------------------------------------------------------------------------

@router.get("/v1/images/{image_id}", response_model=models.ImageOut, tags=["images"], responses={**UNKNOWN, **UNAVAILABLE})
def image(image_id: ImageIdPath, service: ServiceDep) -> models.ImageOut:
    """A stored image: its collections, label, top words with probabilities, hash code (hex);
    404 unless a collection this server serves holds it."""
    from iwan.collections.live import image_record

    with _answers():
        record = image_record(service.engine, image_id)
        service.check_served(image_id, record["collections"])
    return models.ImageOut(
        image_id=record["image_id"], collections=list(record["collections"]), label=record["label"],
        words=[models.WordProbability(word=w["word"], probability=finite(w["probability"]) or 0.0) for w in record["words"]],
        hash_code=record["hash_code"], thumbnail_url=f"/v1/images/{image_id}/thumbnail",
    )


@router.get("/v1/images/{image_id}/thumbnail", tags=["images"], response_class=Response,
            responses={200: {"content": {"image/jpeg": {}, "image/png": {}},
                             "description": "The image; revalidate with its ETag (If-None-Match)"},
                       304: {"description": "If-None-Match names the image's current ETag"},
                       **UNKNOWN, **UNAVAILABLE})
def thumbnail(image_id: ImageIdPath, request: Request, service: ServiceDep) -> Response:
    """The image, at most 256 pixels a side; 404 unless a collection this server serves holds it.

    Every answer is checked against the database first, so a deleted image is gone from every
    server at once; browsers may keep it but revalidate (`private, no-cache` and an ETag: 304)."""
    from iwan.db.collections import image_row

    with _answers():
        row = image_row(service.engine, image_id)
        service.check_served(image_id, row["collections"])
        source = (row["sha256"], row["path"])
        found = service.thumbnails.get(image_id, source)
        if found is None:
            data, media_type = _thumbnail(service, image_id)
            found = Thumbnail(source, data, media_type, f'"{hashlib.sha256(data).hexdigest()[:32]}"')
            service.thumbnails.put(image_id, found)
    headers = {"Cache-Control": "private, no-cache", "ETag": found.etag}
    if _matches(request.headers.get("if-none-match"), found.etag):
        return Response(status_code=304, headers=headers)
    return Response(found.data, media_type=found.media_type, headers=headers)


def _matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an If-None-Match header names `etag` (weakly, as RFC 9110 compares for GET) or is *."""
    if not if_none_match:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


def _thumbnail(service: Service, image_id: int) -> tuple[bytes, str]:
    from iwan.collections.live import image_file

    data, _ = image_file(service.engine, image_id, settings=service.settings)
    return decode_thumbnail(data, f"image {image_id}", service.policy, THUMBNAIL_PIXELS, service.budget)


@router.post("/v1/collections/{name}/images", status_code=201, response_model=models.AddResponse, tags=["images"],
             dependencies=[Depends(require_key)],
             responses={**KEYED, **UNKNOWN, **UNAVAILABLE, **INVALID, **_error(400, "A malformed multipart body"),
                        **_error(413, "Body over 10 MiB, or every image over the pixel limit"),
                        **_error(415, "No file is an image")})
async def add_images(
    name: CollectionName,
    service: ServiceDep,
    images: Annotated[list[UploadFile], File(description="Image files (JPEG, PNG, GIF, BMP, WebP, TIFF)")],
    label: Annotated[str | None, Form(max_length=MAX_LABEL_CHARS)] = None,
) -> models.AddResponse:
    """Add images (searchable at once). A file that is not an image is skipped with the reason."""
    collection = service.collection(name)
    if len(images) > MAX_FILES:
        raise HTTPException(422, f"{len(images)} files in one request; send at most {MAX_FILES}")
    files = [(_file_name(upload.filename, i), await upload.read()) for i, upload in enumerate(images)]
    return await run_in_threadpool(_add, service, collection, files, label)


def _add(service: Service, collection, files: list[tuple[str, bytes]], label: str | None) -> models.AddResponse:
    accepted, skipped, refusals = [], [], []
    for file_name, data in files:
        try:
            open_checked(data, file_name, service.policy).close()
            accepted.append((file_name, data))
        except ImageRefused as err:
            refusals.append(err.status)
            skipped.append(models.Skipped(file=file_name, reason=str(err)))
    if not accepted:
        raise HTTPException(413 if 413 in refusals else 415, "; ".join(s.reason for s in skipped) or "no files")
    with _answers():
        if label is not None:
            check_text(label, "label")
        report = collection.add_files(accepted, label=label, policy=service.policy, budget=service.budget)
    return models.AddResponse(
        added=[models.Added(image_id=int(i), file=f) for i, f in report.added],
        skipped=skipped + [models.Skipped(file=f, reason=r) for f, r in report.skipped],
        near_duplicates=[models.NearDuplicate(file=f, image_id=int(i), of=int(o)) for f, i, o in report.near_duplicates],
    )


def _file_name(given: str | None, position: int) -> str:
    """A file name for reports only: its last path part, printable, short."""
    base = (given or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in base if unicodedata.category(c)[0] != "C")[:200]
    return base or f"file {position + 1}"


@router.delete("/v1/images/{image_id}", status_code=204, response_class=Response, tags=["images"],
               dependencies=[Depends(require_key)], responses={**KEYED, **UNKNOWN, **UNAVAILABLE})
def delete_image(image_id: ImageIdPath, service: ServiceDep) -> Response:
    """Remove an image from every served collection holding it; gone from results at once."""
    from iwan.collections.live import collections_of

    with _answers():
        holding = [n for n in collections_of(service.engine, image_id) if n in service.collections]
        if not holding:
            raise LookupError(f"image {image_id} is in none of the collections this server serves")
        for collection_name in holding:
            service.collections[collection_name].remove(np.array([image_id], dtype=np.int64))
    service.thumbnails.evict(image_id)
    return Response(status_code=204)


# The web page and the API docs ----------------------------------------------------------------

@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_POLICY})


@router.api_route("/docs", methods=["GET", "HEAD"], include_in_schema=False)
async def docs() -> FileResponse:
    return FileResponse(STATIC / "docs.html", headers={"Content-Security-Policy": DOCS_POLICY})
