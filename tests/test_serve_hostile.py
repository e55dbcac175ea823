"""The service under attack (issue 16): hostile JSON never makes a 500 and every answer is JSON;
a deleted image is gone from every server and every cache; PostgreSQL is not published beyond
this machine. Over a real collection in the embedded PostgreSQL."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import socket
import time

import httpx
import livedata
import pytest
import sqlalchemy as sa
from fastapi.exceptions import RequestValidationError
from fastapi.testclient import TestClient
from livedata import png
from PIL import Image
from serving import blob_collection, running

from iwan.config import settings
from iwan.serve import create_app
from iwan.serve.limits import MAX_JSON_DEPTH, JsonRefused, strict_json

KEY = "hostile-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
JSON = {"content-type": "application/json"}
DEEP = 100_000

pytestmark = pytest.mark.usefixtures("in_module_home")


@pytest.fixture(scope="module")
def engine(module_engine):
    return module_engine


@pytest.fixture(scope="module")
def collection(engine, module_home, one_torch_thread):
    with blob_collection(engine, module_home, "pics", 6) as live:
        yield live


@pytest.fixture(scope="module")
def other(engine, module_home, collection):
    """A second collection in the same database, which the servers below do not serve."""
    from iwan.collections.live import LiveCollection, create_collection

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IWAN_HOME", str(module_home))
        create_collection(engine, "other", livedata.PREDICTOR, hash_model=livedata.HASH_MODEL)
        live = LiveCollection.open(engine, "other", encoder=livedata.tiny_encoder())
        [(image_id, _)] = live.add_files([("elsewhere.png", png(77))], label="hidden").added
    yield live, int(image_id)
    live.close()


def app_for(engine, *collections, home):
    configured = dataclasses.replace(settings(), api_key=KEY, home=home)
    return create_app(engine, list(collections), settings=configured)


@pytest.fixture(scope="module")
def client(engine, collection, module_home):
    # A 500 comes back as an answer (not raised in the test), so that the tests can say it was one.
    with TestClient(app_for(engine, collection, home=module_home), raise_server_exceptions=False) as client:
        yield client


def jpeg(seed: int, size: int = 32) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(png(seed, size))).save(out, format="JPEG", quality=90)
    return out.getvalue()


# 1. Hostile JSON bodies -----------------------------------------------------------------------

HOSTILE = {
    "NaN in a field": b'{"text": NaN}',
    "NaN as k": b'{"text": "goldfish", "k": NaN}',
    "Infinity": b'{"image_id": Infinity}',
    "-Infinity": b'{"text": "goldfish", "offset": -Infinity}',
    "1e309 overflows to inf": b'{"text": "goldfish", "k": 1e309}',
    "-1e309": b'{"image_id": -1e309}',
    "a bare NaN": b"NaN",
    "Infinity in an array": b"[Infinity, 1]",
    "a lone high surrogate": b'{"text": "\\ud800"}',
    "a lone low surrogate in a method": b'{"text": "goldfish", "method": "x\\udc80"}',
    "a lone surrogate as a key": b'{"text": "goldfish", "\\udfff": 1}',
    "a surrogate as UTF-8 bytes": b'{"text": "\xed\xa0\x80"}',
    "arrays 100,000 deep": b"[" * DEEP + b"]" * DEEP,
    "objects 100,000 deep": b'{"a": ' * DEEP + b"1" + b"}" * DEEP,
    "deep arrays in a field": b'{"text": "goldfish", "k": ' + b"[" * DEEP + b"]" * DEEP + b"}",
    "deep and unclosed": b"[" * DEEP,
    "one level too deep": b'{"text": "goldfish", "k": ' + b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH + b"}",
    "a 5,000-digit integer": b'{"text": "goldfish", "k": 1' + b"0" * 5000 + b"}",
    "an unterminated string of escapes": b'"' + b'\\"' * 500_000,
    "not UTF-8": b'{"text": "\xff\xfe"}',
}


def _answered_in_json(answer) -> dict:
    assert answer.status_code < 500, (answer.status_code, answer.text[:300])
    assert answer.headers["content-type"] == "application/json"
    return json.loads(answer.text)  # RFC 8259: no NaN, and UTF-8 that decodes


@pytest.mark.parametrize("body", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_json_is_refused_in_json_never_a_500(client, body):
    answer = client.post("/v1/collections/pics/search", content=body, headers=JSON)
    assert answer.status_code in (400, 422), answer.text[:300]
    assert _answered_in_json(answer)["detail"]
    # the add endpoint takes multipart only: JSON there is refused as well, in JSON
    added = client.post("/v1/collections/pics/images", content=body, headers={**JSON, **AUTH})
    assert added.status_code in (400, 415, 422), added.text[:300]
    _answered_in_json(added)


def test_json_within_the_limits_is_still_answered(client):
    nested = b"[" * (MAX_JSON_DEPTH - 1) + b"]" * (MAX_JSON_DEPTH - 1)
    answer = client.post("/v1/collections/pics/search", content=b'{"text": "goldfish", "k": ' + nested + b"}", headers=JSON)
    assert answer.status_code == 422  # not a number: refused by the model, echoing the (shortened) input
    assert _answered_in_json(answer)["detail"][0]["loc"] == ["body", "k"]
    brackets_in_a_string = json.dumps({"text": "goldfish " + "[" * 1000, "k": 2, "method": "iwan"}).encode()
    assert client.post("/v1/collections/pics/search", content=brackets_in_a_string, headers=JSON).status_code in (200, 422)
    pair = json.dumps({"text": "goldfish \U0001f41f", "k": 2, "method": "iwan"}).encode()  # a surrogate pair is fine
    answer = client.post("/v1/collections/pics/search", content=pair, headers=JSON)
    assert answer.status_code in (200, 422) and "not valid JSON" not in answer.text
    assert client.post("/v1/collections/pics/search", content=b'\xef\xbb\xbf{"text": "goldfish", "k": 1.0e0}',
                       headers=JSON).status_code in (200, 422)


def test_strict_json():
    assert strict_json(b'{"a": [1, 2.5, -0.0, 1e308], "b": "\\ud83d\\udc1f ]}["}') == \
        {"a": [1, 2.5, -0.0, 1e308], "b": "\U0001f41f ]}["}
    assert strict_json(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH)
    for body in HOSTILE.values():
        with pytest.raises(JsonRefused):
            strict_json(body)


def test_a_validation_answer_never_echoes_what_json_cannot_write(engine, collection, module_home):
    app = app_for(engine, collection, home=module_home)

    @app.get("/echo")
    async def echo():
        raise RequestValidationError([{
            "type": "value_error", "loc": ("body", "k\udc80"), "msg": "bad \ud800",
            "input": [float("nan"), float("inf"), "\udfff", b"\xff", {"x": float("-inf")}],
            "ctx": {"error": ValueError("no \ud800"), "limit": float("nan")},
        }])

    with TestClient(app, raise_server_exceptions=False) as echoing:
        answer = echoing.get("/echo")
    assert answer.status_code == 422
    [error] = _answered_in_json(answer)["detail"]
    assert error["loc"] == ["body", "k\\udc80"] and error["msg"] == "bad \\ud800"
    assert error["input"] == ["nan", "inf", "\\udfff", "\\xff", {"x": "-inf"}]
    assert error["ctx"] == {"error": "no \\ud800", "limit": "nan"}


def test_hostile_json_over_a_real_server(engine, collection, module_home):
    with running(app_for(engine, collection, home=module_home)) as base, httpx.Client(base_url=base, timeout=30) as http:
        for body in (HOSTILE["arrays 100,000 deep"], HOSTILE["NaN in a field"], HOSTILE["a lone surrogate as a key"]):
            answer = http.post("/v1/collections/pics/search", content=body, headers=JSON)
            assert answer.status_code == 422 and _answered_in_json(answer)["detail"]
        assert http.get("/healthz").json() == {"status": "ok"}


# 2. Deletes are deletes -----------------------------------------------------------------------

def test_a_deleted_image_is_gone_from_every_server_and_cache(engine, client, collection, module_home):
    from iwan.collections.live import LiveCollection

    added = client.post("/v1/collections/pics/images", files=[("images", ("gone.jpg", jpeg(300), "image/jpeg"))],
                        headers=AUTH)
    assert added.status_code == 201, added.text
    image_id = added.json()["added"][0]["image_id"]
    thumbnail = f"/v1/images/{image_id}/thumbnail"
    # A second server of the same collection, which does not follow the change log: its memory
    # keeps the image after the delete, as a replica that has not caught up yet would.
    replica = LiveCollection.open(engine, "pics", follow=False, encoder=livedata.tiny_encoder())
    try:
        with TestClient(app_for(engine, replica, home=module_home), raise_server_exceptions=False) as other_server:
            tags = {}
            for server in (client, other_server):
                answer = server.get(thumbnail)
                assert answer.status_code == 200 and answer.content == jpeg(300)
                assert answer.headers["cache-control"] == "private, no-cache"
                assert "immutable" not in answer.headers["cache-control"] and "public" not in answer.headers["cache-control"]
                tags[server] = answer.headers["etag"]
                assert server.get(thumbnail, headers={"If-None-Match": tags[server]}).status_code == 304
                assert server.get(thumbnail, headers={"If-None-Match": '"something-else"'}).status_code == 200
                assert server.get(f"/v1/images/{image_id}").status_code == 200
            assert image_id in client.app.state.service.thumbnails

            assert client.delete(f"/v1/images/{image_id}", headers=AUTH).status_code == 204

            assert image_id not in client.app.state.service.thumbnails
            assert image_id in replica.image_ids  # the replica's memory has not caught up ...
            for server in (client, other_server):  # ... yet no server answers from any cache
                assert server.get(thumbnail).status_code == 404
                assert server.get(thumbnail, headers={"If-None-Match": tags[server]}).status_code == 404
                assert server.get(f"/v1/images/{image_id}").status_code == 404
    finally:
        replica.close()


def test_an_image_of_a_collection_not_served_is_404(engine, client, collection, other, module_home):
    _, image_id = other
    for path in (f"/v1/images/{image_id}", f"/v1/images/{image_id}/thumbnail"):
        answer = client.get(path)
        assert answer.status_code == 404, answer.text[:200]
        assert "none of the collections this server serves" in answer.json()["detail"]
    with TestClient(app_for(engine, collection, other[0], home=module_home)) as serving_both:
        assert serving_both.get(f"/v1/images/{image_id}").json()["collections"] == ["other"]
        assert serving_both.get(f"/v1/images/{image_id}/thumbnail").content == png(77)
    served = int(collection.image_ids[0])
    assert client.get(f"/v1/images/{served}").status_code == 200
    assert client.get(f"/v1/images/{served}/thumbnail").status_code == 200


# 3. PostgreSQL for docker compose stays on this machine ----------------------------------------

def test_docker_compose_publishes_ports_on_loopback_only():
    import yaml

    compose = yaml.safe_load((livedata.REPO / "docker-compose.yml").read_text())
    published = [(name, port) for name, service in compose["services"].items() for port in service.get("ports", [])]
    assert published, "docker-compose.yml publishes no port (the README's URL needs PostgreSQL's)"
    for name, port in published:
        if isinstance(port, dict):  # the long syntax
            host = port.get("host_ip")
        else:  # "[HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTOCOL]"
            parts = str(port).split("/")[0].rsplit(":", 2)
            host = parts[0] if len(parts) == 3 else None
        assert host == "127.0.0.1", f"service {name} publishes {port!r} beyond this machine"


# 4. What every answer says about itself, and to whom the server answers ----------------------

PAGES_AND_FILES = ["/", "/static/index.html", "/static/app.js", "/static/style.css", "/healthz", "/readyz",
                   "/v1/collections", "/openapi.json", "/no-such-page", "/static/no-such-file"]


def test_every_answer_carries_the_pages_csp_and_nosniff(engine, client, collection, module_home):
    from iwan.serve.routes import DOCS_POLICY, PAGE_POLICY

    assert "frame-ancestors 'none'" in PAGE_POLICY
    for path in PAGES_AND_FILES:
        answer = client.get(path)
        assert answer.headers.get("x-content-type-options") == "nosniff", path
        assert answer.headers.get("content-security-policy") == PAGE_POLICY, path
    assert client.get("/static/index.html").text == client.get("/").text  # the same page, framed by no one
    docs = client.get("/docs")
    assert docs.headers["content-security-policy"] == DOCS_POLICY and docs.headers["x-content-type-options"] == "nosniff"
    too_big = client.post("/v1/collections/pics/search", content=b"x" * (11 * 1024 * 1024), headers=JSON)
    assert too_big.status_code == 413 and too_big.headers["x-content-type-options"] == "nosniff"
    app = app_for(engine, collection, home=module_home)

    @app.get("/broken")
    async def broken():
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as failing:
        answer = failing.get("/broken")
    assert answer.status_code == 500 and "a bug" not in answer.text
    assert answer.headers["x-content-type-options"] == "nosniff" and answer.headers["content-security-policy"] == PAGE_POLICY


def test_a_real_server_names_no_software_answers_head_and_only_its_own_hosts(engine, collection, module_home):
    with running(app_for(engine, collection, home=module_home)) as base, httpx.Client(base_url=base, timeout=30) as http:
        port = base.rsplit(":", 1)[1]
        for path in ("/", "/healthz", "/readyz", "/docs"):
            got, head = http.get(path), http.head(path)
            assert "server" not in got.headers and "server" not in head.headers, got.headers
            assert got.status_code == 200 and head.status_code == 200, (path, head.status_code)
            assert head.content == b"" and head.headers["content-type"] == got.headers["content-type"]
            assert head.headers["x-content-type-options"] == "nosniff"
        for name in ("127.0.0.1", "localhost", "[::1]", "LOCALHOST"):
            assert http.get("/healthz", headers={"Host": f"{name}:{port}"}).status_code == 200, name
            assert http.get("/healthz", headers={"Host": name}).status_code == 200, name
        # DNS rebinding: a page of evil.example whose name now points at 127.0.0.1 reads nothing.
        for name in (f"evil.example:{port}", "evil.example", "127.0.0.1.evil.example", "", "[::1"):
            refused = http.get("/v1/collections", headers={"Host": name})
            assert refused.status_code == 400, (name, refused.status_code)
            assert "pics" not in refused.text and refused.headers["x-content-type-options"] == "nosniff"
        assert "server" not in http.get("/no-such-page").headers


def test_the_hosts_answered_are_loopback_the_bind_address_and_the_settings(engine, collection, module_home, monkeypatch):
    from iwan.config import LOOPBACK_HOSTS
    from iwan.serve.app import allowed_hosts

    monkeypatch.delenv("IWAN_ALLOWED_HOSTS", raising=False)
    defaults = settings()
    assert defaults.allowed_hosts == () and "testserver" not in allowed_hosts(defaults)
    assert allowed_hosts(defaults) == list(LOOPBACK_HOSTS) == ["127.0.0.1", "localhost", "[::1]"]
    for wildcard in ("0.0.0.0", "::", "127.0.0.1", "localhost"):
        assert allowed_hosts(defaults, wildcard) == list(LOOPBACK_HOSTS)
    assert allowed_hosts(defaults, "192.168.1.20")[-1] == "192.168.1.20"
    assert allowed_hosts(defaults, "fe80::1")[-1] == "[fe80::1]"
    monkeypatch.setenv("IWAN_ALLOWED_HOSTS", " Search.Example.org, *.lan ,,10.0.0.5:8000,[fd00::2]:80")
    assert settings().allowed_hosts == ("Search.Example.org", "*.lan", "10.0.0.5:8000", "[fd00::2]:80")
    assert allowed_hosts(settings())[3:] == ["search.example.org", "*.lan", "10.0.0.5", "[fd00::2]"]
    monkeypatch.setenv("IWAN_ALLOWED_HOSTS", "evil*.example")
    with pytest.raises(ValueError, match="IWAN_ALLOWED_HOSTS"):
        allowed_hosts(settings())

    # By default TestClient's "testserver" is refused; the bind address and the settings' names are answered.
    strict = dataclasses.replace(defaults, api_key=KEY, home=module_home)
    with TestClient(create_app(engine, [collection], settings=strict)) as outsider:
        assert outsider.get("/v1/collections").status_code == 400
        assert outsider.get("/v1/collections", headers={"Host": "localhost"}).status_code == 200
    with TestClient(create_app(engine, [collection], settings=strict, host="search.example"),
                    base_url="http://search.example:8000") as bound:
        assert bound.get("/v1/collections").status_code == 200
    named = dataclasses.replace(strict, allowed_hosts=("*.example.net",))
    with TestClient(create_app(engine, [collection], settings=named), base_url="http://iwan.example.net") as told:
        assert told.get("/healthz").status_code == 200
        assert told.get("/healthz", headers={"Host": "example.org"}).status_code == 400


def test_a_database_outage_tells_the_client_nothing_of_the_database(collection, module_home, tmp_path, caplog):
    socket_dir = tmp_path / "secret-socket-dir"
    down = sa.create_engine(f"postgresql+psycopg://iwan_user:hunter2@/iwan_db?host={socket_dir}")
    try:
        app = create_app(down, [collection], settings=dataclasses.replace(settings(), home=module_home))
        with TestClient(app, raise_server_exceptions=False) as client, caplog.at_level("WARNING", logger="iwan.serve.routes"):
            answer = client.get(f"/v1/images/{int(collection.image_ids[0])}")
        assert answer.status_code == 503 and int(answer.headers["retry-after"]) > 0
        detail = answer.json()["detail"]
        assert "database is unavailable" in detail and "retry" in detail
        for secret in (str(socket_dir), "secret-socket-dir", "/", "hunter2", "iwan_user", "iwan_db", "postgresql", ".s.PGSQL"):
            assert secret not in detail, (secret, detail)
        assert "secret-socket-dir" in caplog.text  # the operator's log has it
        with TestClient(create_app(down, load=["pics"], settings=dataclasses.replace(settings(), home=module_home))) as loading:
            for _ in range(200):
                ready = loading.get("/readyz").json()
                if ready["status"] != "loading":
                    break
        assert ready["status"] == "failed" and "database is unavailable" in ready["error"], ready
        assert "secret-socket-dir" not in json.dumps(ready) and "hunter2" not in json.dumps(ready)
    finally:
        down.dispose()


# 5. A phone's photo is searched (and shown) upright ---------------------------------------------

def sideways_jpeg(width: int, height: int, orientation: int = 6, noise: bool = False) -> bytes:
    """A JPEG whose stored pixels are width x height, the left quarter white, tagged with the
    EXIF `orientation` (6: the camera was turned; shown turned 90 degrees clockwise, tall)."""
    import numpy as np

    pixels = np.random.default_rng(0).integers(0, 100, (height, width, 3), dtype=np.uint8) if noise else \
        np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 4] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=95, exif=exif.tobytes())
    return out.getvalue()


def test_the_exif_orientation_is_applied_for_every_caller():
    from iwan.vision.decode import DecodePolicy, decode_image

    for policy in (DecodePolicy(), DecodePolicy(min_side=20)):  # the full decode and the reduced (draft) one
        pixels = decode_image(sideways_jpeg(160, 80), "phone.jpg", policy).pixels
        height, width, _ = pixels.shape
        assert height == 2 * width, (policy, pixels.shape)  # tall, as shown
        assert pixels[: height // 5].mean() > 200 and pixels[-height // 5:].mean() < 50  # the white quarter on top
    upright = decode_image(sideways_jpeg(160, 80, orientation=1), "plain.jpg", DecodePolicy()).pixels
    assert upright.shape == (80, 160, 3)
    mirrored = decode_image(sideways_jpeg(160, 80, orientation=2), "mirror.jpg", DecodePolicy()).pixels
    assert mirrored.shape == (80, 160, 3) and mirrored[:, -40:].mean() > 200


def test_a_thumbnail_is_upright(client):
    photo = sideways_jpeg(600, 300, noise=True)
    assert len(photo) > 32 * 1024  # a thumbnail is made (a small JPEG is sent as it is; browsers turn it)
    added = client.post("/v1/collections/pics/images", files=[("images", ("phone.jpg", photo, "image/jpeg"))],
                        headers=AUTH)
    assert added.status_code == 201, added.text
    image_id = added.json()["added"][0]["image_id"]
    try:
        answer = client.get(f"/v1/images/{image_id}/thumbnail")
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(answer.content)).size == (128, 256)
    finally:
        assert client.delete(f"/v1/images/{image_id}", headers=AUTH).status_code == 204


# 7. Smaller items ------------------------------------------------------------------------------

def _send_half_and_hang_up(base: str, path: str, headers: dict[str, str], part: bytes) -> None:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        raw.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}\r\n".encode() + part)
        time.sleep(0.3)


def test_a_client_that_hangs_up_mid_body_is_no_error(engine, collection, module_home, caplog):
    boundary = "x" * 16
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + png(3)
    server_log = logging.getLogger("uvicorn.error")  # uvicorn's own loggers do not reach the root
    server_log.addHandler(caplog.handler)
    with caplog.at_level(logging.INFO), running(app_for(engine, collection, home=module_home)) as base:
        for path, extra in (("/v1/collections/pics/search", {}), ("/v1/collections/pics/images", AUTH)):
            _send_half_and_hang_up(base, path, {"Content-Type": f"multipart/form-data; boundary={boundary}",
                                                "Content-Length": str(len(body) + 10_000), **extra}, body)
        time.sleep(0.5)
        assert httpx.get(base + "/healthz").status_code == 200
    server_log.removeHandler(caplog.handler)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    assert any("disconnected" in r.getMessage() for r in caplog.records)


def test_files_left_by_an_interrupted_add_are_swept(engine, collection, module_home):
    from iwan.collections.ingest import image_path, sweep_files

    image_dir = module_home / "images"
    kept = [p for p in image_dir.glob("??/*") if p.is_file()]
    assert kept  # the collection's own files
    orphan = image_path("ab" + "0" * 62, image_dir)  # written, then the add was killed before its commit
    partial = orphan.with_name(f"{orphan.name}.4242.partial")
    fresh = image_path("cd" + "0" * 62, image_dir)  # perhaps an add in progress: too young to judge
    for path in (orphan, partial, fresh):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not referenced")
    two_hours_ago = time.time() - 7200
    for path in (orphan, partial, *kept):
        os.utime(path, (two_hours_ago, two_hours_ago))
    with TestClient(app_for(engine, collection, home=module_home)) as client:  # swept at start-up
        deadline = time.monotonic() + 10
        while orphan.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/healthz").status_code == 200
    assert not orphan.exists() and not partial.exists() and fresh.exists()
    assert all(p.exists() for p in kept)  # referenced files stay, whatever their age
    assert sweep_files(engine, image_dir, min_age_s=0) == [fresh]
