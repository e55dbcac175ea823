"""Hostile and careless input through the CLI: one line on stderr and exit 1, never a traceback,
never a password, never a hang, never a path outside its folder, never a code-running file."""

from __future__ import annotations

import json
import math
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from test_cli_norms import iwan

from iwan.datasets.loaders import ImageDataset


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The error line of a failed run, checked to be the whole of stderr."""
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert result.stderr.startswith("iwan: error: "), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr.strip()


# --- the database URL: no hang, no password shown, PostgreSQL only ------------------------------


@pytest.fixture
def silent_server():
    """A TCP server that accepts connections and never says a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


def test_a_server_that_never_answers_times_out(silent_server):
    started = time.monotonic()
    result = iwan("db", "status", env={
        "IWAN_DATABASE_URL": f"postgresql://u:pw@127.0.0.1:{silent_server}/x",
        "IWAN_CONNECT_TIMEOUT": "2",
    })
    assert time.monotonic() - started < 30
    line = one_line_error(result)
    assert "cannot connect" in line and "timeout" in line.lower()
    assert "pw" not in line.replace("password", "")


def test_connect_timeout_setting_is_checked():
    line = one_line_error(iwan("db", "status", env={"IWAN_CONNECT_TIMEOUT": "soon"}))
    assert "IWAN_CONNECT_TIMEOUT='soon' must be a whole number" in line


@pytest.mark.parametrize("url", [
    "postgresql://u:s3cr3t@127.0.0.1:1/x",
    "postgresql://u@127.0.0.1:1/x?password=s3cr3t",
    "postgresql://u@127.0.0.1:1/x?sslmode=disable&password=s3cr3t&application_name=a",
    "postgresql://u:p@ss/s3cr3t@127.0.0.1:1/x",
    "postgresql://u:s3cr3t@@127.0.0.1:1/x",
    "postgres+psycopg://u:s3cr3t@127.0.0.1:1/x",
    "host=127.0.0.1 port=1 user=u password=s3cr3t dbname=x",
    "host=127.0.0.1 port=1 password = 's3 cr3t' dbname=x",
    "mysql://u:s3cr3t@127.0.0.1:1/x",
])
def test_passwords_are_hidden_in_every_form(url):
    line = one_line_error(iwan("--database-url", url, "db", "status"))
    assert "s3cr3t" not in line and "cr3t" not in line
    assert "***" in line


def test_safe_url_keeps_what_is_not_a_password():
    from iwan.db.engine import safe_url

    assert safe_url("postgresql://u:pw@h:5/d?sslmode=require") == "postgresql://u:***@h:5/d?sslmode=require"
    assert safe_url("host=h password=pw user=u") == "host=h password=*** user=u"
    assert safe_url("postgresql://h/d") == "postgresql://h/d"


def test_a_non_postgresql_url_is_one_line():
    line = one_line_error(iwan("--database-url", "sqlite:///tmp/x.db", "db", "status"))
    assert "is not a PostgreSQL URL" in line


def test_downgrade_to_an_unknown_revision_is_one_line(database_url):
    line = one_line_error(iwan("db", "downgrade", "nosuchrev"))
    assert "schema revision 'nosuchrev' is unknown" in line
    assert iwan("db", "status", "--json").returncode == 0


# --- CIFAR files are read without running what they hold ---------------------------------------


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _crafted_cifar100(root: Path, marker: Path) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    batch = {"data": np.zeros((1, 3072), np.uint8), "fine_labels": [0], "coarse_labels": [0],
             "payload": _RunsCode(marker)}
    (folder / "train").write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": ["a"], "coarse_label_names": ["b"]}))
    return root


def test_a_crafted_cifar_file_does_not_run_code(tmp_path):
    from iwan.datasets.loaders import DatasetFormatError, load_dataset

    marker = tmp_path / "ran"
    root = _crafted_cifar100(tmp_path / "data", marker)
    with pytest.raises(DatasetFormatError, match=r"cifar-100-python/train: refused to read: .*posix\.system"):
        load_dataset(f"cifar100:{root}", "train")
    assert not marker.exists()

    line = one_line_error(iwan("predict", "--dataset", f"cifar100:{root}", "--split", "train"))
    assert "refused to read" in line and str(root / "cifar-100-python" / "train") in line
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_cifar_files_of_every_protocol_still_load(tmp_path, protocol):
    from iwan.datasets.loaders import load_dataset

    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    pixels = np.arange(2 * 3072, dtype=np.uint64).astype(np.uint8).reshape(2, 3072)
    batch = {"data": pixels, "fine_labels": [1, 0], "coarse_labels": [0, 0], "filenames": [b"a.png", b"b.png"]}
    (folder / "train").write_bytes(pickle.dumps(batch, protocol=protocol))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": ["x", "y"], "coarse_label_names": ["z"]},
                                               protocol=protocol))
    dataset = load_dataset(f"cifar100:{tmp_path}", "train")
    assert dataset.fine_labels.tolist() == [1, 0]
    assert dataset.images[1, 0, 0, 0] == pixels[1, 0]


