"""Downloads against a real local HTTP server: checked, resumable, atomic, once; offline; the CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import pickle
import re
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from iwan.config import settings
from iwan.datasets import fetch
from iwan.datasets import loaders as datasets
from iwan.datasets.fetch import Checksum, FetchError, MissingDataError
from iwan.datasets.loaders import DatasetNotFoundError, load_dataset
from iwan.datasets.usf_download import FILES, download_usf, usf_resource
from iwan.vision.predictors import resnet50_weights

TIMEOUT = 10.0
"""Seconds a download waits here (what Settings.fetch_timeout hands down)."""
NOT_FOUND_PAGE = b"<!DOCTYPE html><html><head><title>404 Not Found</title></head><body>Not Found</body></html>"


class FileSite(http.server.ThreadingHTTPServer):
    """Serves `files` (name -> bytes) from memory, with HTTP Range support that tests can turn off.

    `cuts[name] = n` sends only the first n bytes of the next answer for `name`, then closes the
    connection; `delay` seconds pass before each answer. Every request is recorded.
    """

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.cuts: dict[str, int] = {}
        self.ranges = True
        self.delay = 0.0
        self.requests: list[tuple[str, str | None]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: FileSite

    def do_GET(self):
        site, name = self.server, self.path.lstrip("/")
        site.requests.append((name, self.headers.get("Range")))
        time.sleep(site.delay)
        body = site.files.get(name)
        if body is None:
            return self._answer(404, NOT_FOUND_PAGE, {"Content-Type": "text/html"})
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if not (match and site.ranges):
            return self._answer(200, body, {}, site.cuts.pop(name, None))
        start = int(match[1])
        if start >= len(body):
            return self._answer(416, b"", {"Content-Range": f"bytes */{len(body)}"})
        headers = {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"}
        return self._answer(206, body[start:], headers, site.cuts.pop(name, None))

    def _answer(self, status: int, body: bytes, headers: dict, cut: int | None = None):
        self.send_response(status)
        for key, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body if cut is None else body[:cut])
        self.close_connection = cut is not None

    def log_message(self, *args):
        pass


@pytest.fixture
def site():
    server = FileSite()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "data"
    monkeypatch.setenv("IWAN_DATA_DIR", str(folder))
    return folder


@pytest.fixture
def closed_url() -> str:
    """A URL on which nothing listens: connections are refused, as on a machine offline."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def _blob(size: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def _sha256(body: bytes) -> Checksum:
    return Checksum("sha256", hashlib.sha256(body).hexdigest())


# --- one file ----------------------------------------------------------------------------------


def test_download_checks_renames_and_fetches_once(site, tmp_path):
    body = _blob(300_000)
    site.files["w.pth"] = body
    target = tmp_path / "sub" / "w.pth"

    assert fetch.download(site.url + "w.pth", target, _sha256(body), timeout=TIMEOUT, progress=False) == target
    assert fetch.download(site.url + "w.pth", target, _sha256(body), timeout=TIMEOUT, progress=False) == target

    assert target.read_bytes() == body
    assert site.requests == [("w.pth", None)]
    assert list(target.parent.iterdir()) == [target]


def test_a_checksum_prefix_is_enough(site, tmp_path):
    body = _blob(1000)
    site.files["resnet.pth"] = body
    prefix = hashlib.sha256(body).hexdigest()[:8]

    fetch.download(site.url + "resnet.pth", tmp_path / "r.pth", Checksum("sha256", prefix), timeout=TIMEOUT, progress=False)

    assert (tmp_path / "r.pth").read_bytes() == body


def test_checksum_mismatch_keeps_nothing_and_says_why(site, tmp_path):
    site.files["w.pth"] = _blob(5000)
    target = tmp_path / "w.pth"

    with pytest.raises(FetchError) as caught:
        fetch.download(site.url + "w.pth", target, Checksum("md5", "0" * 32), timeout=TIMEOUT, progress=False)

    message = str(caught.value)
    actual = hashlib.md5(site.files["w.pth"]).hexdigest()
    assert message.startswith(f"{site.url}w.pth is not the expected file: its md5 is {actual}, not {'0' * 32}")
    assert "(5,000 bytes)" in message
    assert list(tmp_path.iterdir()) == []


