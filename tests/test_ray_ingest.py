"""Ingestion on a real local Ray cluster (a head and one worker node, separate processes started
here): what `iwan predict`, `iwan images add` and `iwan hash encode` store through Ray equals,
row by row, what they store in one process, also when a worker node is killed during the run."""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from conftest import _fresh_database
from livedata import HASH_MODEL, PREDICTOR, load_norms, png, save_hash_model, tiny_encoder, tiny_predictor
from PIL import Image
from raycluster import REPO, LocalCluster

from iwan.collections import distributed
from iwan.config import settings as current_settings

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="Ray is not installed: pip install 'iwan[ray]' (README \"Ingestion on Ray\")")
TINY = distributed.PredictorSpec(PREDICTOR, backend="torch", pretrained=False, image_size=32, precision="fp32")
TABLES = {
    "images": "id, dataset, split, position, fine_label, coarse_label, path",
    "dataset_classes": "dataset, granularity, label, name",
    "classifier_classes": "model, class_index, name",
    "predictions": "model, image_id, class_indices, probabilities",
    "hash_codes": "model, image_id, code::text, embedding::text",
    "image_files": "image_id, sha256, media_type, size, file_name, label",
    "collection_images": "image_id",
}


@pytest.fixture(scope="module")
def cluster():
    if importlib.util.find_spec("ray") is None:
        pytest.skip("Ray is not installed: pip install 'iwan[ray]' (README \"Ingestion on Ray\")")
    with LocalCluster(workers=1) as local:
        yield local


@pytest.fixture
def other_database(_template_database):
    """A second fresh database: the single-process run's, beside the Ray run's."""
    with _fresh_database(_template_database) as url:
        engine = sa.create_engine(url)
        yield engine
        engine.dispose()


def rows(engine) -> dict[str, list]:
    with engine.connect() as conn:
        return {table: conn.execute(sa.text(
            f"SELECT {columns} FROM {table} ORDER BY {', '.join(map(str, range(1, columns.count(',') + 2)))}"
        )).all() for table, columns in TABLES.items()}


def image_folder(root: Path, per_class: int) -> Path:
    """Three classes of distinct 32 px JPEGs."""
    for label in range(3):
        folder = root / "split" / f"class{label}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = np.asarray(Image.open(io.BytesIO(png(label * 1000 + i))))
            Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=90)
    return root


def predict_here(engine, root: Path, batch_size: int) -> None:
    from iwan.datasets.loaders import load_dataset
    from iwan.db.predictions import predict_split

    settings = current_settings()
    dataset = load_dataset(f"imagefolder:{root}", "split", settings=settings)
    predict_split(engine, tiny_predictor(), dataset, batch_size=batch_size, progress=False, cache_dir=settings.cache_dir)


def predict_on_ray(engine, address: str, root: Path, batch_size: int):
    from iwan.datasets.loaders import list_dataset

    settings = current_settings()
    listing = list_dataset(f"imagefolder:{root}", "split", settings=settings)
    with distributed.Cluster(address) as cluster:
        return distributed.predict_split(engine, cluster, TINY, listing, batch_size, progress=False, settings=settings)


@needs_ray
def test_predict_on_ray_stores_what_one_process_stores(cluster, engine, other_database, tmp_path, one_torch_thread):
    root = image_folder(tmp_path / "images", per_class=20)
    predict_here(other_database, root, batch_size=16)
    summary = predict_on_ray(engine, cluster.address, root, batch_size=16)
    assert (summary.images, summary.predicted, summary.skipped) == (60, 60, 0)
    ray_rows, here_rows = rows(engine), rows(other_database)
    assert len(ray_rows["predictions"]) == 60  # one row per image, its ten classes as arrays
    assert ray_rows == here_rows
    # A rerun finds everything done and writes nothing twice.
    again = predict_on_ray(engine, cluster.address, root, batch_size=16)
    assert (again.predicted, again.skipped) == (0, 60) and rows(engine) == here_rows