@pytest.mark.real_data("cifar100-sample")
def test_the_real_cifar100_sample_still_loads(shared_data):
    from iwan.datasets.loaders import load_dataset

    sample = shared_data / "cifar100-train-sample"
    dataset = load_dataset(f"cifar100:{sample}", "train")
    assert len(dataset) == 675 and len(dataset.class_names) == 100


def test_nothing_in_iwan_unpickles_a_file_with_pickle_load():
    sources = [p for d in ("iwan", "hashing") for p in (Path(__file__).parent.parent / d).rglob("*.py")]
    offenders = [str(p) for p in sources if "pickle.load(" in p.read_text() or "pickle.loads(" in p.read_text()]
    assert offenders == []


# --- image folders are told apart by their path --------------------------------------------------


def _image_folder(root: Path, colour: int) -> Path:
    from PIL import Image

    folder = root / "imgs" / "train" / "cat"
    folder.mkdir(parents=True)
    Image.new("RGB", (8, 8), (colour, 0, 0)).save(folder / "0.png")
    return root / "imgs"


def test_image_folders_with_one_name_are_two_data_sets(tmp_path, database_url):
    import sqlalchemy as sa

    from iwan.datasets.loaders import load_dataset
    from iwan.db import images

    a, b = _image_folder(tmp_path / "a", 10), _image_folder(tmp_path / "b", 200)
    first, second = load_dataset(f"imagefolder:{a}", "train"), load_dataset(f"imagefolder:{b}", "train")
    assert first.name == f"imagefolder:{a.resolve()}" and second.name == f"imagefolder:{b.resolve()}"
    assert first.images[0, 0, 0, 0] == 10 and second.images[0, 0, 0, 0] == 200
    engine = sa.create_engine(database_url)
    ids = images.register(engine, first).ids.tolist() + images.register(engine, second).ids.tolist()
    assert len(set(ids)) == 2
    # A relative spec names the same data set as the absolute one.
    os.chdir(tmp_path)
    assert load_dataset("imagefolder:a/imgs", "train").name == first.name
    engine.dispose()


def test_index_build_finds_the_folder_just_predicted(tmp_path, database_url):
    from usf_files import HEADER_LINE, row, write

    assert iwan("norms", "load", str(write(tmp_path, HEADER_LINE, row(cue="CAT", target="DOG")))).returncode == 0
    a, b = _image_folder(tmp_path / "a", 10), _image_folder(tmp_path / "b", 200)
    for folder in (a, b):
        predicted = iwan("predict", "--dataset", f"imagefolder:{folder}", "--split", "train",
                         "--predictor", "efficientnet-lite0", "--json")
        assert predicted.returncode == 0, predicted.stderr
        assert json.loads(predicted.stdout)["predicted"] == 1
    built = subprocess.run(
        [sys.executable, "-m", "iwan", "index", "build", "--dataset", "imagefolder:a/imgs", "--split", "train",
         "--predictor", "efficientnet-lite0", "--json"],
        capture_output=True, text=True, cwd=tmp_path, check=False, env={**os.environ, "IWAN_DATABASE_URL": database_url},
    )
    assert built.returncode == 0, built.stderr
    meta = json.loads(built.stdout)
    assert meta["dataset"] == f"imagefolder:{a.resolve()}" and meta["n_images"] == 1


def test_a_deep_image_folder_is_cached_under_a_short_name(tmp_path):
    from iwan.datasets.loaders import load_dataset

    deep = tmp_path / ("d" * 200) / ("e" * 200)
    folder = _image_folder(deep, 30)
    dataset = load_dataset(f"imagefolder:{folder}", "train")
    assert dataset.name == f"imagefolder:{folder.resolve()}"
    assert load_dataset(f"imagefolder:{folder}", "train").images[0, 0, 0, 0] == 30


# --- norms files: damage is file:line ----------------------------------------------------------


@pytest.mark.parametrize("cue,expected", [
    ("L" * 3000, "words have at most 100"),
    ("LA\0B", "holds a NUL byte"),
])
def test_norms_damage_is_file_and_line(database_url, tmp_path, cue, expected):
    from usf_files import HEADER_LINE, row, write

    path = write(tmp_path, HEADER_LINE, row(), row(cue=cue))
    line = one_line_error(iwan("norms", "load", str(path)))
    assert f"{path}:6: " in line and expected in line


