"""Image data sets as one uint8 array plus labels: CIFAR-100, CIFAR-10 and image folders.

Specs: `cifar100`, `cifar100:PATH`, `cifar10`, `imagefolder:PATH`. Local copies in the
settings' `data_dir` come first; the CIFAR sets fall back to downloading the official archive
(`iwan.datasets.fetch`: checked, resumable).
Decoded image folders are cached as .npy under the settings' `cache_dir` so that later runs
skip the JPEG decoding. `load_dataset` is an entry point: given no settings, it reads them from
the environment (iwan.config.settings); the helpers below it take what they need.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from iwan import config
from iwan.config import CIFAR_BASE_URL, Settings
from iwan.datasets import fetch

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CIFAR_SPLITS = ("train", "test")
CIFAR100_URL = CIFAR_BASE_URL + "cifar-100-python.tar.gz"
CIFAR10_URL = CIFAR_BASE_URL + "cifar-10-python.tar.gz"


class DatasetNotFoundError(FileNotFoundError):
    """A data set or split is not where it should be; the message says how to get it."""


class DatasetFormatError(ValueError):
    """A data set file exists but cannot be read as what it claims to be."""


@dataclass
class ImageDataset:
    name: str
    split: str
    images: np.ndarray
    """uint8 (N, H, W, 3), RGB."""
    fine_labels: np.ndarray
    """int64 (N,)."""
    coarse_labels: np.ndarray | None
    class_names: list[str]
    coarse_class_names: list[str] | None
    paths: list[Path] | None
    """The image files, for image folders; None for the CIFAR pickles."""

    def __len__(self) -> int:
        return len(self.images)


def load_dataset(spec: str, split: str, limit: int | None = None, *, settings: Settings | None = None) -> ImageDataset:
    """The data set that `spec` names (cifar100[:PATH], cifar10, imagefolder:PATH), first `limit` images.

    `settings`: where local copies, downloads and the decoded cache live, where CIFAR comes from,
    the largest image; read from the environment when not given."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit={limit} must be >= 0 (or None for the whole split)")
    settings = settings or config.settings()
    kind, _, arg = spec.partition(":")
    if kind == "cifar100":
        dataset = _load_cifar100(Path(arg).expanduser() if arg else None, split, settings)
    elif kind == "cifar10" and not arg:
        dataset = _load_cifar10(split, limit, settings)
    elif kind == "imagefolder" and arg:
        dataset = _load_image_folder(Path(arg).expanduser(), split, limit, settings)
    else:
        raise ValueError(
            f"data set spec {spec!r} is unknown: use cifar100, cifar100:PATH, cifar10 or imagefolder:PATH"
        )
    return _take(dataset, limit)


@dataclass(frozen=True)
class ImageListing:
    """A split's images as a list, for workers elsewhere to decode: the files of an image folder
    (not decoded here), or the pixels of a data set without files (the CIFAR pickles); with
    their labels, as `iwan.db.images.register` reads them."""

    name: str
    split: str
    fine_labels: np.ndarray
    coarse_labels: np.ndarray | None
    class_names: list[str]
    coarse_class_names: list[str] | None
    paths: list[Path] | None
    """The image files, in the data set's order; None when `images` holds the pixels."""
    images: np.ndarray | None
    """uint8 (N, H, W, 3) of a data set without files; None for an image folder."""

    def __len__(self) -> int:
        return len(self.fine_labels)