def test_404_is_one_line_and_writes_nothing(site, tmp_path):
    with pytest.raises(FetchError, match=rf"^cannot download {site.url}gone\.bin: HTTP 404 Not Found$"):
        fetch.download(site.url + "gone.bin", tmp_path / "gone.bin", timeout=TIMEOUT, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_an_html_page_instead_of_the_file_is_named(site, tmp_path):
    site.files["w.pth"] = NOT_FOUND_PAGE  # a mirror that answers 200 with an error page

    with pytest.raises(FetchError, match=r"is not the expected file \(an HTML page\?\): its sha256"):
        fetch.download(site.url + "w.pth", tmp_path / "w.pth", _sha256(_blob(10)), timeout=TIMEOUT, progress=False)


def test_partial_file_is_resumed_with_a_range_request(site, tmp_path):
    body = _blob(200_000)
    site.files["big.tar.gz"] = body
    target = tmp_path / "big.tar.gz"
    (tmp_path / "big.tar.gz.part").write_bytes(body[:123_456])

    fetch.download(site.url + "big.tar.gz", target, _sha256(body), timeout=TIMEOUT, progress=False)

    assert target.read_bytes() == body
    assert site.requests == [("big.tar.gz", "bytes=123456-")]
    assert not (tmp_path / "big.tar.gz.part").exists()


def test_a_broken_connection_is_resumed_where_it_broke(site, tmp_path):
    body = _blob(3_000_000)
    site.files["big"] = body
    site.cuts["big"] = 1_000_000

    fetch.download(site.url + "big", tmp_path / "big", _sha256(body), timeout=TIMEOUT, progress=False)

    assert (tmp_path / "big").read_bytes() == body
    assert site.requests == [("big", None), ("big", "bytes=1000000-")]


def test_a_server_without_ranges_sends_it_all_again(site, tmp_path):
    body = _blob(50_000)
    site.files["f"] = body
    site.ranges = False
    (tmp_path / "f.part").write_bytes(body[:20_000])

    fetch.download(site.url + "f", tmp_path / "f", _sha256(body), timeout=TIMEOUT, progress=False)

    assert (tmp_path / "f").read_bytes() == body


def test_a_complete_part_file_is_checked_without_downloading_again(site, tmp_path):
    body = _blob(10_000)
    site.files["f"] = body
    (tmp_path / "f.part").write_bytes(body)

    fetch.download(site.url + "f", tmp_path / "f", _sha256(body), timeout=TIMEOUT, progress=False)

    assert (tmp_path / "f").read_bytes() == body
    assert site.requests == [("f", "bytes=10000-")]  # answered 416: nothing more to send


def test_a_stale_part_file_is_downloaded_again_from_the_start(site, tmp_path):
    body = _blob(10_000)
    site.files["f"] = body
    (tmp_path / "f.part").write_bytes(_blob(4_000, seed=1))  # from another version of the file

    fetch.download(site.url + "f", tmp_path / "f", _sha256(body), timeout=TIMEOUT, progress=False)

    assert (tmp_path / "f").read_bytes() == body
    assert site.requests == [("f", "bytes=4000-"), ("f", None)]


def test_two_processes_at_once_download_once(site, tmp_path):
    body = _blob(100_000)
    site.files["f"] = body
    site.delay = 0.3
    errors = []

    def get():
        try:
            fetch.download(site.url + "f", tmp_path / "f", _sha256(body), timeout=TIMEOUT, progress=False)
        except Exception as err:
            errors.append(err)

    threads = [threading.Thread(target=get) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == [] and (tmp_path / "f").read_bytes() == body
    assert len(site.requests) == 1


def test_a_server_that_never_answers_times_out(tmp_path, monkeypatch):
    monkeypatch.setenv("IWAN_FETCH_TIMEOUT", "0.5")  # read by the settings, handed to the download
    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/f"
        started = time.monotonic()
        with pytest.raises(FetchError, match=r"no answer within 0\.5 s \(set IWAN_FETCH_TIMEOUT"):
            fetch.download(url, tmp_path / "f", timeout=settings().fetch_timeout, progress=False)
    assert time.monotonic() - started < 5


def test_a_bad_timeout_setting_is_refused(monkeypatch):
    monkeypatch.setenv("IWAN_FETCH_TIMEOUT", "-3")
    with pytest.raises(ValueError, match=r"IWAN_FETCH_TIMEOUT='-3' must be a positive number"):
        settings()


# --- the USF norms: 8 files, validated, replaced together --------------------------------------


def _usf_bodies(tmp_path: Path, cue: str) -> dict[str, bytes]:
    from usf_files import HEADER_LINE, row, write

    tmp_path.mkdir(parents=True, exist_ok=True)
    return {
        name: write(tmp_path, HEADER_LINE, row(cue=cue), row(cue=cue, target="WORK"), name=name).read_bytes()
        for name in FILES
    }


def _local_copy(folder: Path, bodies: dict[str, bytes]) -> None:
    folder.mkdir(parents=True)
    for name, body in bodies.items():
        (folder / name).write_bytes(body)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_norms_download_replaces_the_local_copy_whole(site, data_dir, tmp_path):
    old, new = _usf_bodies(tmp_path / "old", "LAB"), _usf_bodies(tmp_path / "new", "CAT")
    _local_copy(data_dir / "usf-appendix-a", old)
    site.files.update(new)

    written = download_usf(data_dir / "usf-appendix-a", site.url, progress=False, timeout=TIMEOUT)

    assert written == [data_dir / "usf-appendix-a" / name for name in FILES]
    assert _snapshot(data_dir / "usf-appendix-a") == new
    assert sorted(p.name for p in data_dir.iterdir()) == ["usf-appendix-a"]  # no staging, no old copy


@pytest.mark.parametrize("failure", ["404", "html", "garbled"])
def test_a_failed_norms_download_leaves_a_good_local_copy_untouched(failure, site, data_dir, tmp_path):
    good = _usf_bodies(tmp_path / "good", "LAB")
    _local_copy(data_dir / "usf-appendix-a", good)
    site.files.update(_usf_bodies(tmp_path / "new", "CAT"))
    broken = FILES[5]
    if failure == "404":
        del site.files[broken]
    elif failure == "html":
        site.files[broken] = NOT_FOUND_PAGE
    else:
        site.files[broken] = site.files[broken].replace(b", EXPERIMENT", b"")

    with pytest.raises(FetchError) as caught:
        download_usf(data_dir / "usf-appendix-a", site.url, progress=False, timeout=TIMEOUT)

    message = str(caught.value)
    assert f"{site.url}{broken}" in message
    assert message.endswith(f"; {data_dir / 'usf-appendix-a'} is unchanged")
    expected = {"404": "HTTP 404 Not Found", "html": "no header row", "garbled": "expected 31 fields"}
    assert expected[failure] in message
    assert _snapshot(data_dir / "usf-appendix-a") == good


def test_a_norms_download_resumes_with_the_files_still_missing(site, data_dir, tmp_path):
    bodies = _usf_bodies(tmp_path, "LAB")
    site.files.update(bodies)
    del site.files[FILES[-1]]
    with pytest.raises(FetchError):
        download_usf(data_dir / "usf-appendix-a", site.url, progress=False, timeout=TIMEOUT)
    site.files[FILES[-1]] = bodies[FILES[-1]]
    site.requests.clear()

    download_usf(data_dir / "usf-appendix-a", site.url, progress=False, timeout=TIMEOUT)

    assert [name for name, _ in site.requests] == [FILES[-1]]
    assert _snapshot(data_dir / "usf-appendix-a") == bodies


# --- CIFAR-100: the official archive, checked and extracted whole ------------------------------


def _cifar100_archive(members: dict[str, object] | None = None) -> bytes:
    """A tiny cifar-100-python.tar.gz in the official layout: meta, train (6 images), test (4)."""
    rng = np.random.default_rng(0)

    def split(n):
        return {
            "filenames": [f"img_{i}.png" for i in range(n)],
            "batch_label": "training batch 1 of 1",
            "fine_labels": [i % 100 for i in range(n)],
            "coarse_labels": [i % 20 for i in range(n)],
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        }

    meta = {
        "fine_label_names": [f"fine{i}" for i in range(100)],
        "coarse_label_names": [f"coarse{i}" for i in range(20)],
    }
    members = members or {"meta": meta, "train": split(6), "test": split(4)}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in members.items():
            data = content if isinstance(content, bytes) else pickle.dumps(content, protocol=2)
            info = tarfile.TarInfo(name if name.startswith(("/", "..")) else f"cifar-100-python/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def cifar_site(site, data_dir, monkeypatch) -> FileSite:
    """The site serves a tiny CIFAR-100 archive, and the loader expects that archive's md5."""
    site.files["cifar-100-python.tar.gz"] = _cifar100_archive()
    spec = datasets._CIFAR_ARCHIVES["cifar100"]
    md5 = hashlib.md5(site.files["cifar-100-python.tar.gz"]).hexdigest()
    monkeypatch.setitem(datasets._CIFAR_ARCHIVES, "cifar100", dataclasses.replace(spec, md5=md5))
    monkeypatch.setenv("IWAN_CIFAR_URL", site.url)
    return site


def test_missing_cifar100_is_downloaded_extracted_and_loaded_once(cifar_site, data_dir):
    train = load_dataset("cifar100", "train")
    test = load_dataset("cifar100", "test")

    assert (len(train), len(test), train.images.shape[1:]) == (6, 4, (32, 32, 3))
    assert train.class_names[train.fine_labels[5]] == "fine5"
    assert cifar_site.requests == [("cifar-100-python.tar.gz", None)]
    assert sorted(p.name for p in data_dir.iterdir()) == ["cifar-100-python"]  # the archive is gone
    assert sorted(p.name for p in (data_dir / "cifar-100-python").iterdir()) == ["meta", "test", "train"]


def test_cifar100_with_the_official_md5_rejects_another_archive(site, data_dir, monkeypatch):
    site.files["cifar-100-python.tar.gz"] = _cifar100_archive()
    monkeypatch.setenv("IWAN_CIFAR_URL", site.url)

    with pytest.raises(DatasetNotFoundError) as caught:
        load_dataset("cifar100", "train")

    message = str(caught.value)
    assert message.startswith(f"CIFAR-100 not found in {data_dir / 'cifar-100-python'} and it could not be downloaded")
    assert "not eb9058c3a382ffc7106e4002c42a8d85" in message
    assert message.endswith(f"download {site.url}cifar-100-python.tar.gz and extract it into {data_dir}")
    assert not data_dir.exists() or not any(data_dir.iterdir())


def test_cifar100_offline_gives_the_one_line_manual_fix(data_dir, closed_url, monkeypatch):
    monkeypatch.setenv("IWAN_CIFAR_URL", closed_url)

    with pytest.raises(DatasetNotFoundError) as caught:
        load_dataset("cifar100", "train")

    message = str(caught.value)
    assert f"cannot download {closed_url}cifar-100-python.tar.gz: Connection refused" in message
    assert message.endswith(f"extract it into {data_dir}") and "\n" not in message


def test_an_archive_without_the_official_files_is_refused(cifar_site, data_dir, monkeypatch):
    archive = _cifar100_archive({"meta": {"fine_label_names": []}})
    cifar_site.files["cifar-100-python.tar.gz"] = archive
    spec = dataclasses.replace(datasets._CIFAR_ARCHIVES["cifar100"], md5=hashlib.md5(archive).hexdigest())
    monkeypatch.setitem(datasets._CIFAR_ARCHIVES, "cifar100", spec)

    with pytest.raises(DatasetNotFoundError, match=r"does not hold cifar-100-python/train"):
        load_dataset("cifar100", "train")
    assert not (data_dir / "cifar-100-python").exists()


def test_an_archive_that_writes_outside_its_folder_is_refused(cifar_site, data_dir, tmp_path, monkeypatch):
    archive = _cifar100_archive({"../escaped": b"x", "meta": b"y", "train": b"z", "test": b"w"})
    cifar_site.files["cifar-100-python.tar.gz"] = archive
    spec = dataclasses.replace(datasets._CIFAR_ARCHIVES["cifar100"], md5=hashlib.md5(archive).hexdigest())
    monkeypatch.setitem(datasets._CIFAR_ARCHIVES, "cifar100", spec)

    with pytest.raises(DatasetNotFoundError, match=r"cannot be extracted"):
        load_dataset("cifar100", "train")
    assert not (tmp_path / "escaped").exists() and not (data_dir / "escaped").exists()
    assert not (data_dir / "cifar-100-python").exists()


# --- ResNet-50's weights ---------------------------------------------------------------------


def test_resnet50_weights_are_downloaded_checked_and_loaded(site, data_dir, monkeypatch):
    import torch

    from iwan.tv import models
    from iwan.vision import predictors

    buffer = io.BytesIO()
    torch.manual_seed(1)
    torch.save(models.resnet50().state_dict(), buffer)
    body = buffer.getvalue()
    name = f"resnet50-{hashlib.sha256(body).hexdigest()[:8]}.pth"
    site.files[name] = body
    monkeypatch.setattr(predictors, "RESNET50_WEIGHTS_FILE", name)
    monkeypatch.setenv("IWAN_WEIGHTS_URL", site.url)

    first = predictors.load_predictor("resnet50", image_size=32, precision="fp32")
    second = predictors.load_predictor("resnet50", image_size=32, precision="fp32")

    assert (data_dir / "weights" / name).read_bytes() == body
    assert [n for n, _ in site.requests] == [name]
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(first.predict(images).indices, second.predict(images).indices)
    loaded = first._runner.head.model.conv1.weight.detach()
    torch.testing.assert_close(loaded, torch.load(io.BytesIO(body), weights_only=True)["conv1.weight"])


def test_resnet50_weights_with_a_wrong_checksum_are_refused(site, data_dir, monkeypatch):
    from iwan.vision.predictors import RESNET50_WEIGHTS_FILE, load_predictor

    site.files[RESNET50_WEIGHTS_FILE] = _blob(2000)
    monkeypatch.setenv("IWAN_WEIGHTS_URL", site.url)

    with pytest.raises(FetchError) as caught:
        load_predictor("resnet50")

    message = str(caught.value)
    assert message.startswith("ResNet-50's ImageNet weights could not be downloaded (")
    assert "not 0676ba61" in message and "--weights PATH" in message and "efficientnet-lite0" in message
    assert not (data_dir / "weights" / RESNET50_WEIGHTS_FILE).exists()


# --- offline: one message for everything -------------------------------------------------------


def test_offline_every_missing_piece_is_named_with_its_place(data_dir, closed_url, monkeypatch):
    for variable in ("IWAN_USF_URL", "IWAN_CIFAR_URL", "IWAN_WEIGHTS_URL"):
        monkeypatch.setenv(variable, closed_url)
    resources = [usf_resource(settings()), datasets.cifar_resource("cifar100", settings()), resnet50_weights(settings())]

    started = time.monotonic()
    with pytest.raises(MissingDataError) as caught:
        fetch.fetch_all(resources, progress=False)

    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert message.startswith("3 pieces of data are missing and could not be downloaded: ")
    for url in (f"{closed_url}Cue_Target_Pairs.A-B", f"{closed_url}cifar-100-python.tar.gz",
                f"{closed_url}resnet50-0676ba61.pth"):
        assert f"cannot download {url}: Connection refused" in message
    assert f"into {data_dir / 'usf-appendix-a'}" in message
    assert f"extract it into {data_dir}" in message
    assert f"as {data_dir / 'weights' / 'resnet50-0676ba61.pth'}" in message
    assert "\n" not in message


def test_only_the_missing_pieces_are_fetched_and_named(site, data_dir, closed_url, tmp_path, monkeypatch):
    _local_copy(data_dir / "usf-appendix-a", _usf_bodies(tmp_path, "LAB"))
    monkeypatch.setenv("IWAN_USF_URL", site.url)
    monkeypatch.setenv("IWAN_WEIGHTS_URL", closed_url)

    with pytest.raises(MissingDataError) as caught:
        fetch.fetch_all([usf_resource(settings()), resnet50_weights(settings())], progress=False)

    assert str(caught.value).startswith("1 piece of data is missing and could not be downloaded: ResNet-50's")
    assert "USF" not in str(caught.value) and site.requests == []


# --- the commands: `iwan data check|fetch`, `iwan norms load --download` ---------------------


def iwan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "iwan", *args], check=False, capture_output=True, text=True, timeout=120
    )


def test_offline_fetch_stops_at_once_naming_every_piece_and_its_place(data_dir, closed_url, monkeypatch):
    for variable in ("IWAN_USF_URL", "IWAN_CIFAR_URL", "IWAN_WEIGHTS_URL"):
        monkeypatch.setenv(variable, closed_url)

    started = time.monotonic()
    result = iwan("data", "fetch", "norms", "cifar100", "resnet50")

    assert time.monotonic() - started < 60
    assert result.returncode == 1 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("iwan: error: 3 pieces of data are missing and could not be downloaded: the USF norms (")
    for place in (data_dir / "usf-appendix-a", data_dir / "weights" / "resnet50-0676ba61.pth"):
        assert str(place) in line
    assert f"{closed_url}cifar-100-python.tar.gz and extract it into {data_dir}" in line


def test_fetch_then_check(site, data_dir, tmp_path, monkeypatch):
    bodies = _usf_bodies(tmp_path, "LAB")
    site.files.update(bodies)
    monkeypatch.setenv("IWAN_USF_URL", site.url)

    fetched = iwan("data", "fetch", "norms", "--json")
    again = iwan("data", "fetch", "norms", "--json")
    checked = iwan("data", "check", "norms")

    assert fetched.returncode == 0, fetched.stderr
    [row] = json.loads(fetched.stdout)
    assert row == {
        "name": "norms", "title": "the USF norms", "path": str(data_dir / "usf-appendix-a"), "present": True,
        "missing": [], "url": site.url, "fetched": True,
    }
    assert json.loads(again.stdout)[0]["fetched"] is False
    assert len(site.requests) == len(FILES)
    assert _snapshot(data_dir / "usf-appendix-a") == bodies
    assert (checked.returncode, checked.stdout.split()) == (0, ["norms", "present", str(data_dir / "usf-appendix-a")])


def test_check_lists_what_is_missing_and_exits_1(data_dir, tmp_path):
    _local_copy(data_dir / "usf-appendix-a", _usf_bodies(tmp_path, "LAB"))
    (data_dir / "usf-appendix-a" / FILES[2]).unlink()

    result = iwan("data", "check", "--json")

    assert result.returncode == 1
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    # The local copies are listed too, but never downloaded they fail the check only when named.
    assert list(rows) == ["norms", "cifar100", "resnet50", "cifar10-jpg", "cifar100-sample"]
    assert rows["norms"]["missing"] == [FILES[2]] and rows["cifar100"]["missing"] == ["meta", "train", "test"]
    [line] = result.stderr.splitlines()
    assert line.startswith("iwan: error: 3 pieces of data are missing: the USF norms; CIFAR-100; ResNet-50's")
    assert "run `iwan data fetch` on a machine with internet" in line


def test_norms_load_download_failure_keeps_the_local_copy(site, data_dir, tmp_path, monkeypatch):
    good = _usf_bodies(tmp_path / "good", "LAB")
    _local_copy(data_dir / "usf-appendix-a", good)
    site.files.update(_usf_bodies(tmp_path / "new", "CAT"))
    del site.files[FILES[3]]

    result = iwan("norms", "load", "--download", "--base-url", site.url)

    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"iwan: error: cannot download {site.url}{FILES[3]}: HTTP 404 Not Found; ")
    assert f"{data_dir / 'usf-appendix-a'} is unchanged" in line
    assert _snapshot(data_dir / "usf-appendix-a") == good


def test_a_local_copy_that_is_a_link_is_replaced_by_the_download(site, data_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    _local_copy(elsewhere, _usf_bodies(tmp_path / "old", "LAB"))
    data_dir.mkdir()
    (data_dir / "usf-appendix-a").symlink_to(elsewhere)
    new = _usf_bodies(tmp_path / "new", "CAT")
    site.files.update(new)

    download_usf(data_dir / "usf-appendix-a", site.url, progress=False, timeout=TIMEOUT)

    assert not (data_dir / "usf-appendix-a").is_symlink()
    assert _snapshot(data_dir / "usf-appendix-a") == new
    assert sorted(p.name for p in data_dir.iterdir()) == ["usf-appendix-a"]
    assert _snapshot(elsewhere) == _usf_bodies(tmp_path / "old", "LAB")  # what the link named is kept
