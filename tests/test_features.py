"""The chunked, resumable predictor pass, with EfficientNet-Lite0 at CIFAR's own 32 px, on a
small CIFAR-100 written in the official format."""

from __future__ import annotations

from dataclasses import replace

import cifar_files
import numpy as np
import pytest

from iwan.config import settings
from iwan.datasets.loaders import load_dataset
from iwan.vision.features import chunk_dir, extract, iter_chunks
from iwan.vision.predictors import load_predictor

N = 24
CHUNK = 8
BATCH = 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def predictor():
    # 32 px: no resize and 50x fewer operations than at 224, still the real network and weights.
    return load_predictor("efficientnet-lite0", image_size=32, precision="fp32")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = cifar_files.write_cifar100(tmp_path_factory.mktemp("cifar100"), cifar_files.images(N), list(range(N)))
    return load_dataset(f"cifar100:{root}", "train")


def cache():
    """The cache folder of the IWAN_HOME in force now (a test may move it)."""
    return settings().cache_dir


class Interrupted(Exception):
    pass


def _counting(predictor, monkeypatch, fail_after=None) -> list[int]:
    """Counts the images that reach `predictor.predict`; raises once `fail_after` batches ran."""
    seen: list[int] = []
    real = type(predictor).predict

    def predict(images, *args, **kwargs):
        if fail_after is not None and len(seen) == fail_after:
            raise Interrupted
        seen.append(len(images))
        return real(predictor, images, *args, **kwargs)

    monkeypatch.setattr(predictor, "predict", predict)
    return seen


def test_extraction_matches_direct_predictions_and_is_stored_in_chunks(predictor, dataset):
    result = extract(predictor, dataset, batch_size=BATCH, progress=False, chunk_size=CHUNK, cache_dir=cache())
    direct = predictor.predict(dataset.images, features=True, batch_size=BATCH)

    assert result.indices.shape == (N, 10) and result.features.shape == (N, 1280)
    assert result.features.dtype == np.float16
    np.testing.assert_array_equal(result.indices, direct.indices)
    np.testing.assert_array_equal(result.probabilities, direct.probabilities)
    np.testing.assert_array_equal(result.features, direct.features.astype(np.float16))
    files = sorted(p.name for p in chunk_dir(predictor, dataset, cache_dir=cache()).iterdir())
    assert files == ["00000000.npz", "00000008.npz", "00000016.npz"]


def test_interrupted_extraction_resumes_at_the_first_missing_chunk(predictor, dataset, tmp_path, monkeypatch):
    uninterrupted = extract(predictor, dataset, batch_size=BATCH, progress=False, chunk_size=CHUNK, cache_dir=cache())
    monkeypatch.setenv("IWAN_HOME", str(tmp_path / "second-home"))

    # The third batch is the first of the second chunk: only the first chunk is finished.
    _counting(predictor, monkeypatch, fail_after=2)
    with pytest.raises(Interrupted):
        extract(predictor, dataset, batch_size=BATCH, progress=False, chunk_size=CHUNK, cache_dir=cache())
    assert [p.name for p in chunk_dir(predictor, dataset, cache_dir=cache()).iterdir()] == ["00000000.npz"]

    seen = _counting(predictor, monkeypatch)
    resumed = extract(predictor, dataset, batch_size=BATCH, progress=False, chunk_size=CHUNK, cache_dir=cache())

    assert seen == [4, 4, 4, 4]  # images 8-23 only
    np.testing.assert_array_equal(resumed.indices, uninterrupted.indices)
    np.testing.assert_array_equal(resumed.probabilities, uninterrupted.probabilities)
    np.testing.assert_array_equal(resumed.features, uninterrupted.features)


def test_chunks_of_changed_images_are_computed_again(predictor, dataset, monkeypatch):
    extract(predictor, dataset, batch_size=BATCH, progress=False, chunk_size=CHUNK, cache_dir=cache())
    images = dataset.images.copy()
    images[10] = 255 - images[10]
    changed = replace(dataset, images=images)

    seen = _counting(predictor, monkeypatch)
    result = extract(predictor, changed, batch_size=BATCH, progress=False, chunk_size=CHUNK, cache_dir=cache())

    assert seen == [4, 4]  # the middle chunk only
    batch = predictor.predict(images[8:12], features=True)
    np.testing.assert_array_equal(result.features[8:12], batch.features.astype(np.float16))


def test_iterator_skips_the_chunks_it_is_told_to(predictor, dataset, monkeypatch):
    seen = _counting(predictor, monkeypatch)

    chunks = list(
        iter_chunks(
            predictor, dataset, batch_size=BATCH, progress=False, chunk_size=CHUNK,
            skip=lambda start, stop: start == 8, cache_dir=cache(),
        )
    )

    assert [(c.start, c.stop) for c in chunks] == [(0, 8), (16, 24)]
    assert chunks[1].indices.shape == (8, 10) and seen == [4, 4, 4, 4]


def test_flipped_features_are_cached_apart(predictor, dataset):
    plain = extract(predictor, dataset, batch_size=BATCH, progress=False, chunk_size=CHUNK, cache_dir=cache())
    flipped = extract(predictor, dataset, batch_size=BATCH, progress=False, chunk_size=CHUNK, flip=True, cache_dir=cache())

    mirrored = predictor.predict(dataset.images[:, :, ::-1], features=True, batch_size=BATCH)
    np.testing.assert_array_equal(flipped.features, mirrored.features.astype(np.float16))
    assert not np.array_equal(flipped.features, plain.features)
    assert chunk_dir(predictor, dataset, flip=True, cache_dir=cache()) != chunk_dir(predictor, dataset, cache_dir=cache())
    assert chunk_dir(predictor, dataset, flip=True, cache_dir=cache()).name == "cifar100-train-flip"