def list_dataset(spec: str, split: str, limit: int | None = None, *, settings: Settings) -> ImageListing:
    """The split that `spec` names as `load_dataset` reads it (same order, labels, name), without
    decoding its files: an image folder (or CIFAR-10 as JPEGs) lists its files, the CIFAR
    pickles give their pixels."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit={limit} must be >= 0 (or None for the whole split)")
    kind, _, arg = spec.partition(":")
    folder = None
    if kind == "imagefolder" and arg:
        path = Path(arg).expanduser()
        if not path.is_dir():
            raise DatasetNotFoundError(f"image folder {path} does not exist: pass a folder of class folders")
        folder, name = _image_folder_split(path, split), registered_name(f"imagefolder:{path}")
    elif kind == "cifar10" and not arg:
        _check_cifar_split(split)
        root = settings.data_dir
        if not (root / "cifar-10-batches-py").is_dir() and (root / CIFAR10_JPEGS).is_dir():
            folder, name = _image_folder_split(root / CIFAR10_JPEGS, split), "cifar10"
    if folder is None:
        dataset = load_dataset(spec, split, limit, settings=settings)
        return ImageListing(dataset.name, dataset.split, dataset.fine_labels, dataset.coarse_labels,
                            dataset.class_names, dataset.coarse_class_names, None, dataset.images)
    classes, files, labels = _list_images(folder)
    n = len(files) if limit is None else min(limit, len(files))
    return ImageListing(name, split, labels[:n], None, classes, None, files[:n], None)


def registered_name(spec: str) -> str:
    """The name a data set is registered under in the database.

    An image folder is named by its resolved path: two folders that share a last name
    (`/a/imgs`, `/b/imgs`) are different data sets, and `imagefolder:./imgs` is the same data
    set wherever it is run from. CIFAR-100 from a local copy (`cifar100:PATH`) is CIFAR-100, as
    its loader names it. Other specs name themselves.
    """
    kind, _, arg = spec.partition(":")
    if kind == "imagefolder" and arg:
        return f"imagefolder:{Path(arg).expanduser().resolve()}"
    if kind == "cifar100":
        return kind
    return spec


def load_image(path: str | Path, min_side: int | None = None, *, max_pixels: int) -> np.ndarray:
    """One untrusted image file as uint8 (H, W, 3) RGB, through the one decoder
    (iwan.vision.decode): any format Pillow reads, refused from its header when it has more than
    `max_pixels` pixels (Settings.max_image_pixels), decoded at a reduced size whose shorter side
    stays >= `min_side` when given. DatasetFormatError saying why not."""
    from iwan.vision.decode import DecodePolicy, ImageRefused, decode_image

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    try:
        return decode_image(path, str(path), DecodePolicy(max_pixels=max_pixels, formats=None, min_side=min_side)).pixels
    except ImageRefused as err:
        raise DatasetFormatError(str(err)) from None


def _take(dataset: ImageDataset, limit: int | None) -> ImageDataset:
    if limit is None or limit >= len(dataset):
        return dataset
    return ImageDataset(
        name=dataset.name,
        split=dataset.split,
        images=dataset.images[:limit],
        fine_labels=dataset.fine_labels[:limit],
        coarse_labels=None if dataset.coarse_labels is None else dataset.coarse_labels[:limit],
        class_names=dataset.class_names,
        coarse_class_names=dataset.coarse_class_names,
        paths=None if dataset.paths is None else dataset.paths[:limit],
    )


def _check_cifar_split(split: str) -> None:
    if split not in CIFAR_SPLITS:
        raise ValueError(f"split {split!r} is unknown for CIFAR: use one of {CIFAR_SPLITS}")


# --- CIFAR-100 -------------------------------------------------------------------------------


def _load_cifar100(path: Path | None, split: str, settings: Settings) -> ImageDataset:
    _check_cifar_split(split)
    if path is None:
        root = settings.data_dir
        folder = root / "cifar-100-python"
        if not folder.is_dir():
            _download("cifar100", settings)
    else:
        folder = path if path.name == "cifar-100-python" else path / "cifar-100-python"
        if not folder.is_dir():
            raise DatasetNotFoundError(
                f"CIFAR-100 not found in {folder}: pass the folder that holds cifar-100-python/ "
                f"(extracted from {CIFAR100_URL})"
            )
    split_file = folder / split
    if not split_file.is_file():
        present = ", ".join(s for s in CIFAR_SPLITS if (folder / s).is_file()) or "none"
        raise DatasetNotFoundError(
            f"CIFAR-100 in {folder} has no {split!r} split (splits present: {present}): "
            f"use another split, or extract the full {CIFAR100_URL} there"
        )
    batch = _unpickle(split_file, "data", "fine_labels", "coarse_labels")
    meta = _unpickle(folder / "meta", "fine_label_names", "coarse_label_names")
    return ImageDataset(
        name="cifar100",
        split=split,
        images=_cifar_images(batch["data"], split_file),
        fine_labels=np.asarray(batch["fine_labels"], dtype=np.int64),
        coarse_labels=np.asarray(batch["coarse_labels"], dtype=np.int64),
        class_names=list(meta["fine_label_names"]),
        coarse_class_names=list(meta["coarse_label_names"]),
        paths=None,
    )


# --- CIFAR-10 --------------------------------------------------------------------------------


def _load_cifar10(split: str, limit: int | None, settings: Settings) -> ImageDataset:
    _check_cifar_split(split)
    root = settings.data_dir
    pickles, jpegs = root / "cifar-10-batches-py", root / CIFAR10_JPEGS
    if not pickles.is_dir() and jpegs.is_dir():
        return _read_image_folder(_image_folder_split(jpegs, split), "cifar10", split, limit, settings)
    if not pickles.is_dir():
        _download("cifar10", settings)
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    batches = [(pickles / name, _unpickle(pickles / name, "data", "labels")) for name in names]
    return ImageDataset(
        name="cifar10",
        split=split,
        images=np.concatenate([_cifar_images(batch["data"], path) for path, batch in batches]),
        fine_labels=np.concatenate([np.asarray(b["labels"], dtype=np.int64) for _, b in batches]),
        coarse_labels=None,
        class_names=list(_unpickle(pickles / "batches.meta", "label_names")["label_names"]),
        coarse_class_names=None,
        paths=None,
    )


# --- the official CIFAR python format, and its download ----------------------------------------


class _ForbiddenGlobal(Exception):
    """A pickle names a callable outside what CIFAR files hold."""


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds only what the official CIFAR files hold.

    A pickle can call any importable function while loading; these files are user-supplied
    (`cifar100:PATH`, IWAN_DATA_DIR), so only numpy's array reconstruction and the bytes
    decoding of protocol 2 are admitted. Dicts, lists, str, bytes and ints need no global.
    """

    ALLOWED = frozenset({
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy.core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    })

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise _ForbiddenGlobal(f"{module}.{name}")
        # numpy 2 moved numpy.core to numpy._core; the official files name the old module.
        return super().find_class(module.replace("numpy.core", "numpy._core", 1), name)


