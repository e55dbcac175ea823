"""Runs the predictor pass over data sets into the chunk cache (resumable; rerun to continue).

Example (the project's standing cache):
    IWAN_HOME=.iwan-home IWAN_DATA_DIR=../shared/data python scripts/extract_features.py \
        --predictor efficientnet-lite0 --backend onnx \
        --dataset cifar10 train --dataset cifar10 test \
        --dataset cifar100:../shared/data/cifar100-train-sample train
"""

from __future__ import annotations

import argparse
import time

from iwan.config import DEFAULT_BATCH_SIZE, DEFAULT_PREDICTOR, settings
from iwan.datasets.loaders import load_dataset
from iwan.vision.features import chunk_dir, extract
from iwan.vision.predictors import BACKENDS, INTERPOLATIONS, load_predictor


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--predictor", default=DEFAULT_PREDICTOR)
    parser.add_argument("--weights", help="a local state dict instead of the published weights")
    parser.add_argument("--backend", choices=BACKENDS, default="onnx")
    parser.add_argument("--interpolation", choices=INTERPOLATIONS)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--flip", action="store_true", help="also the horizontally flipped images")
    parser.add_argument(
        "--dataset", nargs=2, action="append", required=True, metavar=("SPEC", "SPLIT"),
        help="e.g. cifar10 train; repeat for several",
    )
    args = parser.parse_args()
    environment = settings()  # a script is an entry point: the environment, read once
    predictor = load_predictor(
        args.predictor, weights=args.weights, backend=args.backend, interpolation=args.interpolation,
        settings=environment,
    )
    print(f"predictor {predictor.cache_key}", flush=True)
    for spec, split in args.dataset:
        dataset = load_dataset(spec, split, settings=environment)
        for flip in (False, True) if args.flip else (False,):
            started = time.perf_counter()
            result = extract(predictor, dataset, batch_size=args.batch_size, flip=flip, cache_dir=environment.cache_dir)
            seconds = time.perf_counter() - started
            print(
                f"done {spec} {split}{' flipped' if flip else ''}: {len(result.indices)} images in "
                f"{seconds:.0f} s ({len(result.indices) / seconds:.1f} img/s, cached chunks included) "
                f"-> {chunk_dir(predictor, dataset, flip, cache_dir=environment.cache_dir)}",
                flush=True,
            )


if __name__ == "__main__":
    main()
