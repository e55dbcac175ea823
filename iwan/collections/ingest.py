"""Images added to a collection: decoded, predicted, encoded and stored in one transaction per batch.

Bytes go to <image_dir>/<aa>/<sha256> (Settings.image_dir, IWAN_HOME/images, handed down by the
caller), named by their content hash (never by the uploaded name, which is only recorded). A file is written before its rows commit, atomically (temp file +
rename); a crash can leave an unreferenced file behind, never a row without its file. Advisory
locks per file keep a removal from deleting a file that an add of the same bytes is storing.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from iwan.config import Settings
from iwan.db import collections as store
from iwan.db.engine import DatabaseError
from iwan.vision.decode import DecodePolicy, MemoryBudget, decode_image
from iwan.vision.encoder import Encoded, Encoder

BATCH_SIZE = 256
"""Files decoded, predicted and committed together: one transaction each."""
NEAR_DUPLICATE_CANDIDATES = 8
"""Images held, nearest by cosine among a Hamming shortlist, checked as near-duplicates of each image added."""


@dataclass
class AddReport:
    added: list[tuple[int, str]] = field(default_factory=list)
    """(image id, file name) of each image stored."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(file name, why) of each file not stored: not an image, or bytes the collection already holds."""
    near_duplicates: list[tuple[str, int, int]] = field(default_factory=list)
    """(file name, image id, id of the image already held) of each image stored that is a
    near-duplicate (code and embedding near-identical, as collapse_duplicates finds them) of one
    the collection held before; needs a hash model."""
    seqs: list[int] = field(default_factory=list)
    """The change-log entries written, one per batch."""

    def as_dict(self) -> dict:
        return {
            "added": [{"image_id": i, "file": f} for i, f in self.added],
            "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
            "near_duplicates": [{"file": f, "image_id": i, "of": o} for f, i, o in self.near_duplicates],
        }


def image_path(sha256: str, image_dir: Path) -> Path:
    """Where the bytes with this sha256 are kept in `image_dir` (Settings.image_dir)."""
    if len(sha256) != 64 or sha256.strip("0123456789abcdef"):
        raise ValueError(f"{sha256!r} is not a sha256 hex digest")
    return image_dir / sha256[:2] / sha256


def write_file(sha256: str, data: bytes, image_dir: Path) -> Path:
    path = image_path(sha256, image_dir)
    if path.is_file() and path.stat().st_size == len(data):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{sha256}.{os.getpid()}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)
    return path


def delete_unused_files(engine: Engine, shas: Iterable[str], image_dir: Path) -> None:
    """Delete the files of these sha256 (in `image_dir`) that no uploaded image refers to any more;
    an add of the same bytes in progress elsewhere holds their lock, so its file is kept."""
    shas = list(shas)
    if not shas:
        return
    with engine.begin() as conn:
        store.lock_files(conn, shas, shared=False)
        for sha in store.unreferenced(conn, shas):
            image_path(sha, image_dir).unlink(missing_ok=True)


def sweep_files(engine: Engine, image_dir: Path, min_age_s: float = 3600.0) -> list[Path]:
    """Delete what adds killed mid-way left in `image_dir`, once older than `min_age_s`: partial
    writes, and files no uploaded image refers to (an add in progress holds its files' locks, so
    they are kept: delete_unused_files). Returns the paths deleted."""
    if not image_dir.is_dir():
        return []
    now, deleted, shas = time.time(), [], []
    for folder in image_dir.iterdir():
        if not (folder.is_dir() and len(folder.name) == 2):
            continue
        for path in folder.iterdir():
            try:
                if now - path.stat().st_mtime < min_age_s:
                    continue
                if path.name.endswith(".partial"):
                    path.unlink()
                    deleted.append(path)
                elif len(path.name) == 64 and not path.name.strip("0123456789abcdef"):
                    shas.append(path.name)
            except FileNotFoundError:
                continue
    with engine.connect() as conn:
        unused = [sha for start in range(0, len(shas), 10_000)
                  for sha in store.unreferenced(conn, shas[start : start + 10_000])]
    for start in range(0, len(unused), 1000):
        batch = unused[start : start + 1000]
        delete_unused_files(engine, batch, image_dir)
        deleted += [image_path(sha, image_dir) for sha in batch if not image_path(sha, image_dir).exists()]
    return deleted


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