def test_concurrent_norms_loads_both_succeed(database_url, tmp_path):
    from usf_files import HEADER_LINE, row, write

    path = write(tmp_path, HEADER_LINE, row(), row(cue="CAT", target="DOG"))
    env = {**os.environ, "IWAN_DATABASE_URL": database_url}
    runs = [subprocess.Popen([sys.executable, "-m", "iwan", "norms", "load", str(path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for _ in range(3)]
    for run in runs:
        assert run.wait(timeout=300) == 0, run.stderr.read()
    shown = iwan("norms", "show", "CAT", "--json")
    assert json.loads(shown.stdout) == [{"target": "DOG", "strength": 0.145}]


# --- images: a pixel limit before decoding ---------------------------------------------------------


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path, database_url):
    from PIL import Image

    _tiny_index("tiny", _registered_ids(database_url))
    bomb = tmp_path / "bomb.png"
    Image.new("1", (12_000, 12_000)).save(bomb, optimize=True)
    assert bomb.stat().st_size < 1_000_000
    started = time.monotonic()
    line = one_line_error(iwan("search", "--image", str(bomb), "--index-name", "tiny"))
    assert "144,000,000 pixels (144.0 megapixels), over the limit of 40,000,000 (IWAN_MAX_IMAGE_PIXELS)" in line
    assert time.monotonic() - started < 20
    line = one_line_error(iwan("search", "--image", str(bomb), "--index-name", "tiny",
                               env={"IWAN_MAX_IMAGE_PIXELS": "1000"}))
    assert "over the limit of 1,000 (IWAN_MAX_IMAGE_PIXELS)" in line


def test_pillows_own_bomb_error_is_a_format_error(tmp_path, monkeypatch):
    from PIL import Image

    from iwan.config import DEFAULT_MAX_IMAGE_PIXELS
    from iwan.datasets.loaders import DatasetFormatError, load_image

    Image.new("RGB", (100, 100)).save(tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DatasetFormatError, match="a.png: over Pillow.s own limit of 2,000 pixels .DecompressionBombError"):
        load_image(tmp_path / "a.png", max_pixels=DEFAULT_MAX_IMAGE_PIXELS)


def test_a_decompression_bomb_in_an_image_folder_is_one_line(tmp_path):
    from PIL import Image

    folder = tmp_path / "bombs" / "train" / "cat"
    folder.mkdir(parents=True)
    Image.new("1", (12_000, 12_000)).save(folder / "0.png")
    line = one_line_error(iwan("predict", "--dataset", f"imagefolder:{tmp_path / 'bombs'}", "--split", "train",
                               "--predictor", "efficientnet-lite0"))
    assert "megapixels), over the limit" in line and "0.png" in line


def test_large_query_images_are_decoded_small(tmp_path):
    from PIL import Image

    from iwan.config import DEFAULT_MAX_IMAGE_PIXELS as LIMIT
    from iwan.datasets.loaders import load_image

    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (4000, 3000), (10, 120, 200)).save(photo, quality=90)
    small = load_image(photo, min_side=512, max_pixels=LIMIT)
    assert small.shape[2] == 3 and 512 <= min(small.shape[:2]) < 1024
    assert abs(int(small[100, 100, 2]) - 200) < 4
    assert load_image(photo, max_pixels=LIMIT).shape == (3000, 4000, 3)
    png = tmp_path / "big.png"
    Image.new("RGB", (3000, 2400), (5, 6, 7)).save(png)
    assert min(load_image(png, min_side=512, max_pixels=LIMIT).shape[:2]) == 600


# --- saved indexes: names are names, saves are atomic, damage is one line --------------------------


def _tiny_index(name: str, image_ids):
    from iwan.config import settings
    from iwan.network.graph import IwanGraph
    from iwan.network.index import IwanIndex
    from iwan.network.saved import BuiltIndex, IndexMeta, index_dir

    graph = IwanGraph(
        words=["CAT", "DOG"],
        edge_a=np.array([0], np.int64), edge_b=np.array([1], np.int64), edge_weight=np.array([2.0]),
        image_words=np.array([[0], [1]], np.int64), image_costs=np.array([[1.0], [1.5]]),
        top_wwk=4, strength="forward",
    )
    meta = IndexMeta(name=name, model="m", dataset="d", split="train", top_iwk=1, top_wwk=4,
                     strength="forward", source="usf", n_images=2, n_words=2, n_word_edges=1,
                     mapped_classes=2, unmapped_classes=[], build_seconds=0.0)
    built = BuiltIndex(IwanIndex(graph, np.asarray(image_ids, np.int64)), np.array([0, 1], np.int64), meta)
    return built, built.save(index_dir(name, settings()))


def _registered_ids(database_url) -> list[int]:
    import sqlalchemy as sa

    from iwan.db import images

    dataset = ImageDataset("d", "train", np.zeros((2, 4, 4, 3), np.uint8), np.array([0, 1]), None,
                           ["cat", "dog"], None, None)
    engine = sa.create_engine(database_url)
    ids = images.register(engine, dataset).ids.tolist()
    engine.dispose()
    return ids


def test_word_weights_whose_cost_overflows_are_refused(database_url):
    _tiny_index("tiny", _registered_ids(database_url))
    ok = iwan("search", "--words", "cat:1e-300", "--index-name", "tiny", "--json")
    assert ok.returncode == 0, ok.stderr
    assert math.isfinite(json.loads(ok.stdout)["hits"][0]["distance"])
    line = one_line_error(iwan("search", "--words", "cat:1e-320", "--index-name", "tiny", "--json"))
    assert "too small" in line and "1e-300" in line


def test_emit_json_never_writes_non_standard_json(capsys):
    from iwan.cli.common import emit_json

    emit_json({"distance": float("inf"), "scores": [np.float32("nan"), 0.5, np.int64(3)], "k": (1, -math.inf)})
    written = capsys.readouterr().out
    assert json.loads(written, parse_constant=lambda c: pytest.fail(f"non-standard {c}")) == {
        "distance": None, "scores": [None, 0.5, 3], "k": [1, None]}


def test_an_index_out_of_step_with_the_database_is_one_line(database_url):
    _tiny_index("stale", [10**9, 10**9 + 1])
    line = one_line_error(iwan("search", "--words", "cat", "--index-name", "stale"))
    assert "index 'stale' is out of step with the database" in line
    assert "iwan index build --dataset d --split train --name stale" in line


@pytest.mark.parametrize("name", ["../../x", "/any/dir", "..", ".hidden", "a/b", "", "x" * 65])
def test_index_names_are_names(name, tmp_path):
    from iwan.config import settings

    for command in (["index", "build", "--dataset", "d", "--split", "s", "--name", name],
                    ["search", "--words", "cat", "--index-name", name]):
        line = one_line_error(iwan(*command, env={"IWAN_DATABASE_URL": "postgresql://u@127.0.0.1:1/x"}))
        assert "is not a name" in line
    assert not (settings().home / "x").exists() and not (settings().home.parent / "x").exists()


def test_a_link_out_of_the_index_folder_is_refused(tmp_path):
    from iwan.config import settings
    from iwan.network.saved import index_dir

    settings().index_dir.mkdir(parents=True)
    (settings().index_dir / "out").symlink_to(tmp_path)
    with pytest.raises(ValueError, match="leads outside"):
        index_dir("out", settings())


def test_a_failed_save_leaves_the_previous_index(monkeypatch):
    from iwan.network import saved as indexes

    built, path = _tiny_index("kept", [1, 2])
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(indexes.np, "save", fail)
    with pytest.raises(OSError):
        built.save(path)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["kept"]
    monkeypatch.undo()
    built.save(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["kept"]


@pytest.mark.parametrize("damage", ["truncate-graph", "truncate-classes", "edit-meta", "drop-classes", "wrong-classes"])
def test_a_damaged_index_is_one_line(damage):
    _, path = _tiny_index("damaged", [1, 2])
    classes = path / "class_word_ids.npy"
    if damage == "truncate-graph":
        graph = path / "graph.npz"
        graph.write_bytes(graph.read_bytes()[:200])
    elif damage == "truncate-classes":
        classes.write_bytes(classes.read_bytes()[:-5])
    elif damage == "edit-meta":
        (path / "meta.json").write_text('{"name": "damaged", "top_iwk": "four"}')
    elif damage == "drop-classes":
        classes.unlink()
    else:
        np.save(classes, np.array([0, 7]))  # a class mapped onto a word the graph lacks
    line = one_line_error(iwan("search", "--words", "cat", "--index-name", "damaged"))
    assert "damaged" in line and "iwan index build" in line


# --- checkpoints: never torch's advice, never a traceback ------------------------------------------


@pytest.mark.parametrize("kind", ["code", "garbage", "truncated", "foreign"])
def test_a_bad_checkpoint_is_one_line(tmp_path, database_url, kind):
    import torch

    path = tmp_path / "best.pt"
    if kind == "code":
        torch.save({"x": _RunsCode(tmp_path / "ran")}, path)
    elif kind == "garbage":
        path.write_bytes(b"hello, not a checkpoint")
    elif kind == "truncated":
        torch.save({"a": torch.zeros(100)}, path)
        path.write_bytes(path.read_bytes()[:300])
    else:
        from hashing.net import CHECKPOINT_FORMAT

        torch.save({"format": CHECKPOINT_FORMAT, "config": {"nonsense": 1}}, path)
    folder = _image_folder(tmp_path, 0)
    result = iwan("hash", "encode", "--dataset", f"imagefolder:{folder}", "--split", "train",
                  "--checkpoint", str(path), "--name", "h")
    line = one_line_error(result)
    assert "weights_only" not in line and "can still be loaded" not in line
    assert str(path) in line
    assert not (tmp_path / "ran").exists()
