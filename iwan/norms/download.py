"""Fetch the USF Appendix A files from their official site (or any mirror with the same names)."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from iwan.config import USF_BASE_URL, USF_FILES

FILE_PREFIX = "Cue_Target_Pairs."


def download_usf(dest: Path, base_url: str = USF_BASE_URL, progress: bool = True) -> list[Path]:
    """Download the 8 files into `dest`; a file is written only once it arrived whole.

    The progress bar shows on a terminal only (tqdm disables itself when stderr is not a TTY).
    """
    dest.mkdir(parents=True, exist_ok=True)
    base_url = base_url if base_url.endswith("/") else base_url + "/"
    written = []
    with tqdm(total=len(USF_FILES), unit="file", desc="USF norms", disable=None if progress else True) as bar:
        for suffix in USF_FILES:
            name = FILE_PREFIX + suffix
            url = base_url + name
            try:
                with urllib.request.urlopen(url, timeout=60) as response:
                    body = response.read()
            except (urllib.error.URLError, OSError) as err:
                raise ConnectionError(
                    f"cannot download {url}: {getattr(err, 'reason', err)}. Download the 8 "
                    f"{FILE_PREFIX}* files by hand into {dest} and run `iwan norms load {dest}`"
                ) from None
            partial = dest / (name + ".part")
            partial.write_bytes(body)
            partial.replace(dest / name)
            written.append(dest / name)
            bar.update(1)
    return written