def _unpickle(path: Path, *keys: str) -> dict:
    """One CIFAR pickle, checked to hold `keys`."""
    if not path.is_file():
        raise DatasetNotFoundError(
            f"{path} is missing: the CIFAR folder {path.parent} is incomplete; extract the official "
            f"archive ({CIFAR10_URL if 'batches' in path.parent.name else CIFAR100_URL}) again"
        )
    try:
        with path.open("rb") as f:
            # latin1 turns the pickles' Python 2 string keys into str, as torchvision reads them.
            content = _CifarUnpickler(f, encoding="latin1").load()
    except _ForbiddenGlobal as err:
        raise DatasetFormatError(
            f"{path}: refused to read: it asks to load {err}, which the official CIFAR files never "
            "hold (only dicts, lists, strings, numbers and numpy arrays); it may be crafted to run "
            "code. Extract the official archive again"
        ) from None
    except Exception as err:  # noqa: BLE001 - garbage bytes fail in many ways; all mean "not a pickle"
        raise DatasetFormatError(
            f"{path}: not a CIFAR python pickle ({err}); extract the archive again"
        ) from None
    missing = [k for k in keys if not isinstance(content, dict) or k not in content]
    if missing:
        raise DatasetFormatError(
            f"{path}: a pickle without {missing}, so not a CIFAR file; extract the archive again"
        )
    return content


def _cifar_images(data, path: Path) -> np.ndarray:
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetFormatError(f"{path}: 'data' has shape {data.shape}, expected (N, 3072)")
    # Rows are channel-major (1024 R, 1024 G, 1024 B).
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


@dataclass(frozen=True)
class _CifarArchive:
    title: str
    archive: str
    md5: str
    folder: str
    files: tuple[str, ...]


