"""Small CIFAR data sets for tests, written the way the official ones are.

The official `cifar-100-python` and `cifar-10-batches-py` files are Python 2 pickles (protocol 2)
of dicts whose keys and strings are Python 2 `str`: loaded with `encoding="bytes"` the keys are
b'data', b'fine_labels', ...; with `encoding="latin1"` (torchvision's way) they are str. `data`
is a uint8 array of one row per image, channel-major (1024 red, 1024 green, 1024 blue values).
The CIFAR-10 JPEG export keeps torchvision's ImageFolder layout: `<split>/<class>/NNNN.jpg`.
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from iwan.datasets.hierarchies import shipped_hierarchy

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_COARSE = [
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
    "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees",
    "vehicles_1", "vehicles_2",
]


def cifar100_classes() -> list[str]:
    """The 100 fine class names in label order, from the copy the repo ships."""
    lines = (shipped_hierarchy("cifar100").parent / "class_names.txt").read_text().splitlines()
    names = dict(line.split(maxsplit=1) for line in lines if line.strip())
    return [names[str(i)] for i in range(100)]


class _Python2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 `str` (SHORT_BINSTRING / BINSTRING), as cPickle did."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def python2_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def images(n: int, seed: int = 0, size: int = 32) -> np.ndarray:
    """`n` distinct uint8 RGB images with some structure (a coloured square on a gradient)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        base = np.stack([np.add.outer(ramp, ramp) / 2] * 3, axis=-1) * rng.uniform(0.3, 1.0, 3)
        top, left = rng.integers(0, size // 2, 2)
        base[top : top + size // 2, left : left + size // 2] = rng.integers(0, 256, 3)
        out[i] = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
    return out


def channel_major(pixels: np.ndarray) -> np.ndarray:
    """(n, 32, 32, 3) images as CIFAR's (n, 3072) rows."""
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2).reshape(len(pixels), -1))


def write_cifar100(
    root: Path, pixels: np.ndarray, fine: list[int], coarse: list[int] | None = None, split: str = "train"
) -> Path:
    """`root/cifar-100-python` with the `split` file ("train" or "test") and `meta`; returns root.

    Coarse labels default to fine // 5, which is not CIFAR's grouping but a consistent one."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    fine = [int(f) for f in fine]
    coarse = [f // 5 for f in fine] if coarse is None else [int(c) for c in coarse]
    batch = {
        b"filenames": [f"synthetic_s_{i:06d}.png".encode() for i in range(len(fine))],
        b"batch_label": b"training batch 1 of 1" if split == "train" else b"testing batch 1 of 1",
        b"fine_labels": fine,
        b"coarse_labels": coarse,
        b"data": channel_major(pixels),
    }
    (folder / split).write_bytes(python2_pickle(batch))
    meta = {
        b"fine_label_names": [n.encode() for n in cifar100_classes()],
        b"coarse_label_names": [n.encode() for n in CIFAR100_COARSE],
    }
    (folder / "meta").write_bytes(python2_pickle(meta))
    return root


def write_cifar10_batches(root: Path, per_batch: int = 2, seed: int = 0) -> np.ndarray:
    """`root/cifar-10-batches-py`: data_batch_1..5 and test_batch of `per_batch` images each,
    batch i labelled i, 9 - i, i, ...; returns all pixel rows in file order."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rows = channel_major(images(6 * per_batch, seed))
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        label = "testing batch 1 of 1" if name == "test_batch" else f"training batch {i + 1} of 5"
        batch = {
            b"batch_label": label.encode(),
            b"labels": [i if j % 2 == 0 else 9 - i for j in range(per_batch)],
            b"data": rows[i * per_batch : (i + 1) * per_batch],
            b"filenames": [f"synthetic_{i}_{j}.png".encode() for j in range(per_batch)],
        }
        (folder / name).write_bytes(python2_pickle(batch))
    meta = {b"num_cases_per_batch": 10000, b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(python2_pickle(meta))
    return rows


def write_cifar10_jpgs(root: Path, per_class: int, splits=("train", "test"), seed: int = 0) -> Path:
    """`root/cifar10-jpg/<split>/<class>/NNNN.jpg`, `per_class` images per class; returns root."""
    pixels = images(len(splits) * 10 * per_class, seed)
    n = 0
    for split in splits:
        for name in CIFAR10_CLASSES:
            folder = root / "cifar10-jpg" / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(pixels[n]).save(folder / f"{i:04d}.jpg", quality=95)
                n += 1
    return root
