"""Fetch the USF Appendix A files from their official site (or any mirror with the same names)."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from iwan import locks
from iwan.config import USF_FILES, Settings
from iwan.datasets import fetch
from iwan.datasets.usf import NormsFormatError, parse_file

FILE_PREFIX = "Cue_Target_Pairs."
FILES = tuple(FILE_PREFIX + suffix for suffix in USF_FILES)
FOLDER = "usf-appendix-a"
"""The local copy's folder in `Settings.data_dir`."""


def usf_resource(settings: Settings, base_url: str | None = None) -> fetch.Resource:
    """The 8 files in the settings' `data_dir/usf-appendix-a`, from `base_url` (default: the
    settings' `usf_url`)."""
    folder = settings.data_dir / FOLDER
    base_url = base_url or settings.usf_url
    timeout = settings.fetch_timeout
    return fetch.Resource(
        name="norms",
        title="the USF norms",
        path=folder,
        url=base_url,
        manual=f"put the 8 files {FILE_PREFIX}{{{','.join(USF_FILES)}}} from {base_url} into {folder}",
        get=lambda progress: download_usf(folder, base_url, progress, timeout=timeout),
        files=FILES,
    )


def download_usf(dest: Path, base_url: str, progress: bool = True, *, timeout: float) -> list[Path]:
    """Download the 8 files from the folder URL `base_url` into `dest`, replacing its copy only
    once all 8 arrived and parse; `timeout` (Settings.fetch_timeout) bounds each wait.

    They gather in a hidden folder beside `dest` (kept across runs, so a new try fetches only
    what is missing) and replace `dest` in one swap: a failed download leaves `dest` as it was.
    The progress bar shows on a terminal only (tqdm disables itself when stderr is not a TTY).
    """
    staging = dest.with_name(f".{dest.name}{fetch.PART_SUFFIX}")
    with tqdm(total=len(FILES), unit="file", desc="USF norms", disable=None if progress else True) as bar:
        for name in FILES:
            try:
                fetch.download(
                    fetch.join_url(base_url, name), staging / name, validate=_check, timeout=timeout, progress=False
                )
            except fetch.FetchError as err:
                if not dest.exists():
                    raise
                raise fetch.FetchError(f"{err}; {dest} is unchanged") from None
            bar.update(1)
    with locks.locked(dest.parent):
        fetch.swap_in(staging, dest)
    return [dest / name for name in FILES]


def _check(path: Path) -> None:
    """Raises unless `path` is an Appendix A file with at least one row."""
    if sum(1 for _ in parse_file(path)) == 0:
        raise NormsFormatError(f"{path}: a header but no rows")
