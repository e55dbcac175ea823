"""Image work under a memory budget (issue 16, item 1): what a decode costs is known from the
header, a huge image in a small file decodes small, concurrent decodes and model passes share a
budget (wait, then 503 with Retry-After; 413 for one that can never fit), and a thumbnail is never
the full image. Over a real collection in the embedded PostgreSQL and real decodes."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hostile_images import flat_png, flat_webp
from livedata import png
from PIL import Image
from serving import blob_collection

from iwan.config import settings
from iwan.serve import create_app
from iwan.vision.decode import DecodePolicy, ImageBusy, ImageRefused, MemoryBudget, decode_image

KEY = "budget-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("in_module_home")


def test_a_huge_image_in_a_small_file_decodes_small():
    line = flat_png(1, 3_000_000, bit_depth=1, color_type=0)
    assert len(line) < 64 * 1024
    pixels = decode_image(line, "line.png", DecodePolicy()).pixels
    # A long side over MAX_SIDE_RATIO times the short one (or the 512 kept) is reduced further.
    assert 2048 < pixels.shape[0] <= 8 * 512 and pixels.shape[1:] == (1, 3)
    assert decode_image(flat_png(20_000, 600), "wide.png", DecodePolicy()).pixels.shape == (600, 4000, 3)
    # Within the ratio the aspect is kept (the predictor crops the centre square), and a shorter
    # side under twice 512 is not reduced.
    assert decode_image(flat_png(3000, 600), "panorama.png", DecodePolicy()).pixels.shape == (600, 3000, 3)
    assert decode_image(flat_png(3000, 2400), "photo.png", DecodePolicy()).pixels.shape == (600, 750, 3)


MEASURE = """
import json, sys
from iwan.vision.decode import DecodePolicy, Shrink, decode_cost, decode_image, open_checked
def high_water():
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024
data = open(sys.argv[1], "rb").read()
with open_checked(data, "x", DecodePolicy()) as image:
    estimate = decode_cost(image, Shrink(min_side=512))
before = high_water()
decode_image(data, "x", DecodePolicy())
print(json.dumps({"estimate": estimate, "peak": high_water() - before}))
"""


@pytest.mark.parametrize("name, make", [
    ("rgba16.png", lambda: flat_png(2500, 2500, bit_depth=16, color_type=6)),  # premultiplied for reduce
    ("palette.png", lambda: flat_png(2500, 2500)),  # converted before it can be reduced
    ("tall-1bit.png", lambda: flat_png(1, 4_000_000, bit_depth=1, color_type=0)),  # a row pointer a pixel
    ("lossless.webp", lambda: flat_webp(2500)),  # libwebp's own buffer beside Pillow's
])
def test_the_cost_from_the_header_bounds_the_decodes_measured_peak(tmp_path, name, make):
    path = tmp_path / name
    path.write_bytes(make())
    run = subprocess.run([sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True, cwd=REPO,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    figures = json.loads(run.stdout)
    assert figures["peak"] > 8 << 20, figures  # a real decode was measured
    assert figures["peak"] <= figures["estimate"] <= 1.3 * figures["peak"] + (8 << 20), figures


def test_the_budget_makes_work_wait_then_refuses_it():
    budget = MemoryBudget(100, wait_s=0.3)
    with pytest.raises(ImageRefused) as refused, budget.reserve(101, "big.png"):
        pass
    assert refused.value.status == 413 and "IWAN_DECODE_MEMORY" in str(refused.value)

    entered = threading.Event()
    release = threading.Event()

    def hold():
        with budget.reserve(80, "first.png"):
            entered.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    entered.wait(5)
    start = time.monotonic()
    with pytest.raises(ImageBusy), budget.reserve(30, "second.png"):
        pass
    assert 0.25 < time.monotonic() - start < 2
    with budget.reserve(20, "small.png"):  # what fits beside the holder goes at once
        assert budget.used == 100
    threading.Timer(0.1, release.set).start()
    with budget.reserve(30, "third.png"):  # waits for the holder, then fits
        assert budget.used == 30
    holder.join(5)
    assert budget.used == 0


@pytest.fixture(scope="module")
def engine(module_engine):
    return module_engine


@pytest.fixture(scope="module")
def collection(engine, module_home, one_torch_thread):
    with blob_collection(engine, module_home, "budget", 4) as live:
        yield live


@pytest.fixture(scope="module")
def client(engine, collection, module_home):
    configured = dataclasses.replace(settings(), api_key=KEY, home=module_home, decode_memory=96 << 20)
    with TestClient(create_app(engine, [collection], settings=configured), raise_server_exceptions=False) as client:
        yield client


def test_the_service_refuses_what_never_fits_and_answers_503_while_the_budget_is_held(client):
    budget = client.app.state.service.budget  # type: ignore[attr-defined]
    # 6000 x 6000 palette pixels: about 200 MiB to decode, over this server's 96 MiB.
    huge = client.post("/v1/collections/budget/search", files={"image": ("huge.png", flat_png(6000, 6000), "image/png")})
    assert huge.status_code == 413 and "IWAN_DECODE_MEMORY" in huge.json()["detail"], huge.text
    small = client.post("/v1/collections/budget/search", files={"image": ("small.png", png(1), "image/png")})
    assert small.status_code == 200, small.text

    budget.wait_s = 0.3
    held = threading.Event()
    release = threading.Event()

    def hold():
        with budget.reserve(budget.limit, "the test"):
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        held.wait(5)
        busy = client.post("/v1/collections/budget/search", files={"image": ("small.png", png(1), "image/png")})
        assert busy.status_code == 503 and int(busy.headers["retry-after"]) >= 1, busy.text
        assert "busy" in busy.json()["detail"]
        words = client.post("/v1/collections/budget/search", json={"text": "cat"})  # needs no image work
        assert words.status_code in (200, 422), words.text
    finally:
        release.set()
        holder.join(5)
        budget.wait_s = 20.0
    again = client.post("/v1/collections/budget/search", files={"image": ("small.png", png(1), "image/png")})
    assert again.status_code == 200, again.text


def test_a_thumbnail_is_never_the_full_image(client):
    line = flat_png(2, 1_000_000, bit_depth=1, color_type=0)  # a few KiB: once sent as its own thumbnail
    assert len(line) < 32 * 1024
    added = client.post("/v1/collections/budget/images", files=[("images", ("line.png", line, "image/png"))],
                        headers=AUTH)
    assert added.status_code == 201, added.text
    image_id = added.json()["added"][0]["image_id"]
    try:
        answer = client.get(f"/v1/images/{image_id}/thumbnail")
        assert answer.status_code == 200, answer.text
        width, height = Image.open(io.BytesIO(answer.content)).size
        assert max(width, height) <= 256 and height == 256
        small = client.get(f"/v1/images/{image_id - 1}/thumbnail")  # a 32-pixel PNG is sent as it is
        assert small.status_code == 200 and small.headers["content-type"] == "image/png"
    finally:
        assert client.delete(f"/v1/images/{image_id}", headers=AUTH).status_code == 204