@needs_ray
def test_workers_that_cannot_start_end_the_run_saying_why(cluster, engine, tmp_path):
    from iwan.datasets.loaders import list_dataset

    root = image_folder(tmp_path / "images", per_class=2)
    settings = current_settings()
    listing = list_dataset(f"imagefolder:{root}", "split", settings=settings)
    missing = dataclasses.replace(TINY, weights=str(tmp_path / "no-such-weights.pt"))
    with distributed.Cluster(cluster.address) as on_ray, pytest.raises(distributed.ClusterError) as raised:
        distributed.predict_split(engine, on_ray, missing, listing, 4, progress=False, settings=settings)
    assert "every worker of the Ray cluster" in str(raised.value) and "no-such-weights.pt" in str(raised.value)


@needs_ray
def test_images_add_on_ray_stores_what_one_process_stores(cluster, engine, other_database, tmp_path, monkeypatch,
                                                          one_torch_thread):
    from iwan.collections import ingest
    from iwan.collections.live import create_collection

    monkeypatch.setenv("IWAN_HOME", str(tmp_path / "home"))
    save_hash_model(tmp_path / "home")
    files = tmp_path / "files"
    files.mkdir()
    for seed in range(12):
        (files / f"{seed:02d}.png").write_bytes(png(seed))
    (files / "03-copy.png").write_bytes(png(3))
    (files / "notes.txt").write_text("not an image")
    paths = sorted(files.iterdir())
    settings = current_settings()
    for db in (engine, other_database):
        load_norms(db, tmp_path)
        create_collection(db, "photos", PREDICTOR, hash_model=HASH_MODEL)
    here = ingest.add_files(other_database, "photos", [(str(p), p.read_bytes()) for p in paths], tiny_encoder(),
                            "holiday", settings=settings)
    with distributed.Cluster(cluster.address) as joined:
        on_ray = distributed.add_paths(engine, joined, "photos", paths, TINY, "holiday", progress=False,
                                       settings=settings)
    assert on_ray.as_dict() == here.as_dict()
    assert len(on_ray.added) == 12 and len(on_ray.skipped) == 2
    ray_rows = rows(engine)
    assert len(ray_rows["hash_codes"]) == 12
    assert ray_rows == rows(other_database)


