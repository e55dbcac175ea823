"""The one predictor pass over a data set that everything downstream reuses.

Each chunk of `CHUNK_SIZE` images is saved as soon as it is done, under
`<cache_dir> / "extract" / <predictor> / <dataset>-<split>[-flip]` (`cache_dir`: the settings'
`cache_dir`, given by the caller), so an interrupted
run resumes at the first missing chunk. A chunk file records a hash of its images and the
predictor's `cache_key`; a chunk whose images or predictor changed is computed again.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from iwan.config import DEFAULT_BATCH_SIZE, STORED_PREDICTIONS
from iwan.datasets.loaders import ImageDataset
from iwan.vision.predictors import Predictor

CHUNK_SIZE = 1024


@dataclass(frozen=True)
class Chunk:
    start: int
    stop: int
    indices: np.ndarray
    """int64 (stop - start, STORED_PREDICTIONS): ImageNet classes, most probable first."""
    probabilities: np.ndarray
    """float32 (stop - start, STORED_PREDICTIONS), descending."""
    features: np.ndarray
    """float16 (stop - start, F): pooled penultimate activations."""


@dataclass(frozen=True)
class Extraction:
    indices: np.ndarray
    probabilities: np.ndarray
    features: np.ndarray


def chunk_dir(predictor: Predictor, dataset: ImageDataset, flip: bool = False, *, cache_dir: Path) -> Path:
    """Where the chunks of `dataset` under `predictor` are cached in `cache_dir` (Settings.cache_dir)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in dataset.name)
    folder = f"{safe}-{dataset.split}{'-flip' if flip else ''}"
    return cache_dir / "extract" / predictor.name / folder


def iter_chunks(
    predictor: Predictor,
    dataset: ImageDataset,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    flip: bool = False,
    skip: Callable[[int, int], bool] | None = None,
    chunk_size: int = CHUNK_SIZE,
    *,
    cache_dir: Path,
) -> Iterator[Chunk]:
    """Chunks in order, from the cache in `cache_dir` (Settings.cache_dir) or computed;
    `skip(start, stop)` True leaves one out.

    `flip` predicts horizontally mirrored images (augmentation), cached separately.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be >= 1")
    folder = chunk_dir(predictor, dataset, flip, cache_dir=cache_dir)
    n = len(dataset)
    desc = f"{predictor.name} {dataset.name} {dataset.split}{' flipped' if flip else ''}"
    with tqdm(total=n, desc=desc, unit="img", disable=not progress, smoothing=0.1) as bar:
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            if skip is not None and skip(start, stop):
                bar.update(stop - start)
                continue
            images = dataset.images[start:stop]
            if flip:
                images = images[:, :, ::-1]
            path = folder / f"{start:08d}.npz"
            image_hash = hashlib.blake2b(np.ascontiguousarray(images).data, digest_size=16).hexdigest()
            chunk = _read_chunk(path, start, stop, image_hash, predictor.cache_key)
            if chunk is None:
                chunk = _compute_chunk(predictor, images, start, stop, batch_size, bar)
                _write_chunk(path, chunk, image_hash, predictor.cache_key)
            else:
                bar.update(stop - start)
            yield chunk


def extract(
    predictor: Predictor,
    dataset: ImageDataset,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    flip: bool = False,
    chunk_size: int = CHUNK_SIZE,
    *,
    cache_dir: Path,
) -> Extraction:
    """Top-10 predictions and float16 features of every image of `dataset`, cached in chunks in
    `cache_dir` (Settings.cache_dir)."""
    chunks = list(iter_chunks(predictor, dataset, batch_size, progress, flip, chunk_size=chunk_size, cache_dir=cache_dir))
    if not chunks:
        return Extraction(
            indices=np.empty((0, STORED_PREDICTIONS), np.int64),
            probabilities=np.empty((0, STORED_PREDICTIONS), np.float32),
            features=np.empty((0, predictor.feature_dim), np.float16),
        )
    return Extraction(
        indices=np.concatenate([c.indices for c in chunks]),
        probabilities=np.concatenate([c.probabilities for c in chunks]),
        features=np.concatenate([c.features for c in chunks]),
    )


def _compute_chunk(predictor, images, start, stop, batch_size, bar) -> Chunk:
    parts = []
    for i in range(0, len(images), batch_size):
        parts.append(predictor.predict(images[i : i + batch_size], top=STORED_PREDICTIONS, features=True))
        bar.update(len(parts[-1].indices))
    return Chunk(
        start=start,
        stop=stop,
        indices=np.concatenate([p.indices for p in parts]),
        probabilities=np.concatenate([p.probabilities for p in parts]),
        features=np.concatenate([p.features for p in parts]).astype(np.float16),
    )


def _read_chunk(path: Path, start: int, stop: int, image_hash: str, key: str) -> Chunk | None:
    """The cached chunk, or None when it is missing, damaged or made from other images or weights."""
    try:
        with np.load(path) as stored:
            if (
                int(stored["stop"]) != stop
                or str(stored["image_hash"]) != image_hash
                or str(stored["predictor"]) != key
            ):
                return None
            return Chunk(
                start=start,
                stop=stop,
                indices=stored["indices"].astype(np.int64),
                probabilities=stored["probabilities"],
                features=stored["features"],
            )
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def _write_chunk(path: Path, chunk: Chunk, image_hash: str, key: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written aside and renamed: an interruption never leaves a truncated chunk behind.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        np.savez(
            f,
            stop=chunk.stop,
            image_hash=image_hash,
            predictor=key,
            indices=chunk.indices.astype(np.int16),
            probabilities=chunk.probabilities,
            features=chunk.features,
        )
    os.replace(tmp, path)
