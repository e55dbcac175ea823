"""What the service tests share: a real collection in the embedded PostgreSQL, and a real server.

The collection's models are small and real (tests/livedata.py: EfficientNet-Lite0 code with
seeded weights at 32 px, a small-CNN hash network), its norms are over ImageNet class words, so a
collection of generated images serves every method without the shared data.
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import livedata


def make_collection(engine, home, name: str, images: list[tuple[str, bytes]], label: str | None = None,
                    hash_model: str | None = livedata.HASH_MODEL):
    """A new collection holding `images`, opened live with the tiny models (the caller closes it)."""
    from iwan.collections.live import LiveCollection, create_collection

    home.mkdir(parents=True, exist_ok=True)
    livedata.load_norms(engine, home)
    if hash_model:
        livedata.save_hash_model(home)
    create_collection(engine, name, livedata.PREDICTOR, hash_model=hash_model)
    collection = LiveCollection.open(engine, name, encoder=livedata.tiny_encoder(hash_model))
    if images:
        report = collection.add_files(images, label=label)
        assert len(report.added) == len(images), report.skipped
    return collection


@contextmanager
def blob_collection(engine, home, name: str, n: int = 4, label: str = "blob"):
    """A collection of `n` generated PNGs with one label, in IWAN_HOME=`home`, closed after use."""
    import pytest

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IWAN_HOME", str(home))
        live = make_collection(engine, home, name, [(f"img{i}.png", livedata.png(i)) for i in range(n)], label=label)
    try:
        yield live
    finally:
        live.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(app, port: int | None = None):
    """The app under a real uvicorn server on a loopback port, configured as `iwan serve`
    configures it; yields its base URL."""
    import uvicorn

    from iwan.serve.app import server_config

    port = port or free_port()
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def cifar_collection(engine, data, name: str, per_class: int):
    """A collection of real CIFAR-10 test JPEGs (`per_class` of each class, labelled by class) with
    the real USF norms and EfficientNet-Lite0's ImageNet weights: what a user would serve."""
    from iwan.collections.live import LiveCollection, create_collection
    from iwan.db.norms import load_norms

    load_norms(engine, [data / "usf-appendix-a"])
    create_collection(engine, name, livedata.PREDICTOR)
    collection = LiveCollection.open(engine, name)
    for folder in sorted((data / "cifar10-jpg" / "test").iterdir()):
        files = [(f"{folder.name}/{p.name}", p.read_bytes()) for p in sorted(folder.glob("*.jpg"))[:per_class]]
        collection.add_files(files, label=folder.name)
    return collection


def cifar_query(data, class_name: str = "cat", index: int = 999):
    """A CIFAR-10 test JPEG that the collections above do not hold (they take the first files)."""
    return data / "cifar10-jpg" / "test" / class_name / f"{index:04d}.jpg"
