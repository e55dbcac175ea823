"""Ingestion throughput: `iwan predict` in one process, and on a local Ray cluster with one and
with two worker nodes of one CPU each (the head has none, so only the workers predict).

    python benchmarks/bench_ingest.py [--images 2000] [--split test]

Real CIFAR-10 JPEGs (`cifar10-jpg/` in IWAN_DATA_DIR, else ../shared/data), EfficientNet-Lite0
under ONNX Runtime, the embedded PostgreSQL in a temporary IWAN_HOME. Each run starts from empty
tables and no cached features; a Ray run is timed from joining the cluster (actors start and
load their models inside the time) to the last prediction stored. Prints one line per run and
one JSON object last, with the load average (a shared machine's figures move with it).
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


def data_dir() -> Path:
    given = os.environ.get("IWAN_DATA_DIR")
    return Path(given) if given else REPO.parent / "shared" / "data"


def reset(engine, settings) -> None:
    import sqlalchemy as sa

    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE images, predictions, classifier_classes, dataset_classes CASCADE"))
    shutil.rmtree(settings.cache_dir, ignore_errors=True)


def count(engine) -> int:
    import sqlalchemy as sa

    with engine.connect() as conn:
        return int(conn.scalar(sa.text("SELECT count(DISTINCT image_id) FROM predictions")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    from raycluster import LocalCluster

    from iwan.collections import distributed
    from iwan.config import settings as current_settings
    from iwan.datasets.loaders import list_dataset, load_dataset
    from iwan.db import embedded
    from iwan.db.engine import make_engine
    from iwan.db.migrate import upgrade
    from iwan.db.predictions import predict_split
    from iwan.vision.predictors import load_predictor

    source = data_dir() / "cifar10-jpg"
    if not source.is_dir():
        sys.exit(f"{source} is missing: the benchmark reads real CIFAR-10 JPEGs (see ../shared/data/README.md)")
    home = Path(tempfile.mkdtemp(prefix="iwan-bench-ingest-"))
    settings = dataclasses.replace(current_settings(), home=home, data_dir=data_dir(), database_url=None)
    spec = f"imagefolder:{source}"
    engine = make_engine(settings=settings)
    upgrade(engine)
    results: dict[str, float] = {}
    try:
        # The ONNX graph is exported once, before any timing.
        predictor = load_predictor("efficientnet-lite0", backend="onnx", settings=settings)

        reset(engine, settings)
        started = time.perf_counter()
        dataset = load_dataset(spec, args.split, limit=args.images, settings=settings)
        predict_split(engine, predictor, dataset, batch_size=args.batch_size, progress=False,
                      cache_dir=settings.cache_dir)
        seconds = time.perf_counter() - started
        assert count(engine) == args.images
        results["one_process"] = args.images / seconds
        print(f"one process ({len(os.sched_getaffinity(0))} CPUs): {args.images} images in {seconds:.1f} s, "
              f"{results['one_process']:.1f} images/s", flush=True)

        recipe = distributed.PredictorSpec("efficientnet-lite0", backend="onnx")
        for workers in (1, 2):
            with LocalCluster(workers=workers, head_cpus=0) as local:
                reset(engine, settings)
                started = time.perf_counter()
                listing = list_dataset(spec, args.split, limit=args.images, settings=settings)
                with distributed.Cluster(local.address) as cluster:
                    distributed.predict_split(engine, cluster, recipe, listing, args.batch_size, progress=False,
                                              settings=settings)
                seconds = time.perf_counter() - started
                assert count(engine) == args.images
            results[f"ray_{workers}"] = args.images / seconds
            print(f"Ray, {workers} one-CPU worker node(s): {args.images} images in {seconds:.1f} s, "
                  f"{results[f'ray_{workers}']:.1f} images/s", flush=True)
    finally:
        engine.dispose()
        with embedded.locked(settings.pgdata):
            embedded.stop(settings.pgdata)
        shutil.rmtree(home, ignore_errors=True)
    ratio = results["ray_2"] / results["ray_1"]
    print(f"two workers / one worker: {ratio:.2f}x (goal: 1.5x)")
    print(json.dumps({
        "images": args.images, "split": args.split, "predictor": "efficientnet-lite0", "backend": "onnx",
        "images_per_s": {"one_process": round(results["one_process"], 1), "ray_1_worker": round(results["ray_1"], 1),
                         "ray_2_workers": round(results["ray_2"], 1)},
        "ratio_2_to_1_workers": round(ratio, 2), "load_average": [round(x, 2) for x in os.getloadavg()],
    }))


if __name__ == "__main__":
    main()
