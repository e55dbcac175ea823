"""The HTTP contract of `iwan serve`, over a real collection in the embedded PostgreSQL."""

from __future__ import annotations

import dataclasses
import io
import re

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from livedata import png
from PIL import Image
from serving import make_collection

from iwan.config import settings
from iwan.serve import create_app

KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
N_IMAGES = 12

pytestmark = pytest.mark.usefixtures("in_module_home")


@pytest.fixture(scope="module")
def collection(module_database_url, module_home, one_torch_thread):
    engine = sa.create_engine(module_database_url)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IWAN_HOME", str(module_home))
        live = make_collection(engine, module_home, "pics", [(f"img{i}.png", png(i)) for i in range(N_IMAGES)], label="blob")
    yield live
    live.close()
    engine.dispose()


def jpeg(seed: int, size: int = 32) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(png(seed, size))).save(out, format="JPEG", quality=90)
    return out.getvalue()


def client_for(collection, **overrides) -> TestClient:
    configured = dataclasses.replace(settings(), **overrides)
    return TestClient(create_app(collection.engine, [collection], settings=configured))


@pytest.fixture(scope="module")
def client(collection, module_home):
    # The service reads uploaded files from its own settings' home: the collection's.
    with client_for(collection, api_key=KEY, home=module_home) as client:
        yield client


def search(client, body=None, files=None, data=None, name="pics", **params):
    if files is not None:
        return client.post(f"/v1/collections/{name}/search", files=files, data=data, params=params)
    return client.post(f"/v1/collections/{name}/search", json=body, params=params)


def upload(data: bytes, name="query.jpg", media="image/jpeg"):
    return {"image": (name, data, media)}


def test_health_readiness_and_collections(client, collection):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["loaded"] == ["pics"]
    [listed] = client.get("/v1/collections").json()
    assert listed == {"name": "pics", "size": N_IMAGES, "predictor": "efficientnet-lite0", "hash_model": "tiny-hash",
                      "methods": ["iwan", "exhaustive", "hashes", "fused"], "default_method": "fused"}


def test_readyz_is_503_until_loaded_and_when_a_collection_fails(collection):
    failing = create_app(collection.engine, load=["no-such-collection"])
    with TestClient(failing) as client:
        for _ in range(200):
            answer = client.get("/readyz")
            if answer.json()["status"] != "loading":
                break
        assert answer.status_code == 503 and answer.json()["status"] == "failed"
        assert "no-such-collection" in answer.json()["error"]
        assert client.post("/v1/collections/no-such-collection/search", json={"text": "cat"}).status_code == 503


def test_readyz_turns_200_once_the_collection_and_its_models_are_loaded(collection):
    import time

    with TestClient(create_app(collection.engine, load=["pics"])) as client:
        first = client.get("/readyz")
        assert first.status_code == 503 and first.json() == {"status": "loading", "loaded": [], "pending": ["pics"],
                                                             "error": None}
        assert client.get("/healthz").status_code == 200
        deadline = time.monotonic() + 120
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").json()
            time.sleep(0.1)
        assert client.get("/v1/collections").json()[0]["size"] == N_IMAGES