DRIVER = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import test_ray_ingest as t
from pathlib import Path
import sqlalchemy as sa
summary = t.predict_on_ray(sa.create_engine(sys.argv[2]), sys.argv[3], Path(sys.argv[4]), 1)
print(json.dumps(summary.as_dict()))
"""


@needs_ray
def test_a_worker_node_killed_during_predict_leaves_a_complete_equal_result(cluster, engine, other_database, tmp_path,
                                                                            one_torch_thread):
    root = image_folder(tmp_path / "images", per_class=60)
    predict_here(other_database, root, batch_size=1)
    url = engine.url.render_as_string(hide_password=False)
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(Path(__file__).parent), url, cluster.address, str(root)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        with engine.connect() as conn:
            while time.monotonic() < deadline and driver.poll() is None:
                written = conn.scalar(sa.text("SELECT count(DISTINCT image_id) FROM predictions"))
                conn.commit()
                if written >= 20:
                    break
                time.sleep(0.05)
        assert driver.poll() is None, f"the run ended before the kill: {driver.communicate()}"
        assert written < 180, "the run was too far along to test the kill"
        cluster.kill_worker(0)
        out, err = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["images"] == 180 and summary["predicted"] + summary["skipped"] == 180
    assert rows(engine) == rows(other_database)


def encode_here(engine, checkpoint: Path, root: Path, batch_size: int):
    from iwan.collections.encode import encode_split
    from iwan.datasets.loaders import load_dataset

    settings = current_settings()
    dataset = load_dataset(f"imagefolder:{root}", "split", settings=settings)
    return encode_split(engine, checkpoint, dataset, HASH_MODEL, backend="torch", progress=False, batch_size=batch_size,
                        settings=settings)


def encode_on_ray(engine, address: str, checkpoint: Path, root: Path, batch_size: int):
    from iwan.datasets.loaders import list_dataset

    settings = current_settings()
    listing = list_dataset(f"imagefolder:{root}", "split", settings=settings)
    with distributed.Cluster(address) as cluster:
        return distributed.encode_split(engine, cluster, checkpoint, listing, HASH_MODEL, backend="torch",
                                        batch_size=batch_size, progress=False, settings=settings)


@needs_ray
def test_hash_encode_on_ray_stores_what_one_process_stores(cluster, engine, other_database, tmp_path, one_torch_thread):
    from click.testing import CliRunner

    from iwan.cli import cli
    from iwan.datasets.loaders import list_dataset
    from iwan.db import images as image_store

    root = image_folder(tmp_path / "images", per_class=20)
    # An untrained small-cnn with a classification head: codes, embeddings and the head's predictions.
    checkpoint = save_hash_model(tmp_path / "home")
    here = encode_here(other_database, checkpoint, root, batch_size=8)
    url = engine.url.render_as_string(hide_password=False)
    result = CliRunner().invoke(cli, ["hash", "encode", "--dataset", f"imagefolder:{root}", "--split", "split",
                                      "--checkpoint", str(checkpoint), "--name", HASH_MODEL, "--backend", "torch",
                                      "--batch-size", "8", "--ray", cluster.address, "--json"],
                                env={"IWAN_DATABASE_URL": url})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == here.as_dict()
    assert here.images == 60 and here.predictions_stored and here.distinct_codes > 1
    ray_rows, here_rows = rows(engine), rows(other_database)
    assert len(ray_rows["hash_codes"]) == 60 and len(ray_rows["predictions"]) == 60
    assert ray_rows == here_rows
    # Slices run again (as Ray retries a task whose worker died after writing) write nothing.
    listing = list_dataset(f"imagefolder:{root}", "split", settings=current_settings())
    ids = image_store.register(engine, listing).ids
    retried = [distributed._EncodeTask(ids[start : start + 8], start, [str(p) for p in listing.paths[start : start + 8]], None)
               for start in (0, 24, 56)]
    arguments = {"checkpoint": str(checkpoint), "backend": "torch", "model": HASH_MODEL, "settings": current_settings(),
                 "database_url": url}
    with distributed.Cluster(cluster.address) as joined:
        assert [(images, written) for images, written, _ in joined.run(retried, distributed._Hashing, arguments)] == [
            (8, 0), (8, 0), (4, 0)]
    assert rows(engine) == here_rows
    # A second encode replaces the rows, as in one process: the same rows, none twice.
    again = encode_on_ray(engine, cluster.address, checkpoint, root, batch_size=16)
    assert again.as_dict() == here.as_dict() and rows(engine) == here_rows


def test_merge_codes_writes_only_the_images_without_codes(engine, tmp_path):
    from iwan.datasets.loaders import load_dataset
    from iwan.db import images as image_store
    from iwan.db.codes import load_codes, merge_codes

    root = image_folder(tmp_path / "images", per_class=2)
    ids = image_store.register(engine, load_dataset(f"imagefolder:{root}", "split")).ids
    rng = np.random.default_rng(0)
    embeddings, codes = rng.normal(size=(6, 5)).astype(np.float32), rng.integers(0, 1 << 48, 6).astype(np.uint64)
    with engine.begin() as conn:
        assert merge_codes(conn, "m", ids[:4], embeddings[:4], codes[:4]) == 4
    with engine.begin() as conn:
        # A retried batch overlapping the first: only the two new images are written, the first rows stay.
        assert merge_codes(conn, "m", ids[2:], embeddings[2:] + 1, codes[2:]) == 2
    stored_embeddings, stored_codes = load_codes(engine, "m", ids)
    np.testing.assert_array_equal(stored_codes, codes)
    np.testing.assert_array_equal(stored_embeddings[:4], embeddings[:4])
    np.testing.assert_array_equal(stored_embeddings[4:], embeddings[4:] + 1)


def test_a_workers_features_are_those_of_the_feature_cache(tmp_path, one_torch_thread):
    from iwan.collections.encode import slices
    from iwan.datasets.loaders import load_dataset
    from iwan.vision.features import extract

    root = image_folder(tmp_path / "images", per_class=34)
    dataset = load_dataset(f"imagefolder:{root}", "split")
    predictor = tiny_predictor()
    cached = extract(predictor, dataset, progress=False, cache_dir=tmp_path / "cache").features.astype(np.float32)
    # Slices of 40 cross the predictor's 64-image batches (the worker cuts them where the cache
    # does; this predictor's rows do not depend on their batch, so that cut is not what fails here).
    cuts = slices(len(dataset), 40)
    assert cuts == [(0, 40), (40, 80), (80, 102)]
    computed = np.concatenate([distributed._features(predictor, dataset.images[a:b], a) for a, b in cuts])
    np.testing.assert_array_equal(computed, cached)


ENCODE_DRIVER = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import test_ray_ingest as t
from pathlib import Path
import sqlalchemy as sa
summary = t.encode_on_ray(sa.create_engine(sys.argv[2]), sys.argv[3], Path(sys.argv[4]), Path(sys.argv[5]), 1)
print(json.dumps(summary.as_dict()))
"""


