"""Images added to a collection: decoded, predicted, encoded and stored in one transaction per batch.

Bytes go to IWAN_HOME/images/<aa>/<sha256>, named by their content hash (never by the uploaded
name, which is only recorded). A file is written before its rows commit, atomically (temp file +
rename); a crash can leave an unreferenced file behind, never a row without its file. Advisory
locks per file keep a removal from deleting a file that an add of the same bytes is storing.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from iwan.db import collections as store
from iwan.config import STORED_PREDICTIONS, settings
from iwan.db.engine import DatabaseError

BATCH_SIZE = 256
"""Files decoded, predicted and committed together: one transaction each."""


@dataclass
class AddReport:
    added: list[tuple[int, str]] = field(default_factory=list)
    """(image id, file name) of each image stored."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(file name, why) of each file not stored: not an image, or bytes the collection already holds."""
    seqs: list[int] = field(default_factory=list)
    """The change-log entries written, one per batch."""

    def as_dict(self) -> dict:
        return {
            "added": [{"image_id": i, "file": f} for i, f in self.added],
            "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
        }


@dataclass(frozen=True)
class Encoded:
    """What a batch of images is represented by, row per image."""

    class_indices: np.ndarray
    """(n, STORED_PREDICTIONS) int64 predictor classes, most probable first."""
    probabilities: np.ndarray
    """(n, STORED_PREDICTIONS) float32."""
    embeddings: np.ndarray | None = None
    """(n, d) float32 hash-model embeddings, with a hash model."""
    codes: np.ndarray | None = None
    """(n,) uint64 48-bit codes, with a hash model."""