def test_search_by_uploaded_image(client, collection):
    answer = search(client, files=upload(png(3), "q.png", "image/png"), k=5)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["collection"] == "pics" and body["method"] == "fused"
    assert body["query"]["words"] and all(w["weight"] > 0 for w in body["query"]["words"])
    results = body["results"]
    assert [r["rank"] for r in results] == [1, 2, 3, 4, 5]
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    assert all(r["label"] == "blob" for r in results)
    assert all(r["explanation"]["ranks"] and set(r["explanation"]["ranks"]) <= {"iwan", "exhaustive", "hashes"}
               for r in results)
    assert set(body["timing_ms"]) == {"model", "search", "total"}
    assert body["timing_ms"]["total"] >= body["timing_ms"]["search"]
    thumb = client.get(results[0]["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    # a browser may keep it but asks again (a delete must reach it): private, no-cache, an ETag, 304
    assert thumb.headers["cache-control"] == "private, no-cache" and thumb.headers["etag"]
    again = client.get(results[0]["thumbnail_url"], headers={"If-None-Match": thumb.headers["etag"]})
    assert again.status_code == 304 and not again.content and again.headers["etag"] == thumb.headers["etag"]
    Image.open(io.BytesIO(thumb.content)).verify()


@pytest.mark.parametrize("method", ["iwan", "exhaustive", "hashes", "fused"])
def test_every_method_explains_its_results(client, collection, method):
    """The query is a stored image's own bytes: it comes first, and the explanation says why."""
    body = search(client, files=upload(png(3), "q.png", "image/png"), method=method, k=N_IMAGES).json()
    assert body["method"] == method and len(body["results"]) >= 2
    mine = next(r for r in body["results"] if r["image_id"] == int(collection.image_ids[3]))
    why = mine["explanation"]
    if method in ("exhaustive", "hashes"):
        assert mine["rank"] == 1 and why["hamming"] == 0 and why["cosine"] == pytest.approx(1.0, abs=1e-5)
    if method == "iwan":  # ranked by word-path distance: the query's words lead to the image
        words = {w["word"] for w in body["query"]["words"]}
        assert why["path"][0] in words and why["path"][-1] == f"image {mine['image_id']}" and why["distance"] > 0
        assert mine["score"] == pytest.approx(-why["distance"])
    if method == "fused":
        assert why["ranks"]["hashes"] == 1 and "path" in why


def test_search_by_text_names_unknown_words(client):
    body = search(client, {"text": "goldfish:0.8, ostrich:0.2, qwzx", "method": "iwan"}, k=3).json()
    assert [(w["word"], w["weight"]) for w in body["query"]["words"]] == [("GOLDFISH", 0.8), ("OSTRICH", 0.2)]
    assert body["query"]["unknown"] == ["qwzx"]
    assert len(body["results"]) == 3
    assert body["results"][0]["explanation"]["path"][0] in ("GOLDFISH", "OSTRICH")
    # words are searched by IWAN in a collection whose default (fused) needs an image
    default = search(client, {"text": "goldfish"}, k=3).json()
    assert default["method"] == "iwan" and len(default["results"]) == 3
    refused = search(client, {"text": "goldfish", "method": "fused"})
    assert refused.status_code == 422 and "needs an image query" in refused.json()["detail"]
    answer = search(client, {"text": "qwzx blorf"})
    assert answer.status_code == 422 and "qwzx" in answer.text and "blorf" in answer.text


def test_more_like_this_leaves_the_image_out_and_pages(client, collection):
    first = int(collection.image_ids[0])
    body = search(client, {"image_id": first, "k": 10}).json()
    ids = [r["image_id"] for r in body["results"]]
    assert first not in ids and len(ids) == min(10, N_IMAGES - 1)
    page = search(client, {"image_id": first, "k": 4, "offset": 4}).json()
    assert [r["image_id"] for r in page["results"]] == ids[4:8]
    assert [r["rank"] for r in page["results"]] == [5, 6, 7, 8]
    # query parameters work as well as body fields
    assert [r["image_id"] for r in search(client, {"image_id": first}, k=4, offset=4).json()["results"]] == ids[4:8]


def test_image_record(client, collection):
    image_id = int(collection.image_ids[1])
    body = client.get(f"/v1/images/{image_id}").json()
    assert body["image_id"] == image_id and body["collections"] == ["pics"] and body["label"] == "blob"
    assert body["words"] and 0 < body["words"][0]["probability"] <= 1
    assert client.get("/v1/images/999999").status_code == 404
    assert client.get("/v1/images/999999/thumbnail").status_code == 404


@pytest.mark.parametrize(
    ("body", "params", "status"),
    [
        ({"text": "goldfish", "k": 0}, {}, 422),
        ({"text": "goldfish", "k": 1001}, {}, 422),
        ({"text": "goldfish"}, {"k": 1001}, 422),
        ({"text": "goldfish", "offset": -1}, {}, 422),
        ({"text": "goldfish", "offset": 10_001}, {}, 422),
        ({"text": "goldfish", "method": "hashes"}, {}, 422),
        ({"text": "goldfish"}, {"method": "nope"}, 422),
        ({"text": "goldfish", "image_id": 1}, {}, 422),
        ({}, {}, 422),
        ({"text": "goldfish", "colour": "red"}, {}, 422),
        ({"text": "gold\u0000fish"}, {}, 422),
        ({"text": "goldfish:1e-320"}, {}, 422),  # a cost 1/weight that overflows
        ({"image_id": 2**40}, {}, 422),
        ({"image_id": 999_999}, {}, 404),
    ],
)
def test_out_of_range_and_unknown(client, body, params, status):
    answer = search(client, body, **params)
    assert answer.status_code == status, answer.text
    assert answer.json()["detail"]


def test_unknown_collection_is_404(client):
    answer = search(client, {"text": "cat"}, name="nope")
    assert answer.status_code == 404 and "nope" in answer.json()["detail"]


def test_bodies_that_are_not_json_or_images(client):
    assert client.post("/v1/collections/pics/search", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
    assert client.post("/v1/collections/pics/search", content=b"cat", headers={"content-type": "text/plain"}).status_code == 415
    answer = search(client, files=upload(b"GIF89a but not really", "x.gif", "image/gif"))
    assert answer.status_code == 415 and "x.gif" in answer.json()["detail"]
    answer = search(client, files=upload(b"%PDF-1.4 hello", "doc.pdf", "application/pdf"))
    assert answer.status_code == 415
    truncated = jpeg(5, size=64)[:200]
    assert search(client, files=upload(truncated)).status_code == 415
    assert search(client, files={"picture": ("q.jpg", jpeg(1), "image/jpeg")}).status_code == 422
    assert search(client, files=upload(jpeg(1)), data={"k": "0"}).status_code == 422


def test_body_over_10_mib_is_413(client):
    big = b"x" * (10 * 1024 * 1024 + 1)
    assert search(client, files=upload(big)).status_code == 413

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(11):
            yield b"y" * (1024 * 1024)

    answer = client.post("/v1/collections/pics/search", content=chunks(), headers={"content-type": "application/json"})
    assert answer.status_code == 413


def test_image_over_the_pixel_limit_is_413_before_decoding(client, collection):
    out = io.BytesIO()
    Image.new("1", (8000, 5001)).save(out, format="PNG")  # 40.008 MP, a few kB compressed
    answer = search(client, files=upload(out.getvalue(), "huge.png", "image/png"))
    assert answer.status_code == 413 and "8000x5001" in answer.json()["detail"]
    # the limit is a setting: a 64x64 image against a 1,000-pixel limit
    with client_for(collection, max_image_pixels=1000) as small:
        assert search(small, files=upload(jpeg(2, size=64))).status_code == 413
        assert search(small, files=upload(jpeg(2, size=16))).status_code == 200
        assert small.post("/v1/collections/pics/images", files=[("images", ("big.jpg", jpeg(2, size=64), "image/jpeg"))],
                          headers=AUTH).status_code in (403, 413)


def test_writes_are_refused_without_a_configured_key(collection):
    with client_for(collection, api_key=None) as client:
        answer = client.post("/v1/collections/pics/images", files=[("images", ("a.jpg", jpeg(100), "image/jpeg"))], headers=AUTH)
        assert answer.status_code == 403 and "IWAN_API_KEY" in answer.json()["detail"]
        assert client.delete(f"/v1/images/{int(collection.image_ids[0])}", headers=AUTH).status_code == 403
    assert collection.size == N_IMAGES


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"},
                                     {"Authorization": f"Bearer {KEY}x"}])
def test_writes_need_the_key(client, collection, headers):
    answer = client.post("/v1/collections/pics/images", files=[("images", ("a.jpg", jpeg(101), "image/jpeg"))], headers=headers)
    assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
    assert client.delete(f"/v1/images/{int(collection.image_ids[0])}", headers=headers).status_code == 401
    assert collection.size == N_IMAGES


def test_add_is_searchable_at_once_and_delete_is_gone_at_once(client, collection):
    new = jpeg(200)
    files = [("images", ("new.jpg", new, "image/jpeg")), ("images", ("notes.txt", b"hello", "text/plain")),
             ("images", ("../../etc/again.jpg", new, "image/jpeg"))]
    answer = client.post("/v1/collections/pics/images", files=files, data={"label": "fresh"}, headers=AUTH)
    assert answer.status_code == 201, answer.text
    body = answer.json()
    [added] = body["added"]
    assert added["file"] == "new.jpg"
    skipped = {s["file"]: s["reason"] for s in body["skipped"]}
    assert set(skipped) == {"notes.txt", "again.jpg"}, skipped
    image_id = added["image_id"]
    try:
        found = search(client, files=upload(new), k=1, method="exhaustive").json()["results"]
        assert found[0]["image_id"] == image_id and found[0]["label"] == "fresh"
        assert client.get(f"/v1/images/{image_id}").json()["label"] == "fresh"
        assert client.get("/v1/collections").json()[0]["size"] == N_IMAGES + 1
    finally:
        assert client.delete(f"/v1/images/{image_id}", headers=AUTH).status_code == 204
    after = search(client, files=upload(new), k=50, method="exhaustive").json()["results"]
    assert image_id not in [r["image_id"] for r in after]
    assert search(client, {"image_id": image_id}).status_code == 404
    assert client.delete(f"/v1/images/{image_id}", headers=AUTH).status_code == 404


def test_add_with_nothing_acceptable(client):
    answer = client.post("/v1/collections/pics/images", files=[("images", ("a.txt", b"text", "text/plain"))], headers=AUTH)
    assert answer.status_code == 415
    assert client.post("/v1/collections/nope/images", files=[("images", ("a.jpg", jpeg(1), "image/jpeg"))],
                       headers=AUTH).status_code == 404


def test_metrics(client):
    search(client, {"image_id": int(client.app.state.service.collections["pics"].image_ids[0])})
    text = client.get("/metrics").text
    assert re.search(r'iwan_http_requests_total\{endpoint="/v1/collections/\{name\}/search",method="POST",status="200"\} [1-9]', text)
    assert 'iwan_http_request_duration_seconds_bucket{endpoint="/v1/collections/{name}/search"' in text
    assert re.search(r'iwan_collection_images\{collection="pics"\} 12\.0', text)
    assert 'iwan_search_duration_seconds_count{collection="pics",method="fused"}' in text


def test_openapi_docs_and_page_need_no_other_site(client):
    schema = client.get("/openapi.json").json()
    search_body = schema["paths"]["/v1/collections/{name}/search"]["post"]["requestBody"]["content"]
    assert set(search_body) == {"application/json", "multipart/form-data"}
    for path in ("/", "/docs", "/static/app.js", "/static/style.css", "/static/docs.js"):
        answer = client.get(path)
        assert answer.status_code == 200
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", answer.text, re.IGNORECASE), path
    assert "default-src 'self'" in client.get("/").headers["content-security-policy"]
    for asset in re.findall(r'(?:src|href)="(/docs/assets/[^"]+)"', client.get("/docs").text):
        assert client.get(asset).status_code == 200


def test_no_cors_unless_asked(collection, client):
    origin = {"Origin": "http://elsewhere.example"}
    assert "access-control-allow-origin" not in client.get("/v1/collections", headers=origin).headers
    with client_for(collection, cors_origins=("http://elsewhere.example",)) as allowed:
        answer = allowed.get("/v1/collections", headers=origin)
        assert answer.headers["access-control-allow-origin"] == "http://elsewhere.example"