@needs_ray
def test_a_worker_node_killed_during_hash_encode_leaves_a_complete_equal_result(cluster, engine, other_database,
                                                                                tmp_path, one_torch_thread):
    root = image_folder(tmp_path / "images", per_class=40)
    checkpoint = save_hash_model(tmp_path / "home")
    encode_here(other_database, checkpoint, root, batch_size=1)
    # A node of its own to kill (an earlier test may have killed the first).
    cluster.start_worker()
    url = engine.url.render_as_string(hide_password=False)
    driver = subprocess.Popen([sys.executable, "-c", ENCODE_DRIVER, str(Path(__file__).parent), url, cluster.address,
                               str(checkpoint), str(root)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        deadline = time.monotonic() + 90
        with engine.connect() as conn:
            while time.monotonic() < deadline and driver.poll() is None:
                written = conn.scalar(sa.text("SELECT count(*) FROM hash_codes"))
                conn.commit()
                if written >= 20:
                    break
                time.sleep(0.05)
        assert driver.poll() is None, f"the run ended before the kill: {driver.communicate()}"
        assert written < 120, "the run was too far along to test the kill"
        cluster.kill_worker(len(cluster.worker_ports) - 1)
        out, err = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1])["images"] == 120
    assert rows(engine) == rows(other_database)


SINGLE = r"""
import sys
from iwan.cli import main
sys.argv = ["iwan", "predict", "--dataset", "imagefolder:" + sys.argv[1], "--split", "split", "--limit", "3", "--json"]
try:
    main()
finally:
    print("ray imported" if "ray" in sys.modules else "no ray", file=sys.stderr)
"""


def test_without_an_address_predict_runs_here_and_never_imports_ray(database_url, engine, tmp_path):
    root = image_folder(tmp_path / "images", per_class=1)
    env = {k: v for k, v in os.environ.items() if k != "IWAN_RAY_ADDRESS"}
    run = subprocess.run([sys.executable, "-c", SINGLE, str(root)], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env={**env, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout)["predicted"] == 3
    assert run.stderr.strip().splitlines()[-1] == "no ray"
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(DISTINCT image_id) FROM predictions")) == 3


ENCODE_HERE = r"""
import sys
from iwan.cli import main
sys.argv = ["iwan", "hash", "encode", "--dataset", "imagefolder:" + sys.argv[1], "--split", "split", "--checkpoint",
            sys.argv[2], "--name", "tiny-hash", "--backend", "torch", "--json"]
try:
    main()
finally:
    print("ray imported" if "ray" in sys.modules else "no ray", file=sys.stderr)
"""


def test_without_an_address_hash_encode_runs_here_and_never_imports_ray(database_url, engine, tmp_path):
    root = image_folder(tmp_path / "images", per_class=1)
    checkpoint = save_hash_model(tmp_path / "home")
    env = {k: v for k, v in os.environ.items() if k != "IWAN_RAY_ADDRESS"}
    run = subprocess.run([sys.executable, "-c", ENCODE_HERE, str(root), str(checkpoint)], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env={**env, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout)["images"] == 3
    assert run.stderr.strip().splitlines()[-1] == "no ray"
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM hash_codes")) == 3


def test_an_address_where_no_cluster_runs_is_one_line_saying_so(database_url, tmp_path):
    from click.testing import CliRunner

    from iwan.cli import cli

    if importlib.util.find_spec("ray") is None:
        pytest.skip("Ray is not installed")
    root = image_folder(tmp_path / "images", per_class=1)
    result = CliRunner().invoke(cli, ["predict", "--dataset", f"imagefolder:{root}", "--split", "split",
                                      "--ray", f"127.0.0.1:{_closed_port()}"])
    assert result.exit_code != 0
    assert "cannot join the Ray cluster" in result.output and "ray start --head" in result.output


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