def add_files(
    engine: Engine,
    name: str,
    files: list[tuple[str, bytes]],
    encoder: Encoder,
    label: str | None = None,
    batch_size: int = BATCH_SIZE,
    policy: DecodePolicy | None = None,
    budget: MemoryBudget | None = None,
    *,
    settings: Settings,
) -> AddReport:
    """Add image files (name, bytes) to collection `name`: each batch of files is committed in one
    transaction (images, files, predictions, codes, memberships, change-log row) or not at all.
    The bytes are kept in the settings' `image_dir`. A file the decoder refuses under `policy`
    (default: any format Pillow reads, the settings' pixel limit) is skipped with the reason; the
    decodes and model passes hold their memory in `budget` when given (ImageBusy when it stays full)."""
    from iwan.db.predictions import register_classes

    policy = policy or DecodePolicy(max_pixels=settings.max_image_pixels, formats=None)
    report = AddReport()
    with database_writes(f"adding images to {name!r}", "nothing of the batch in progress was stored"):
        collection = store.get(engine, name)
        register_classes(engine, encoder.predictor_name, encoder.categories)
        for start in range(0, len(files), batch_size):
            _add_batch(engine, name, collection, files[start : start + batch_size], encoder, label, report, policy,
                       budget, settings.image_dir)
    return report


def _add_batch(engine: Engine, name: str, collection: store.Collection, files: list[tuple[str, bytes]], encoder: Encoder,
               label: str | None, report: AddReport, policy: DecodePolicy, budget: MemoryBudget | None,
               image_dir: Path) -> None:
    fresh = decode_batch(files, policy, budget, report)
    if not fresh:
        return
    encoded = encoder.encode([cast(np.ndarray, item.pixels) for item in fresh], budget)
    store_batch(engine, name, collection, [(item, files[item.index][1]) for item in fresh], encoded,
                encoder.predictor_name, label, report, image_dir)


@dataclass(frozen=True)
class DecodedFile:
    """A file of a batch that decoded, the first with its bytes."""

    index: int
    """Its place in the batch's files."""
    file_name: str
    sha256: str
    media_type: str
    size: int
    pixels: np.ndarray | None
    """uint8 (H, W, 3); None once encoded (what a cluster's worker hands back)."""


def decode_batch(files: list[tuple[str, bytes]], policy: DecodePolicy, budget: MemoryBudget | None,
                 report: AddReport) -> list[DecodedFile]:
    """The files of a batch that decode under `policy`, each bytes once, in order; the others
    are reported as skipped with the reason."""
    decoded = []
    for index, (file_name, data) in enumerate(files):
        try:
            image = decode_image(data, file_name, policy, budget)
        except ValueError as err:  # the file is named in the report already
            report.skipped.append((file_name, str(err).removeprefix(f"{file_name}: ")))
            continue
        decoded.append(DecodedFile(index, file_name, hashlib.sha256(data).hexdigest(), image.media_type, len(data),
                                   image.pixels))
    return _first_of_each(decoded, report)


