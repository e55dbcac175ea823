"""Built index structures on disk: one plain .npy file per array in a folder, with a meta.json.

Written to a temporary folder and renamed into place (a reader sees the old folder, none, or the
new one, never half of one); read without pickle (np.load, allow_pickle=False) and checked
against what the reader expects (names, dtypes, dimensions), so that a damaged or foreign folder
is a ValueError, never a crash or an index built on wrong arrays. .npy files load with one read
each (np.fromfile), several times faster than the members of an .npz (measured: 0.16 s against
0.63 s for 900 MB with the file in the page cache).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import shutil
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

META_FILE = "meta.json"


def write_arrays(folder: Path, arrays: Mapping[str, np.ndarray], meta: Mapping) -> None:
    """Write `arrays` (name -> array) and `meta` (JSON) into `folder` (created; not atomically:
    use `replacing_folder` around it for that)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        with open(folder / f"{name}.npy", "wb") as file:
            np.save(file, np.ascontiguousarray(array), allow_pickle=False)
    (folder / META_FILE).write_text(json.dumps(dict(meta)))


def read_arrays(folder: Path, expected: Mapping[str, tuple[str, int]], *, optional: tuple[str, ...] = (),
                mmap: bool = False) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays, meta) of a folder `write_arrays` wrote; `expected`: name -> (dtype kind or dtype
    name, ndim), e.g. ("int64", 1), ("U", 1) for text. ValueError naming the folder and what is
    wrong for anything missing, unreadable or of another type ("int8|float32": either); `optional`
    names may be absent.
    `mmap`: the arrays are read-only maps of the files (np.load's mmap_mode "r"), read from disk
    as they are used instead of all at once: for holders that never write into them."""
    def damaged(why: str) -> ValueError:
        return ValueError(f"{folder}: {why}")

    try:
        meta = json.loads((folder / META_FILE).read_text())
    except FileNotFoundError:
        raise damaged(f"no {META_FILE}: not a saved index folder") from None
    except (OSError, ValueError) as error:
        raise damaged(f"{META_FILE} is unreadable ({error})") from None
    if not isinstance(meta, dict):
        raise damaged(f"{META_FILE} holds no object")
    arrays = {}
    for name, (dtype, ndim) in expected.items():
        path = folder / f"{name}.npy"
        if name in optional and not path.exists():
            continue
        try:
            array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        # Untrusted bytes: whatever numpy raises on them is "unreadable", never a crash.
        except Exception as error:  # noqa: BLE001
            raise damaged(f"{name}.npy is missing or unreadable ({type(error).__name__}: {error})") from None
        fits = any(array.dtype.kind == one if len(one) == 1 else array.dtype == np.dtype(one) for one in dtype.split("|"))
        if not fits or array.ndim != ndim:
            raise damaged(f"{name}.npy holds {array.dtype} of {array.ndim} dimensions, not {dtype} of {ndim}")
        arrays[name] = array
    return arrays, meta


@contextlib.contextmanager
def replacing_folder(path: Path) -> Iterator[Path]:
    """A temporary folder beside `path` to write into; on a clean exit it replaces `path` (the
    old folder, or a file of that name, is removed), on an error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    _remove_leftovers(path)
    partial.mkdir()
    try:
        yield partial
        for file in partial.rglob("*"):  # on disk before the rename makes them visible
            if file.is_file():
                with open(file, "rb") as handle:
                    os.fsync(handle.fileno())
        _rename_over(partial, path)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _remove_leftovers(path: Path) -> None:
    """Remove the temporary folders beside `path` that writers no longer running left (a process
    that ended mid-write: a service whose shutdown stopped waiting for a snapshot's save). A
    living process's are its own business, even another one's."""
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*"):
        parts = leftover.name[len(path.name) + 2 :].split(".")
        if parts[-1] not in ("partial", "old") or not parts[0].isdigit() or _running(int(parts[0])):
            continue
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _rename_over(partial: Path, path: Path) -> None:
    """Rename `partial` to `path`, moving away what is there (another writer may be doing the same)."""
    for attempt in range(100):
        try:
            os.rename(partial, path)
            return
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise
        old = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.{attempt}.old")
        try:
            os.rename(path, old)
        except FileNotFoundError:
            continue  # another writer moved it away first
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    raise OSError(f"could not replace {path}: other processes kept writing it; try again")


def save_folder(path: str | Path, arrays: Mapping[str, np.ndarray], meta: Mapping) -> Path:
    """Write `arrays` and `meta` as folder `path`, atomically (`replacing_folder`): an index's `save`."""
    path = Path(path)
    with replacing_folder(path) as folder:
        write_arrays(folder, arrays, meta)
    return path


def remove_folder(path: Path) -> None:
    """Remove a folder `replacing_folder` wrote (or a file of that name); nothing if absent."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