# The official archives (torchvision checks the same md5s).
_CIFAR_ARCHIVES = {
    "cifar100": _CifarArchive(
        "CIFAR-100", "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
        "cifar-100-python", ("meta", "train", "test"),
    ),
    "cifar10": _CifarArchive(
        "CIFAR-10", "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py",
        ("batches.meta", *(f"data_batch_{i}" for i in range(1, 6)), "test_batch"),
    ),
}


def cifar_resource(name: str, settings: Settings) -> fetch.Resource:
    """The official CIFAR archive `name` (cifar100, cifar10) from the settings' `cifar_url`,
    extracted into their `data_dir`."""
    spec = _CIFAR_ARCHIVES[name]
    root = settings.data_dir
    url = fetch.join_url(settings.cifar_url, spec.archive)
    timeout = settings.fetch_timeout
    return fetch.Resource(
        name=name,
        title=spec.title,
        path=root / spec.folder,
        url=url,
        manual=f"download {url} and extract it into {root}",
        get=lambda progress: fetch.fetch_archive(
            url, root / spec.archive, fetch.Checksum("md5", spec.md5), root / spec.folder, spec.files,
            timeout=timeout, what=spec.title, progress=progress,
        ),
        files=spec.files,
    )


CIFAR10_JPEGS = "cifar10-jpg"
"""The folder of the data directory that holds CIFAR-10 as JPEGs, <split>/<class>/NNNN.jpg."""
CIFAR100_SAMPLE = "cifar100-train-sample"
"""The folder of the data directory that holds the CIFAR-100 sample (cifar-100-python/ with meta
and the first 675 train images) of the original work's protocol."""


def local_copy(name: str, settings: Settings) -> fetch.Resource:
    """Data that iwan never downloads, only finds in the settings' `data_dir` (where the main job's
    `local` profile reads it): `cifar10-jpg` (CIFAR-10 as JPEGs), `cifar100-sample`."""
    root = settings.data_dir
    if name == "cifar10-jpg":
        title = "CIFAR-10 as JPEGs"
        official = fetch.join_url(settings.cifar_url, _CIFAR_ARCHIVES["cifar10"].archive)
        manual = (f"export the official CIFAR-10 ({official}) as JPEG class folders "
                  f"{root / CIFAR10_JPEGS}/train/<class>/NNNN.jpg and .../test/<class>/NNNN.jpg")
        return fetch.Resource(name=name, title=title, path=root / CIFAR10_JPEGS, url=None, manual=manual,
                              get=fetch.by_hand(title, manual), files=("train/", "test/"))
    if name == "cifar100-sample":
        title = "the CIFAR-100 sample (675 images)"
        folder = root / CIFAR100_SAMPLE / "cifar-100-python"
        official = fetch.join_url(settings.cifar_url, _CIFAR_ARCHIVES["cifar100"].archive)
        manual = (f"extract {official} into {root / CIFAR100_SAMPLE} and cut cifar-100-python/train to its "
                  "first 675 images")
        return fetch.Resource(name=name, title=title, path=folder, url=None, manual=manual,
                              get=fetch.by_hand(title, manual), files=("meta", "train"))
    raise ValueError(f"local data {name!r} is unknown: use cifar10-jpg or cifar100-sample")


def _download(name: str, settings: Settings) -> None:
    """Download and extract CIFAR `name` into the data dir; fails with the one-line manual fix."""
    resource = cifar_resource(name, settings)
    try:
        resource.get(True)
    except fetch.FetchError as err:
        raise DatasetNotFoundError(
            f"{resource.title} not found in {resource.path} and it could not be downloaded ({err}): "
            f"{resource.manual}"
        ) from None


# --- image folders ---------------------------------------------------------------------------


def _load_image_folder(path: Path, split: str, limit: int | None, settings: Settings) -> ImageDataset:
    if not path.is_dir():
        raise DatasetNotFoundError(f"image folder {path} does not exist: pass a folder of class folders")
    name = registered_name(f"imagefolder:{path}")
    return _read_image_folder(_image_folder_split(path, split), name, split, limit, settings)