def store_batch(engine: Engine, name: str, collection: store.Collection, fresh: list[tuple[DecodedFile, bytes]],
                encoded: Encoded, predictor_name: str, label: str | None, report: AddReport, image_dir: Path) -> None:
    """Store a decoded and encoded batch in one transaction: the files' bytes in `image_dir`, new
    images with ids ascending in batch order, their predictions and codes, memberships and one
    change; bytes the collection holds already are reported as skipped."""
    from iwan.db.codes import write_codes
    from iwan.db.predictions import write_predictions

    like = None
    if encoded.codes is not None:
        like = near_duplicates(engine, collection, cast(np.ndarray, encoded.embeddings), encoded.codes)
    with engine.begin() as conn:
        store.lock_files(conn, [item.sha256 for item, _ in fresh], shared=True)
        for item, data in fresh:
            write_file(item.sha256, data, image_dir)
        store.lock(conn, name)
        known = store.existing_files(conn, collection.id, [item.sha256 for item, _ in fresh])
        keep = [i for i, (item, _) in enumerate(fresh) if item.sha256 not in known]
        for item, _ in fresh:
            if item.sha256 in known:
                report.skipped.append((item.file_name, f"the same bytes are already image {known[item.sha256]} of {name!r}"))
        if not keep:
            return
        rows = [fresh[i][0] for i in keep]
        ids = store.insert_uploads(conn, collection.id, [
            {"sha256": item.sha256, "media_type": item.media_type, "size": item.size, "file_name": item.file_name,
             "label": label}
            for item in rows
        ])
        write_predictions(conn, predictor_name, ids, encoded.class_indices[keep], encoded.probabilities[keep])
        if encoded.codes is not None:
            # The encoder is the collection's: codes, with their embeddings, come only from its hash model.
            hash_model, embeddings = cast(str, collection.hash_model), cast(np.ndarray, encoded.embeddings)
            write_codes(conn, hash_model, ids, embeddings[keep], encoded.codes[keep])
        report.seqs.append(store.log_change(conn, collection.id, "add", ids))
    report.added += [(int(i), item.file_name) for i, item in zip(ids, rows)]
    if like is not None:
        report.near_duplicates += [(item.file_name, int(i), cast(int, like[j])) for i, item, j in zip(ids, rows, keep)
                                   if like[j] is not None]


def near_duplicates(engine: Engine, collection: store.Collection, embeddings: np.ndarray,
                    codes: np.ndarray) -> list[int | None]:
    """For each encoded image, an image the collection holds whose code is within
    DUPLICATE_MAX_HAMMING bits and whose embedding is at least DUPLICATE_MIN_COSINE near (None:
    none), searched in PostgreSQL among the candidates nearest by Hamming distance."""
    from hashing.search import hamming_distances
    from iwan.config import DUPLICATE_MAX_HAMMING, DUPLICATE_MIN_COSINE
    from iwan.db.codes import load_codes
    from iwan.db.pgsearch import PgHammingCosineIndex

    hash_model = cast(str, collection.hash_model)
    with engine.connect() as conn:
        members = store.member_ids(conn, collection.id)
    if not len(members) or not len(codes):
        return [None] * len(codes)
    scores, ids = PgHammingCosineIndex(hash_model, engine, image_ids=members).search(
        embeddings, NEAR_DUPLICATE_CANDIDATES, query_codes=codes)
    found = np.unique(ids[ids >= 0])
    held_codes = dict(zip(found.tolist(), load_codes(engine, hash_model, found)[1].tolist())) if len(found) else {}
    out: list[int | None] = []
    for code, row_scores, row_ids in zip(codes, scores, ids):
        near = [i for s, i in zip(row_scores.tolist(), row_ids.tolist()) if i >= 0 and s >= DUPLICATE_MIN_COSINE]
        if near:
            bits = hamming_distances(np.array([held_codes[i] for i in near], dtype=np.uint64), np.array([code]))[0]
            near = [i for i, b in zip(near, bits.tolist()) if b <= DUPLICATE_MAX_HAMMING]
        out.append(near[0] if near else None)
    return out


def _first_of_each(decoded: list[DecodedFile], report: AddReport) -> list[DecodedFile]:
    """The files of a batch with distinct bytes; later copies are reported as skipped."""
    first: dict[str, str] = {}
    fresh = []
    for item in decoded:
        if item.sha256 in first:
            report.skipped.append((item.file_name, f"the same bytes as {first[item.sha256]}, added once"))
        else:
            first[item.sha256] = item.file_name
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


def remove(engine: Engine, name: str, image_ids, *, image_dir: Path) -> int:
    """Take images out of collection `name` (one transaction, one change); the change's seq. Its
    own uploads' files no image uses any more are deleted from `image_dir` (Settings.image_dir)."""
    image_ids = np.asarray(image_ids, dtype=np.int64)
    if not len(image_ids):
        raise ValueError("no image ids to remove")
    with database_writes(f"removing images from {name!r}", "nothing was removed"), engine.begin() as conn:
        collection = store.lock(conn, name)
        freed = store.remove_members(conn, collection.id, name, image_ids)
        seq = store.log_change(conn, collection.id, "remove", np.unique(image_ids))
    delete_unused_files(engine, freed, image_dir)
    return seq
