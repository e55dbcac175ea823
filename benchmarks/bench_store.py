"""The store at scale: bulk writes of predictions and codes by binary COPY, and `iwan collection
create` over N registered images (issue 18, item 4).

    python benchmarks/bench_store.py [--images 10000000] [--reference 100000]

In a temporary IWAN_HOME on the embedded PostgreSQL: N images registered as a synthetic data set
split (100 classes), their top-10 EfficientNet-Lite0 predictions and 48-bit codes with
100-dimensional embeddings generated and written through iwan.db's writers (binary COPY in
batches), then `iwan collection create` run as a user runs it (its progress bar on stderr), timed,
with its peak memory. The reference, measured in the same run on `--reference` images: the
per-row text COPY that the writers used before (psycopg's write_row, one row per rank), against
today's writers on the same rows. The USF norms must be loadable (`iwan data fetch norms`, or
IWAN_DATA_DIR). Prints one line per step and one JSON object last, with the load average.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DATASET, SPLIT, HASH_MODEL, PREDICTOR = "synthetic", "train", "synthetic-hash", "efficientnet-lite0"
CLASSES, DIM, TOP, BATCH = 100, 100, 10, 200_000


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def synthetic(start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Image ids start+1..stop, their predictions, embeddings and codes (a fixed generator per batch)."""
    rng = np.random.default_rng(start)
    n = stop - start
    ids = np.arange(start + 1, stop + 1, dtype=np.int64)
    indices = rng.integers(0, 1000, size=(n, TOP), dtype=np.int64)
    probabilities = np.sort(rng.random((n, TOP), dtype=np.float32), axis=1)[:, ::-1]
    embeddings = rng.normal(size=(n, DIM)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    codes = rng.integers(0, 2**48, size=n, dtype=np.uint64)
    return ids, indices, probabilities, embeddings, codes


def register(engine, n: int) -> None:
    import sqlalchemy as sa

    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO dataset_classes (dataset, granularity, label, name) "
            "SELECT :d, 'fine', g, 'class' || g FROM generate_series(0, :c - 1) AS g"
        ), {"d": DATASET, "c": CLASSES})
        conn.execute(sa.text(
            "INSERT INTO images (id, dataset, split, position, fine_label) "
            "SELECT g, :d, :s, g - 1, g % :c FROM generate_series(1, :n) AS g"
        ), {"d": DATASET, "s": SPLIT, "c": CLASSES, "n": n})
        conn.execute(sa.text("SELECT setval('images_id_seq', :n)"), {"n": n})


def write(engine, n: int) -> tuple[float, float]:
    """Seconds to write every image's predictions, then its codes, in batches of BATCH."""
    from tqdm import tqdm

    from iwan.db.codes import write_codes
    from iwan.db.predictions import write_predictions

    seconds = [0.0, 0.0]
    with tqdm(total=2 * n, desc="writing predictions and codes", unit="img") as bar:
        for start in range(0, n, BATCH):
            ids, indices, probabilities, embeddings, codes = synthetic(start, min(n, start + BATCH))
            started = time.perf_counter()
            with engine.begin() as conn:
                write_predictions(conn, PREDICTOR, ids, indices, probabilities)
            seconds[0] += time.perf_counter() - started
            started = time.perf_counter()
            with engine.begin() as conn:
                write_codes(conn, HASH_MODEL, ids, embeddings, codes)
            seconds[1] += time.perf_counter() - started
            bar.update(2 * len(ids))
    return seconds[0], seconds[1]


