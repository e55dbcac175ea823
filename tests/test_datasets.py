"""Data set loading: CIFAR written in the official formats (the real copies where present), tiny
image folders, and the errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import cifar_files
import numpy as np
import pytest
from cifar_files import CIFAR10_CLASSES
from PIL import Image

from iwan.config import DEFAULT_MAX_IMAGE_PIXELS, settings
from iwan.datasets import loaders as datasets
from iwan.datasets.loaders import (
    DatasetFormatError,
    DatasetNotFoundError,
    load_dataset,
    load_image,
)

# Cattle first, as in the official train split, then every class once.
SAMPLE_FINE = [19, 29, 0, 11, 1, 86, 90, 28, 23, 31, *range(100)]


@pytest.fixture
def sample(tmp_path) -> Path:
    """A small CIFAR-100 in the official python format (train only, like the real sample)."""
    return cifar_files.write_cifar100(tmp_path / "sample", cifar_files.images(len(SAMPLE_FINE)), SAMPLE_FINE)


def test_cifar100_python_format_round_trips_pixels_and_labels(sample):
    data = load_dataset(f"cifar100:{sample}", "train")

    assert (data.name, data.split, len(data)) == ("cifar100", "train", len(SAMPLE_FINE))
    assert data.images.shape == (len(SAMPLE_FINE), 32, 32, 3) and data.images.dtype == np.uint8
    np.testing.assert_array_equal(data.images, cifar_files.images(len(SAMPLE_FINE)))
    assert data.fine_labels.dtype == np.int64 and data.coarse_labels.dtype == np.int64
    assert data.fine_labels.tolist() == SAMPLE_FINE
    assert data.coarse_labels.tolist() == [f // 5 for f in SAMPLE_FINE]
    assert data.class_names[data.fine_labels[0]] == "cattle"
    assert data.coarse_class_names == cifar_files.CIFAR100_COARSE
    assert len(data.class_names) == 100 and data.paths is None


@pytest.mark.real_data("cifar100-sample")
def test_real_cifar100_sample_has_675_images_with_fine_and_coarse_labels(shared_data):
    data = load_dataset(f"cifar100:{shared_data / 'cifar100-train-sample'}", "train")

    assert (data.name, data.split, len(data)) == ("cifar100", "train", 675)
    assert data.images.shape == (675, 32, 32, 3) and data.images.dtype == np.uint8
    # The official train split starts with cattle (fine 19), in large omnivores and herbivores (11).
    assert data.class_names[data.fine_labels[0]] == "cattle"
    assert data.coarse_class_names[data.coarse_labels[0]] == "large_omnivores_and_herbivores"
    assert set(data.fine_labels.tolist()) == set(range(100))  # the sample covers every class
    assert data.fine_labels.tolist()[:2] == [19, 29]


@pytest.mark.real_data("cifar100-sample")
def test_written_cifar100_files_are_built_like_the_official_ones(shared_data, tmp_path):
    """The test writer's pickles against the official meta (and the sample's train file)."""
    official = shared_data / "cifar100-train-sample" / "cifar-100-python"
    written = cifar_files.write_cifar100(tmp_path, cifar_files.images(3), [19, 29, 0]) / "cifar-100-python"

    def shape(path):
        with path.open("rb") as f:
            content = pickle.load(f, encoding="bytes")
        return {k: (type(k), type(v), type(v[0]) if isinstance(v, list) else None) for k, v in content.items()}

    assert shape(written / "meta") == shape(official / "meta")
    with (official / "meta").open("rb") as f:
        assert pickle.load(f, encoding="bytes") == pickle.loads((written / "meta").read_bytes(), encoding="bytes")
    # The sample's train file was cut from the official one and pickled again with str keys.
    with (official / "train").open("rb") as f:
        train = pickle.load(f, encoding="latin1")
    assert {k.encode() for k in train} == set(pickle.loads((written / "train").read_bytes(), encoding="bytes"))


def test_cifar100_path_may_name_the_python_folder_itself(sample):
    outer = load_dataset(f"cifar100:{sample}", "train", limit=50)
    inner = load_dataset(f"cifar100:{sample / 'cifar-100-python'}", "train", limit=50)

    assert len(outer) == 50
    np.testing.assert_array_equal(outer.images, inner.images)
    np.testing.assert_array_equal(outer.coarse_labels, inner.coarse_labels)


def test_plain_cifar100_reads_the_data_dir(sample, monkeypatch):
    monkeypatch.setenv("IWAN_DATA_DIR", str(sample))

    data = load_dataset("cifar100", "train", limit=7)

    assert len(data) == 7 and data.fine_labels.tolist() == SAMPLE_FINE[:7]


def test_missing_split_says_which_splits_exist(sample):
    with pytest.raises(DatasetNotFoundError, match=r"no 'test' split \(splits present: train\)"):
        load_dataset(f"cifar100:{sample}", "test")


def test_cifar10_falls_back_to_the_jpeg_folders_and_takes_the_first_images(tmp_path, monkeypatch):
    cifar_files.write_cifar10_jpgs(tmp_path, per_class=3, splits=("test",))
    monkeypatch.setenv("IWAN_DATA_DIR", str(tmp_path))

    data = load_dataset("cifar10", "test", limit=5)

    assert (data.name, len(data), data.images.shape[1:]) == ("cifar10", 5, (32, 32, 3))
    assert data.class_names == CIFAR10_CLASSES
    assert data.fine_labels.tolist() == [0, 0, 0, 1, 1]  # class folders in order: airplanes first
    assert data.paths[0] == tmp_path / "cifar10-jpg" / "test" / "airplane" / "0000.jpg"
    assert data.paths[3] == tmp_path / "cifar10-jpg" / "test" / "automobile" / "0000.jpg"
    np.testing.assert_array_equal(data.images[3], load_image(data.paths[3], max_pixels=DEFAULT_MAX_IMAGE_PIXELS))
    assert data.coarse_labels is None
    assert len(load_dataset("cifar10", "test")) == 30


@pytest.mark.real_data("cifar10-jpg")
def test_real_cifar10_jpegs(shared_data, monkeypatch):
    monkeypatch.setenv("IWAN_DATA_DIR", str(shared_data))

    data = load_dataset("cifar10", "test", limit=25)

    assert (data.name, len(data), data.images.shape[1:]) == ("cifar10", 25, (32, 32, 3))
    assert data.class_names == CIFAR10_CLASSES and data.fine_labels.tolist() == [0] * 25
    assert data.paths[0] == shared_data / "cifar10-jpg" / "test" / "airplane" / "0000.jpg"
    np.testing.assert_array_equal(data.images[3], load_image(data.paths[3], max_pixels=DEFAULT_MAX_IMAGE_PIXELS))


def test_cifar10_official_pickles_come_first(tmp_path, monkeypatch):
    pixels = cifar_files.write_cifar10_batches(tmp_path, per_batch=2)
    monkeypatch.setenv("IWAN_DATA_DIR", str(tmp_path))

    train, test = load_dataset("cifar10", "train"), load_dataset("cifar10", "test")

    assert len(train) == 10 and len(test) == 2
    assert train.fine_labels.tolist()[:4] == [0, 9, 1, 8]
    # Pickled rows are channel-major: red plane, then green, then blue.
    np.testing.assert_array_equal(test.images[1, :, :, 2].ravel(), pixels[11, 2048:])
    assert train.class_names == CIFAR10_CLASSES


def test_damaged_cifar_pickle_names_the_file(tmp_path, monkeypatch):
    cifar_files.write_cifar10_batches(tmp_path, per_batch=2)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    monkeypatch.setenv("IWAN_DATA_DIR", str(tmp_path))

    with pytest.raises(DatasetFormatError, match="test_batch: not a CIFAR python pickle"):
        load_dataset("cifar10", "test")


def _write_png(path: Path, value: int, size=(4, 4)) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((size[1], size[0], 3), value, dtype=np.uint8)
    pixels[0, 0] = (value, 255 - value, 7)
    Image.fromarray(pixels).save(path)
    return pixels


def test_image_folder_with_split_folders_sorts_classes_like_torchvision(tmp_path):
    root = tmp_path / "photos"
    dog = _write_png(root / "train" / "dog" / "a.png", 10)
    cat_b = _write_png(root / "train" / "cat" / "b.png", 20)
    cat_a = _write_png(root / "train" / "cat" / "a.png", 30)
    _write_png(root / "test" / "cat" / "z.png", 40)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")

    data = load_dataset(f"imagefolder:{root}", "train")

    assert (data.name, data.split, data.class_names) == (f"imagefolder:{root.resolve()}", "train", ["cat", "dog"])
    assert data.fine_labels.tolist() == [0, 0, 1]
    assert [p.name for p in data.paths] == ["a.png", "b.png", "a.png"]
    np.testing.assert_array_equal(data.images, np.stack([cat_a, cat_b, dog]))
    assert len(load_dataset(f"imagefolder:{root}", "test")) == 1
    with pytest.raises(DatasetNotFoundError, match=r"no 'val' split folder \(folders present: test, train\)"):
        load_dataset(f"imagefolder:{root}", "val")


def test_image_folder_of_class_folders_is_one_split(tmp_path):
    _write_png(tmp_path / "cat" / "a.png", 1)
    _write_png(tmp_path / "dog" / "a.png", 2)

    data = load_dataset(f"imagefolder:{tmp_path}", "train", limit=1)

    assert len(data) == 1 and data.class_names == ["cat", "dog"]


def test_decoded_image_folder_is_cached_until_a_file_changes(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    _write_png(root / "cat" / "a.png", 1)
    _write_png(root / "dog" / "a.png", 2)
    first = load_dataset(f"imagefolder:{root}", "train")
    assert len(list((settings().cache_dir / "datasets").glob("*.npy"))) == 1

    real_decode = datasets._decode
    monkeypatch.setattr(datasets, "_decode", lambda files: pytest.fail("decoded despite the cache"))
    np.testing.assert_array_equal(load_dataset(f"imagefolder:{root}", "train").images, first.images)

    monkeypatch.setattr(datasets, "_decode", real_decode)
    changed = _write_png(root / "dog" / "a.png", 99, size=(4, 4))
    np.testing.assert_array_equal(load_dataset(f"imagefolder:{root}", "train").images[1], changed)


def test_images_of_different_sizes_name_the_odd_file(tmp_path):
    _write_png(tmp_path / "cat" / "a.png", 1, size=(4, 4))
    _write_png(tmp_path / "cat" / "b.png", 1, size=(5, 3))

    with pytest.raises(
        DatasetFormatError, match=r"b.png \(image 1\) is 5x3 but the images before it are 4x4"
    ):
        load_dataset(f"imagefolder:{tmp_path}", "train")


def test_missing_image_folder_and_unknown_spec(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'nowhere'}", "train")
    with pytest.raises(ValueError, match="spec 'mnist' is unknown"):
        load_dataset("mnist", "train")
    with pytest.raises(ValueError, match="split 'val' is unknown for CIFAR"):
        load_dataset("cifar10", "val")


def test_load_image_reads_rgb_and_explains_failures(tmp_path):
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((3, 5), 77, dtype=np.uint8)).save(gray)
    fake = tmp_path / "fake.jpg"
    fake.write_text("this is text")

    image = load_image(gray, max_pixels=DEFAULT_MAX_IMAGE_PIXELS)

    assert image.shape == (3, 5, 3) and image.dtype == np.uint8 and (image == 77).all()
    with pytest.raises(FileNotFoundError, match="missing.jpg: no such image file"):
        load_image(tmp_path / "missing.jpg", max_pixels=DEFAULT_MAX_IMAGE_PIXELS)
    with pytest.raises(DatasetFormatError, match="fake.jpg: not an image Pillow can read"):
        load_image(fake, max_pixels=DEFAULT_MAX_IMAGE_PIXELS)