def _image_folder_split(path: Path, split: str) -> Path:
    """The folder of class folders: PATH/<split>, or PATH itself when its folders hold images."""
    if (path / split).is_dir():
        return path / split
    subdirs = _subdirs(path)
    if any(_has_images(path / d) for d in subdirs):
        return path
    raise DatasetNotFoundError(
        f"{path} has no {split!r} split folder (folders present: {', '.join(subdirs) or 'none'}): "
        f"use one of those splits, or put the images in {path / split}/<class>/"
    )


def _subdirs(path: Path) -> list[str]:
    # Hidden folders (.ipynb_checkpoints, .DS_Store bundles) are never classes.
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _has_images(path: Path) -> bool:
    return any(e.is_file() and _is_image(e.name) for e in os.scandir(path))


def _list_images(folder: Path) -> tuple[list[str], list[Path], np.ndarray]:
    """Class names, files and labels in torchvision ImageFolder's order."""
    classes = _subdirs(folder)
    if not classes:
        raise DatasetNotFoundError(f"{folder} has no class folders: put images in {folder}/<class>/")
    files, labels = [], []
    for label, name in enumerate(classes):
        found = [
            Path(dirpath, f)
            for dirpath, _, names in sorted(os.walk(folder / name, followlinks=True))
            for f in sorted(names)
            if _is_image(f)
        ]
        if not found:
            raise DatasetNotFoundError(
                f"class folder {folder / name} holds no images ({', '.join(IMAGE_EXTENSIONS)}): "
                "add some or remove the folder"
            )
        files += found
        labels += [label] * len(found)
    return classes, files, np.asarray(labels, dtype=np.int64)


def _read_image_folder(folder: Path, name: str, split: str, limit: int | None, settings: Settings) -> ImageDataset:
    classes, files, labels = _list_images(folder)
    cache = _decoded_cache_path(settings.cache_dir, folder, name, split, files)
    if cache.is_file():
        images = np.load(cache)
    else:
        n = len(files) if limit is None else min(limit, len(files))
        images = _decode(files[:n], settings.max_image_pixels)
        # A partial decode (limit) is not cached: the cache always holds the whole split.
        if n == len(files):
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
            with tmp.open("wb") as f:
                np.save(f, images)
            os.replace(tmp, cache)
    n = len(images)
    return ImageDataset(
        name=name,
        split=split,
        images=images,
        fine_labels=labels[:n],
        coarse_labels=None,
        class_names=classes,
        coarse_class_names=None,
        paths=files[:n],
    )


def _decoded_cache_path(cache_dir: Path, folder: Path, name: str, split: str, files: list[Path]) -> Path:
    """A cache file named after the folder's files, sizes and times: any change misses it."""
    digest = hashlib.sha1(str(folder.resolve()).encode())
    for path in files:
        stat = path.stat()
        digest.update(f"\0{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    # An image folder's name holds its whole path: the readable part is cut short (the digest
    # tells folders apart), so the file name stays within the file system's 255 bytes.
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[-80:]
    safe_split = "".join(c if c.isalnum() or c in "-_." else "_" for c in split)[:40]
    return cache_dir / "datasets" / f"{safe}-{safe_split}-{digest.hexdigest()[:16]}.npy"


def _decode(files: list[Path], max_pixels: int) -> np.ndarray:
    images = None
    for i, path in enumerate(tqdm(files, desc="decoding", unit="img", disable=len(files) < 5000)):
        try:
            image = load_image(path, max_pixels=max_pixels)
        except DatasetFormatError as err:
            raise DatasetFormatError(f"{err} (image {i}); remove or replace the file") from None
        if images is None:
            images = np.empty((len(files), *image.shape), dtype=np.uint8)
        elif image.shape != images.shape[1:]:
            raise DatasetFormatError(
                f"{path} (image {i}) is {image.shape[1]}x{image.shape[0]} but the images before it "
                f"are {images.shape[2]}x{images.shape[1]}: a data set's images must share one size; "
                "resize them first"
            )
        images[i] = image
    return images if images is not None else np.empty((0, 0, 0, 3), dtype=np.uint8)