def reference(engine, n: int) -> dict[str, float]:
    """Images per second of the text COPY one row per rank that the writers used before, and of
    today's writers, on the same n rows into empty copies of the tables."""
    import sqlalchemy as sa

    from hashing.codes import to_bit_strings
    from iwan.db.codes import vector_literal, write_codes
    from iwan.db.predictions import write_predictions

    ids, indices, probabilities, embeddings, codes = synthetic(0, n)
    rates: dict[str, float] = {}
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TEMP TABLE rank_rows (model text, image_id bigint, rank smallint, "
                             "class_index smallint, probability real)"))
        conn.execute(sa.text("CREATE TEMP TABLE text_codes (LIKE hash_codes)"))
        driver = conn.connection.driver_connection
        started = time.perf_counter()
        with driver.cursor().copy("COPY rank_rows FROM STDIN") as copy:
            for image_id, row_indices, row_probabilities in zip(ids.tolist(), indices.tolist(), probabilities.tolist()):
                for rank, (class_index, probability) in enumerate(zip(row_indices, row_probabilities)):
                    copy.write_row(("reference", image_id, rank, class_index, probability))
        rates["predictions_text_per_rank"] = n / (time.perf_counter() - started)
        started = time.perf_counter()
        with driver.cursor().copy("COPY text_codes (model, image_id, code, embedding) FROM STDIN") as copy:
            for image_id, code, vector in zip(ids.tolist(), to_bit_strings(codes), embeddings):
                copy.write_row(("reference", image_id, code, vector_literal(vector)))
        rates["codes_text"] = n / (time.perf_counter() - started)
        conn.execute(sa.text("INSERT INTO images (id, dataset, split, position, fine_label) "
                             "SELECT -g, 'reference', 'r', g, 0 FROM generate_series(1, :n) AS g"), {"n": n})
        started = time.perf_counter()
        write_predictions(conn, "reference", -ids, indices, probabilities)
        rates["predictions_binary"] = n / (time.perf_counter() - started)
        started = time.perf_counter()
        write_codes(conn, "reference", -ids, embeddings, codes)
        rates["codes_binary"] = n / (time.perf_counter() - started)
        conn.rollback()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_000_000)
    parser.add_argument("--reference", type=int, default=100_000)
    parser.add_argument("--keep", action="store_true", help="Keep the temporary IWAN_HOME (its path is printed).")
    args = parser.parse_args()

    from iwan.config import settings as current_settings
    from iwan.db import embedded
    from iwan.db.engine import make_engine
    from iwan.db.migrate import upgrade
    from iwan.db.predictions import register_classes
    from iwan.tv import models

    home = Path(tempfile.mkdtemp(prefix="iwan-bench-store-"))
    settings = dataclasses.replace(current_settings(), home=home, database_url=None)
    env = {**os.environ, "IWAN_HOME": str(home)}
    env.pop("IWAN_DATABASE_URL", None)
    iwan = str(Path(sys.executable).parent / "iwan")
    engine = make_engine(settings=settings)
    result: dict = {"images": args.images, "load_average_start": load_average()}
    try:
        upgrade(engine)
        subprocess.run([iwan, "norms", "load", "--json"], env=env, check=True, stdout=subprocess.DEVNULL)
        register_classes(engine, PREDICTOR, list(models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]))
        result["reference_images_per_s"] = {k: round(v) for k, v in reference(engine, args.reference).items()}
        print(f"reference ({args.reference:,} images, load {load_average()}): {result['reference_images_per_s']}", flush=True)

        started = time.perf_counter()
        register(engine, args.images)
        result["register_s"] = round(time.perf_counter() - started, 1)
        predictions_s, codes_s = write(engine, args.images)
        result["write_images_per_s"] = {"predictions": round(args.images / predictions_s),
                                        "codes": round(args.images / codes_s)}
        print(f"written {args.images:,} images (load {load_average()}): {result['write_images_per_s']} images/s", flush=True)

        command = [iwan, "collection", "create", "synthetic", "--dataset", DATASET,
                   "--split", SPLIT, "--predictor", PREDICTOR, "--hash-model", HASH_MODEL]
        started = time.perf_counter()
        subprocess.run(command, env=env, check=True)
        result["collection_create_s"] = round(time.perf_counter() - started, 1)
        result["collection_create_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
        snapshot = home / "collections" / "synthetic.npz"
        result["snapshot_mib"] = round(snapshot.stat().st_size / 2**20) if snapshot.is_file() else None
        print(f"collection create over {args.images:,} images: {result['collection_create_s']} s, peak "
              f"{result['collection_create_peak_rss_mib']} MiB (load {load_average()})", flush=True)
    finally:
        engine.dispose()
        embedded.stop(settings.pgdata)
        if args.keep:
            print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
    result["load_average"] = load_average()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
