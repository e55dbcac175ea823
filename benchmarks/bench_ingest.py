"""Ingestion throughput: `iwan predict` and `iwan hash encode` in one process, and on a local Ray
cluster with one and with two worker nodes of one CPU each (the head has none, so only the
workers predict and encode).

    python benchmarks/bench_ingest.py [--images 2000] [--split test] [--stage both|predict|encode]

Real CIFAR-10 JPEGs (`cifar10-jpg/` in IWAN_DATA_DIR, else ../shared/data), the embedded
PostgreSQL in a temporary IWAN_HOME. `predict`: EfficientNet-Lite0 under ONNX Runtime. `encode`:
a small-CNN hash network of the trained CIFAR-10 model's shape (10 classes, 10-d embedding, the
small-CNN recipe's 512-wide hidden layer, 48 bits, a classification head) with random weights,
saved as a checkpoint in that IWAN_HOME: no trained checkpoint ships, and the throughput does not
depend on the weights. Each run starts from empty tables (so from no codes) and no cached
features or pixels; a Ray run is timed from listing the split and joining the cluster (actors
start and load their models inside the time) to the last row stored. The encode runs' codes,
embeddings and head predictions must equal the one process's, row by row (checked after the
timing). Prints one line per run and one JSON object last, with the load average (a shared
machine's figures move with it): the predict figures at its top level, the encode ones under
"encode".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

HASH_MODEL = "bench-hash"


def data_dir() -> Path:
    given = os.environ.get("IWAN_DATA_DIR")
    return Path(given) if given else REPO.parent / "shared" / "data"


def reset(engine, settings) -> None:
    import sqlalchemy as sa

    # hash_codes goes with images (ON DELETE CASCADE).
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE images, predictions, classifier_classes, dataset_classes CASCADE"))
    shutil.rmtree(settings.cache_dir, ignore_errors=True)


def count(engine) -> int:
    import sqlalchemy as sa

    with engine.connect() as conn:
        return int(conn.scalar(sa.text("SELECT count(DISTINCT image_id) FROM predictions")))


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def save_hash_model(home: Path) -> Path:
    """A random small-CNN hash network of the trained CIFAR-10 model's shape, as
    home/models/HASH_MODEL/best.pt (whitened on random pixels, as the tests' tiny one is)."""
    import numpy as np
    import torch

    from hashing.net import HashConfig, HashNet, save_checkpoint
    from hashing.recipes import recipe

    torch.manual_seed(0)
    network = HashNet(HashConfig(backbone="small-cnn", n_classes=10, embedding_dim=10, hidden=recipe("small-cnn")["hidden"]))
    network.prepare(torch.randint(0, 256, (256, 32, 32, 3), dtype=torch.uint8))
    return save_checkpoint(home / "models" / HASH_MODEL / "best.pt", network.eval(), np.eye(10, dtype=np.float32))


def encoded_rows(engine) -> tuple[list, list]:
    """The hash model's codes and embeddings, and its head's predictions, by image position (ids
    differ between runs: each registers the split anew)."""
    import sqlalchemy as sa

    with engine.connect() as conn:
        codes = conn.execute(sa.text(
            "SELECT i.position, h.code::text, h.embedding::text FROM hash_codes h JOIN images i ON i.id = h.image_id "
            "WHERE h.model = :m ORDER BY i.position"), {"m": HASH_MODEL}).all()
        predictions = conn.execute(sa.text(
            "SELECT i.position, p.class_indices, p.probabilities FROM predictions p JOIN images i ON i.id = p.image_id "
            "WHERE p.model = :m ORDER BY i.position"), {"m": HASH_MODEL}).all()
    return codes, predictions


def ray_runs(images: int, label: str, run) -> dict[str, float]:
    """images/s of `run(address)` on a local cluster of a 0-CPU head and one, then two, 1-CPU workers."""
    from raycluster import LocalCluster

    rates = {}
    for workers in (1, 2):
        with LocalCluster(workers=workers, head_cpus=0) as local:
            seconds = run(local.address)
        rates[f"ray_{workers}"] = images / seconds
        print(f"{label} on Ray, {workers} one-CPU worker node(s): {images} images in {seconds:.1f} s, "
              f"{rates[f'ray_{workers}']:.1f} images/s (load {load_average()})", flush=True)
    return rates


def bench_predict(args, engine, settings, spec: str) -> dict[str, float]:
    from iwan.collections import distributed
    from iwan.datasets.loaders import list_dataset, load_dataset
    from iwan.db.predictions import predict_split
    from iwan.vision.predictors import load_predictor

    # The ONNX graph is exported once, before any timing.
    predictor = load_predictor("efficientnet-lite0", backend="onnx", settings=settings)

    reset(engine, settings)
    started = time.perf_counter()
    dataset = load_dataset(spec, args.split, limit=args.images, settings=settings)
    predict_split(engine, predictor, dataset, batch_size=args.batch_size, progress=False, cache_dir=settings.cache_dir)
    seconds = time.perf_counter() - started
    assert count(engine) == args.images
    results = {"one_process": args.images / seconds}
    print(f"predict in one process ({len(os.sched_getaffinity(0))} CPUs): {args.images} images in {seconds:.1f} s, "
          f"{results['one_process']:.1f} images/s (load {load_average()})", flush=True)

    recipe = distributed.PredictorSpec("efficientnet-lite0", backend="onnx")

    def on_ray(address: str) -> float:
        reset(engine, settings)
        started = time.perf_counter()
        listing = list_dataset(spec, args.split, limit=args.images, settings=settings)
        with distributed.Cluster(address) as cluster:
            distributed.predict_split(engine, cluster, recipe, listing, args.batch_size, progress=False,
                                      settings=settings)
        seconds = time.perf_counter() - started
        assert count(engine) == args.images
        return seconds

    return {**results, **ray_runs(args.images, "predict", on_ray)}


def bench_encode(args, engine, settings, spec: str) -> tuple[dict[str, float], int]:
    """images/s of the three encode runs, and the rows each Ray run was checked equal on."""
    from iwan.collections import distributed
    from iwan.collections.encode import encode_split
    from iwan.datasets.loaders import list_dataset, load_dataset

    checkpoint = save_hash_model(settings.home)
    reset(engine, settings)
    started = time.perf_counter()
    dataset = load_dataset(spec, args.split, limit=args.images, settings=settings)
    encode_split(engine, checkpoint, dataset, HASH_MODEL, progress=False, batch_size=args.encode_batch_size,
                 settings=settings)
    seconds = time.perf_counter() - started
    here = encoded_rows(engine)
    assert len(here[0]) == len(here[1]) == args.images
    results = {"one_process": args.images / seconds}
    print(f"encode in one process ({len(os.sched_getaffinity(0))} CPUs): {args.images} images in {seconds:.1f} s, "
          f"{results['one_process']:.1f} images/s (load {load_average()})", flush=True)

    def on_ray(address: str) -> float:
        reset(engine, settings)
        started = time.perf_counter()
        listing = list_dataset(spec, args.split, limit=args.images, settings=settings)
        with distributed.Cluster(address) as cluster:
            distributed.encode_split(engine, cluster, checkpoint, listing, HASH_MODEL, batch_size=args.encode_batch_size,
                                     progress=False, settings=settings)
        seconds = time.perf_counter() - started
        assert encoded_rows(engine) == here, "the Ray run's codes, embeddings or predictions differ from one process's"
        return seconds

    return {**results, **ray_runs(args.images, "encode", on_ray)}, len(here[0]) + len(here[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--split", default="test")
    parser.add_argument("--stage", choices=("both", "predict", "encode"), default="both")
    parser.add_argument("--batch-size", type=int, default=64, help="images per predictor batch (and Ray task)")
    parser.add_argument("--encode-batch-size", type=int, default=128,
                        help="images per hash network pass (and Ray task); `iwan hash encode` defaults to 1,024")
    args = parser.parse_args()

    from iwan.config import settings as current_settings
    from iwan.db import embedded
    from iwan.db.engine import make_engine
    from iwan.db.migrate import upgrade

    source = data_dir() / "cifar10-jpg"
    if not source.is_dir():
        sys.exit(f"{source} is missing: the benchmark reads real CIFAR-10 JPEGs (see ../shared/data/README.md)")
    home = Path(tempfile.mkdtemp(prefix="iwan-bench-ingest-"))
    settings = dataclasses.replace(current_settings(), home=home, data_dir=data_dir(), database_url=None)
    spec = f"imagefolder:{source}"
    engine = make_engine(settings=settings)
    upgrade(engine)
    report: dict = {"images": args.images, "split": args.split}
    try:
        if args.stage in ("both", "predict"):
            rates = bench_predict(args, engine, settings, spec)
            ratio = rates["ray_2"] / rates["ray_1"]
            print(f"predict, two workers / one worker: {ratio:.2f}x (goal: 1.5x)", flush=True)
            report.update({
                "predictor": "efficientnet-lite0", "backend": "onnx",
                "images_per_s": {"one_process": round(rates["one_process"], 1), "ray_1_worker": round(rates["ray_1"], 1),
                                 "ray_2_workers": round(rates["ray_2"], 1)},
                "ratio_2_to_1_workers": round(ratio, 2), "load_average": load_average(),
            })
        if args.stage in ("both", "encode"):
            rates, checked = bench_encode(args, engine, settings, spec)
            ratio = rates["ray_2"] / rates["ray_1"]
            print(f"encode, two workers / one worker: {ratio:.2f}x (goal: 1.5x); Ray rows equal one process's "
                  f"({checked} rows each)", flush=True)
            report["encode"] = {
                "hash_model": "small-cnn, random weights, 48 bits, 10-d embedding, classification head",
                "batch_size": args.encode_batch_size,
                "images_per_s": {"one_process": round(rates["one_process"], 1), "ray_1_worker": round(rates["ray_1"], 1),
                                 "ray_2_workers": round(rates["ray_2"], 1)},
                "ratio_2_to_1_workers": round(ratio, 2), "rows_equal": True, "load_average": load_average(),
            }
    finally:
        engine.dispose()
        with embedded.locked(settings.pgdata):
            embedded.stop(settings.pgdata)
        shutil.rmtree(home, ignore_errors=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