def decode(data: bytes) -> tuple[np.ndarray, str]:
    """(uint8 (H, W, 3) RGB pixels, media type) of image bytes; ValueError saying why not."""
    from PIL import Image, UnidentifiedImageError

    limit = settings().max_image_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                # Checked on the header, before the pixels are decoded (decompression bombs).
                if image.width * image.height > limit:
                    raise ValueError(f"{image.width}x{image.height} pixels is over the limit of {limit:,} (IWAN_MAX_IMAGE_PIXELS)")
                media_type = Image.MIME.get(image.format or "", "application/octet-stream")
                return np.asarray(image.convert("RGB")), media_type
    except UnidentifiedImageError:
        raise ValueError("not an image Pillow can read") from None
    except (OSError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ValueError(f"a damaged or unreadable image ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None


def image_path(sha256: str) -> Path:
    if len(sha256) != 64 or sha256.strip("0123456789abcdef"):
        raise ValueError(f"{sha256!r} is not a sha256 hex digest")
    return settings().image_dir / sha256[:2] / sha256


def write_file(sha256: str, data: bytes) -> Path:
    path = image_path(sha256)
    if path.is_file() and path.stat().st_size == len(data):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{sha256}.{os.getpid()}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)
    return path


def delete_unused_files(engine: Engine, shas: Iterable[str]) -> None:
    """Delete the files of these sha256 that no uploaded image refers to any more; an add of the
    same bytes in progress elsewhere holds their lock, so its file is kept."""
    shas = list(shas)
    if not shas:
        return
    with engine.begin() as conn:
        store.lock_files(conn, shas, shared=False)
        for sha in store.unreferenced(conn, shas):
            image_path(sha).unlink(missing_ok=True)


@contextmanager
def database_writes(what: str, outcome: str):
    """A lost or refused connection during a write becomes a DatabaseError saying what was lost."""
    try:
        yield
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as err:
        reason = str(getattr(err, "orig", err)).strip().splitlines()[0]
        raise DatabaseError(f"the database is unavailable while {what} ({reason}); {outcome}: try again later") from None


def expand_paths(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Files as given, folders as the files under them (sorted); FileNotFoundError for a missing path."""
    for path in map(Path, paths):
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            yield path
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")


class Encoder:
    """A collection's models: its word predictor and, optionally, its hash network (loaded lazily)."""

    def __init__(self, predictor: str, hash_model: str | None, backend: str = "onnx", *, loaded_predictor=None, net=None):
        """`backend` onnx, as `iwan predict` stores a split's predictions; `loaded_predictor` and
        `net` (a hash net) are models already loaded (e.g. small ones for tests) to use instead."""
        self.predictor_name = predictor
        self.hash_model = hash_model
        self.backend = backend
        self._predictor = loaded_predictor
        self._net = net

    @property
    def predictor(self):
        if self._predictor is None:
            from iwan.vision.predictors import load_predictor

            self._predictor = load_predictor(self.predictor_name, backend=self.backend)
        return self._predictor

    @property
    def net(self):
        """The hash model's net (torch module), or None without a hash model."""
        if self._net is None and self.hash_model is not None:
            from hashing.net import load_checkpoint

            path = settings().model_dir / self.hash_model / "best.pt"
            if not path.is_file():
                raise FileNotFoundError(
                    f"hash model {self.hash_model!r} has no checkpoint at {path}: train it with "
                    f"`iwan hash train --out {path.parent}`"
                )
            self._net = load_checkpoint(path).model
        return self._net

    @property
    def categories(self) -> list[str]:
        return self.predictor.categories

    def encode(self, images: list[np.ndarray]) -> Encoded:
        """Predictions (and embeddings and codes) of uint8 (H, W, 3) images of any sizes; images of
        one size run as one batch, through the same preprocessing as a data set's images."""
        n = len(images)
        indices = np.full((n, STORED_PREDICTIONS), -1, dtype=np.int64)
        probabilities = np.zeros((n, STORED_PREDICTIONS), dtype=np.float32)
        net = self.net
        embeddings = codes = None
        if net is not None:
            embeddings = np.zeros((n, net.config.embedding_dim), dtype=np.float32)
            codes = np.zeros(n, dtype=np.uint64)
        for shape in {image.shape for image in images}:
            rows = np.array([i for i, image in enumerate(images) if image.shape == shape])
            pixels = np.stack([images[i] for i in rows])
            need_features = net is not None and net.config.backbone == "precomputed"
            predicted = self.predictor.predict(pixels, top=STORED_PREDICTIONS, features=need_features)
            indices[rows], probabilities[rows] = predicted.indices, predicted.probabilities
            if net is not None:
                embeddings[rows], codes[rows] = self._hash(net, pixels, predicted.features)
        return Encoded(indices, probabilities, embeddings, codes)

    def _hash(self, net, pixels: np.ndarray, features: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        from hashing.codes import pack_activations
        from hashing.train import encode

        if net.config.backbone == "precomputed":
            if net.config.features != self.predictor_name:
                raise ValueError(
                    f"hash model {self.hash_model!r} reads {net.config.features} features, but the "
                    f"collection's predictor is {self.predictor_name}: create the collection with that predictor"
                )
            embeddings, activations = encode(net, features)
        else:
            # As `iwan hash encode` stores a split's codes: each image averaged with its mirror image.
            embeddings, activations = encode(net, pixels, mirror=True)
        return embeddings, pack_activations(activations)


def add_files(
    engine: Engine,
    name: str,
    files: list[tuple[str, bytes]],
    encoder: Encoder,
    label: str | None = None,
    batch_size: int = BATCH_SIZE,
) -> AddReport:
    """Add image files (name, bytes) to collection `name`: each batch of files is committed in one
    transaction (images, files, predictions, codes, memberships, change-log row) or not at all."""
    from iwan.db.predictions import register_classes

    report = AddReport()
    with database_writes(f"adding images to {name!r}", "nothing of the batch in progress was stored"):
        collection = store.get(engine, name)
        register_classes(engine, encoder.predictor_name, encoder.categories)
        for start in range(0, len(files), batch_size):
            _add_batch(engine, name, collection, files[start : start + batch_size], encoder, label, report)
    return report


def _add_batch(engine: Engine, name: str, collection: store.Collection, files: list[tuple[str, bytes]], encoder: Encoder,
               label: str | None, report: AddReport) -> None:
    from iwan.db.codes import write_codes
    from iwan.db.predictions import write_predictions

    decoded = []
    for file_name, data in files:
        try:
            pixels, media_type = decode(data)
        except ValueError as err:
            report.skipped.append((file_name, str(err)))
            continue
        decoded.append((file_name, data, pixels, media_type, hashlib.sha256(data).hexdigest()))
    fresh = _first_of_each(decoded, report)
    if not fresh:
        return
    encoded = encoder.encode([item[2] for item in fresh])
    with engine.begin() as conn:
        store.lock_files(conn, [item[4] for item in fresh], shared=True)
        for _, data, _, _, sha in fresh:
            write_file(sha, data)
        store.lock(conn, name)
        known = store.existing_files(conn, collection.id, [item[4] for item in fresh])
        keep = [i for i, item in enumerate(fresh) if item[4] not in known]
        for item in fresh:
            if item[4] in known:
                report.skipped.append((item[0], f"the same bytes are already image {known[item[4]]} of {name!r}"))
        if not keep:
            return
        rows = [fresh[i] for i in keep]
        ids = store.insert_uploads(conn, collection.id, [
            {"sha256": sha, "media_type": media_type, "size": len(data), "file_name": file_name, "label": label}
            for file_name, data, _, media_type, sha in rows
        ])
        write_predictions(conn, encoder.predictor_name, ids, encoded.class_indices[keep], encoded.probabilities[keep])
        if encoded.codes is not None:
            write_codes(conn, collection.hash_model, ids, encoded.embeddings[keep], encoded.codes[keep])
        report.seqs.append(store.log_change(conn, collection.id, "add", ids))
    report.added += [(int(i), item[0]) for i, item in zip(ids, rows)]


def _first_of_each(decoded: list, report: AddReport) -> list:
    """The files of a batch with distinct bytes; later copies are reported as skipped."""
    first: dict[str, str] = {}
    fresh = []
    for item in decoded:
        if item[4] in first:
            report.skipped.append((item[0], f"the same bytes as {first[item[4]]}, added once"))
        else:
            first[item[4]] = item[0]
            fresh.append(item)
    return fresh


def add_registered(engine: Engine, name: str, image_ids) -> int:
    """Make registered images (stored predictions and codes) members of collection `name`, in one
    transaction and one change; the change's seq."""
    image_ids = np.asarray(image_ids, dtype=np.int64)
    if not len(image_ids):
        raise ValueError("no image ids to add")
    with database_writes(f"adding images to {name!r}", "nothing was added"), engine.begin() as conn:
        collection = store.lock(conn, name)
        ids = store.add_registered(conn, collection, image_ids)
        return store.log_change(conn, collection.id, "add", ids)


def remove(engine: Engine, name: str, image_ids) -> int:
    """Take images out of collection `name` (one transaction, one change); the change's seq."""
    image_ids = np.asarray(image_ids, dtype=np.int64)
    if not len(image_ids):
        raise ValueError("no image ids to remove")
    with database_writes(f"removing images from {name!r}", "nothing was removed"), engine.begin() as conn:
        collection = store.lock(conn, name)
        freed = store.remove_members(conn, collection.id, name, image_ids)
        seq = store.log_change(conn, collection.id, "remove", np.unique(image_ids))
    delete_unused_files(engine, freed)
    return seq
