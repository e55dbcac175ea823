"""Downloads of external data: each file once, checked, resumable, and put in place atomically.

A file arrives in `<target>.part` beside its target. A broken or interrupted download resumes
there with an HTTP Range request; only a file whose checksum and validation pass is renamed
onto the target, so a failed download (a 404 page, a cut connection, a wrong file) never
touches a good local copy. Folders (an extracted archive, a set of files) are assembled beside
their target and swapped in whole. A lock on the target's folder keeps two processes from
downloading the same file at once: the second waits and finds it done.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import socket
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from iwan import __version__, locks

BLOCK = 1 << 20
RESUMES = 3
"""How many times in a row a broken connection is resumed before the download gives up."""
PART_SUFFIX = ".part"


class FetchError(ConnectionError):
    """A download failed; the message names the URL, what went wrong and what to do."""


class MissingDataError(FileNotFoundError):
    """Data is neither here nor downloadable; the message names every missing piece and its place."""


@dataclass(frozen=True)
class Checksum:
    algorithm: str
    """A hashlib name: md5, sha256."""
    hexdigest: str
    """The whole digest, or its first digits (torchvision names weight files by their sha256's)."""

    def problem(self, path: Path) -> str | None:
        """Why `path` does not match, or None when it does."""
        digest = hashlib.new(self.algorithm)
        with path.open("rb") as f:
            for block in iter(lambda: f.read(BLOCK), b""):
                digest.update(block)
        actual = digest.hexdigest()
        if actual.startswith(self.hexdigest.lower()):
            return None
        return f"its {self.algorithm} is {actual[:len(self.hexdigest)]}, not {self.hexdigest}"


@dataclass(frozen=True)
class Resource:
    """A piece of external data: where its local copy lives, where it comes from, how to fetch it."""

    name: str
    """How commands name it: norms, cifar100, resnet50."""
    title: str
    """What it is, for messages."""
    path: Path
    """The local copy: a file, or a folder holding `files`."""
    url: str | None
    """Where it is downloaded from (for a set of files, their folder); None for data that is
    never downloaded, only put in place by hand."""
    manual: str
    """How to put it in place by hand, for machines without internet."""
    get: Callable[[bool], object]
    """Downloads it into `path` (the argument: show progress bars)."""
    files: tuple[str, ...] = ()
    """The files a complete copy holds in the folder `path` (a name ending in / is a folder);
    empty when `path` is the file."""

    def missing(self) -> list[str]:
        """The files of the local copy that are not there (`path` itself for a single file)."""
        if not self.files:
            return [] if self.path.is_file() else [str(self.path)]
        return [name for name in self.files
                if not ((self.path / name).is_dir() if name.endswith("/") else (self.path / name).is_file())]

    def present(self) -> bool:
        return not self.missing()


def by_hand(title: str, manual: str) -> Callable[[bool], object]:
    """The `get` of a resource that is never downloaded: it says how to put it in place."""

    def get(progress: bool) -> object:
        raise FetchError(f"{title} is not downloadable: {manual}")

    return get


def join_url(base: str, name: str) -> str:
    return (base if base.endswith("/") else base + "/") + name


def fetch_all(resources: Iterable[Resource], progress: bool = True) -> list[Resource]:
    """Download each resource that is not here; the ones fetched now.

    Every resource is tried before failing, so the one error lists all that is missing.
    """
    fetched, failures = [], []
    for resource in resources:
        if resource.present():
            continue
        try:
            resource.get(progress)
        except FetchError as err:
            failures.append((resource, str(err)))
        else:
            fetched.append(resource)
    if failures:
        raise MissingDataError(describe_missing(failures))
    return fetched


def describe_missing(missing: Sequence[tuple[Resource, str | None]]) -> str:
    """One line naming each missing resource, why it could not be fetched (if tried), and its place."""
    count = f"{len(missing)} piece{'s' if len(missing) > 1 else ''} of data"
    tried = any(why for _, why in missing)
    what = "; ".join(f"{r.title} ({why})" if why else r.title for r, why in missing)
    places = "; ".join(f"{r.title}: {r.manual}" for r, _ in missing)
    fix = "put them in place by hand"
    if not tried and any(r.url for r, _ in missing):
        fix = f"run `iwan data fetch` on a machine with internet, or {fix}"
    return (
        f"{count} {'is' if len(missing) == 1 else 'are'} missing"
        f"{' and could not be downloaded' if tried else ''}: {what}. To fix, {fix}: {places}; "
        "or point IWAN_DATA_DIR at a folder that holds them"
    )


def download(
    url: str,
    target: Path,
    checksum: Checksum | None = None,
    validate: Callable[[Path], object] | None = None,
    *,
    timeout: float,
    what: str | None = None,
    progress: bool = True,
) -> Path:
    """`url` saved as `target`, once: an existing target is kept as it is.

    `timeout` (Settings.fetch_timeout): seconds to wait for the connection and for each block.
    The bytes go to `<target>.part` (resumed where an earlier run stopped), then must pass
    `checksum` and `validate` (which raises on a bad file) before they are renamed onto
    `target`. A file that fails is deleted, after one fresh try when it was resumed.
    """
    target = Path(target)
    if target.is_file():
        return target
    _make_folder(target.parent)
    with locks.locked(target.parent):
        if target.is_file():
            return target
        part = target.with_name(target.name + PART_SUFFIX)
        resumed = part.is_file() and part.stat().st_size > 0
        _receive(url, part, what or target.name, progress, timeout)
        problem = _problem(part, checksum, validate)
        if problem and resumed:
            # The kept part may be stale (the file changed on the server) or damaged.
            part.unlink()
            _receive(url, part, what or target.name, progress, timeout)
            problem = _problem(part, checksum, validate)
        if problem:
            size = part.stat().st_size
            html = " (an HTML page?)" if _looks_like_html(part) else ""
            part.unlink()
            raise FetchError(
                f"{url} is not the expected file{html}: {problem} ({size:,} bytes); it was "
                "discarded: check the URL or mirror, or run again"
            )
        os.replace(part, target)
    return target


def fetch_archive(
    url: str,
    archive: Path,
    checksum: Checksum,
    folder: Path,
    files: Sequence[str],
    *,
    timeout: float,
    what: str | None = None,
    progress: bool = True,
) -> Path:
    """The tar archive at `url` extracted as `folder` (its top folder), which must hold `files`.

    The archive is downloaded as `download` does, extracted beside `folder`, checked, swapped
    in whole, and then deleted.
    """
    download(url, archive, checksum, timeout=timeout, what=what, progress=progress)
    with locks.locked(folder.parent):
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            try:
                with tarfile.open(archive) as tar:
                    # The "data" filter refuses absolute paths, links out of the folder, devices.
                    tar.extractall(staging, filter="data")
            except (tarfile.TarError, OSError, EOFError) as err:
                raise FetchError(f"{archive} cannot be extracted ({err}): delete it and run again") from None
            extracted = staging / folder.name
            absent = [name for name in files if not (extracted / name).is_file()]
            if absent:
                raise FetchError(
                    f"{archive} does not hold {folder.name}/{absent[0]} (from {url}): delete it "
                    "and run again"
                )
            swap_in(extracted, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    archive.unlink()
    return folder


def swap_in(new: Path, target: Path) -> None:
    """Put folder `new` where `target` is, with two renames; the old copy is deleted last.

    The caller holds `locks.locked(target.parent)`.
    """
    old = target.with_name(f".{target.name}.old")
    _remove(old)
    if target.exists() or target.is_symlink():
        os.rename(target, old)
    os.rename(new, target)
    _remove(old)


def _remove(path: Path) -> None:
    """Delete a file, a link (not what it points to) or a folder tree, if there."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as err:
        raise FetchError(
            f"cannot write into {folder} ({err.strerror or err}): set IWAN_DATA_DIR to a writable folder"
        ) from None


def _problem(part: Path, checksum: Checksum | None, validate: Callable[[Path], object] | None) -> str | None:
    if checksum is not None and (problem := checksum.problem(part)):
        return problem
    if validate is not None:
        try:
            validate(part)
        except Exception as err:  # noqa: BLE001 - any failure of the validator means "not this file"
            return str(err).splitlines()[0] if str(err) else type(err).__name__
    return None


def _looks_like_html(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(512).lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head"))


def _receive(url: str, part: Path, what: str, progress: bool, timeout: float) -> None:
    """Bring `part` to the whole of `url`'s body, resuming it where it holds bytes already."""
    cuts = 0
    while True:
        offset = part.stat().st_size if part.is_file() else 0
        headers = {"User-Agent": f"iwan/{__version__}"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
        except urllib.error.HTTPError as err:
            if err.code == 416 and offset:
                return  # nothing after `offset`: the part is whole already (the checksum will tell)
            raise FetchError(f"cannot download {url}: HTTP {err.code} {err.reason}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            raise FetchError(f"cannot download {url}: {_reason(err, timeout)}") from None
        with response:
            start = _start(response, offset, url)
            length = response.headers.get("Content-Length", "")
            total = start + int(length) if length.isdigit() else None
            received, cut = _copy(response, part, start, total, what, progress)
        if cut is None and (total is None or received >= total):
            return
        cuts += 1
        if cuts > RESUMES:
            reason = _reason(cut, timeout) if cut else f"it ended after {received:,} of {total:,} bytes"
            raise FetchError(
                f"cannot download {url}: the connection broke {cuts} times (last: {reason}); "
                f"run again to resume from byte {received:,}"
            )


def _start(response, offset: int, url: str) -> int:
    """Where the body starts in the file: `offset` when the server resumed, 0 when it sent it all."""
    if not offset or response.status != 206:
        return 0
    content_range = response.headers.get("Content-Range", "")
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", content_range.strip())
    if not match or int(match[1]) != offset:
        raise FetchError(
            f"cannot download {url}: asked to resume at byte {offset:,}, the server sent "
            f"{content_range or 'no Content-Range'}; delete the .part file and run again"
        )
    return offset


def _copy(response, part: Path, start: int, total: int | None, what: str, progress: bool):
    """Write the body into `part` from byte `start`; the bytes now in `part`, and the error that cut it."""
    received, cut = start, None
    try:
        with part.open("r+b" if start else "wb") as f, tqdm(
            total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=what,
            disable=None if progress else True,
        ) as bar:
            f.seek(start)
            f.truncate()
            while True:
                try:
                    block = response.read(BLOCK)
                except (OSError, http.client.HTTPException) as err:
                    cut = err
                    break
                if not block:
                    break
                f.write(block)
                received += len(block)
                bar.update(len(block))
    except OSError as err:
        raise FetchError(
            f"cannot write {part} ({err.strerror or err}): free some space or set IWAN_DATA_DIR"
        ) from None
    return received, cut


def _reason(err: BaseException, timeout: float) -> str:
    reason = getattr(err, "reason", err)
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return f"no answer within {timeout:g} s (set IWAN_FETCH_TIMEOUT to wait longer)"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    if isinstance(err, http.client.IncompleteRead):
        return f"the connection closed after {len(err.partial):,} more bytes"
    return str(reason) or type(reason).__name__
