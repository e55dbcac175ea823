"""Settings flow from the entry points down: what an entry point is given (a CLI command's
settings, `create_app(settings=...)`, `make_engine(settings=...)`, `LiveCollection.open(...,
settings=...)`, `load_dataset(..., settings=...)`) is what everything below it uses, whatever the
environment says; and nothing below the entry points reads the environment itself."""

from __future__ import annotations

import ast
import dataclasses
import socket
import time
from pathlib import Path

import cifar_files
import numpy as np
import pytest
from livedata import PREDICTOR, load_norms, png, tiny_predictor

from iwan.collections.live import (
    LiveCollection,
    collection_details,
    create_collection,
    drop_collection,
    image_file,
    snapshot_path,
)
from iwan.config import Settings
from iwan.vision.encoder import Encoder

KEY = "flow-key"
IWAN = Path(__file__).resolve().parent.parent / "iwan"


@pytest.fixture
def given(tmp_path) -> Settings:
    """Settings handed to an entry point: a home and data folder of their own, a small pixel limit."""
    return Settings(home=tmp_path / "given-home", data_dir=tmp_path / "given-data", database_url=None,
                    max_image_pixels=1000, api_key=KEY, allowed_hosts=("testserver",))


@pytest.fixture
def environment(tmp_path, monkeypatch) -> Path:
    """An environment that says otherwise on every count; its home must stay empty."""
    home = tmp_path / "env-home"
    monkeypatch.setenv("IWAN_HOME", str(home))
    monkeypatch.setenv("IWAN_DATA_DIR", str(tmp_path / "env-data"))
    monkeypatch.setenv("IWAN_MAX_IMAGE_PIXELS", str(10**9))
    monkeypatch.setenv("IWAN_API_KEY", "not-the-given-key")
    with socket.socket() as s:  # a URL nothing listens on: a download from it fails at once
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv("IWAN_CIFAR_URL", f"http://127.0.0.1:{s.getsockname()[1]}/")
    return home


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def encoder(settings: Settings) -> Encoder:
    return Encoder(PREDICTOR, None, settings=settings, loaded_predictor=tiny_predictor())


# --- create_app(settings=...) ------------------------------------------------------------------


def test_the_service_refuses_an_upload_by_its_settings_not_the_environment(engine, tmp_path, given, environment):
    from fastapi.testclient import TestClient

    from iwan.serve import create_app

    load_norms(engine, tmp_path)
    create_collection(engine, "flow", PREDICTOR, settings=given)
    auth = {"Authorization": f"Bearer {KEY}"}
    with LiveCollection.open(engine, "flow", settings=given, follow=False, encoder=encoder(given)) as live, \
            TestClient(create_app(engine, [live], settings=given)) as client:
        # 32x32 is 1,024 pixels: over the given 1,000, under the environment's 10**9.
        refused = client.post("/v1/collections/flow/images", files=[("images", ("big.png", png(1), "image/png"))],
                              headers=auth)
        assert refused.status_code == 413 and "over the limit of 1,000" in refused.json()["detail"]
        query = client.post("/v1/collections/flow/search", files={"image": ("q.png", png(2), "image/png")})
        assert query.status_code == 413
        # The given key is the key (the environment's is not), and the bytes go to the given home.
        wrong = {"Authorization": "Bearer not-the-given-key"}
        small = [("images", ("small.png", png(3, size=16), "image/png"))]
        assert client.post("/v1/collections/flow/images", files=small, headers=wrong).status_code == 401
        added = client.post("/v1/collections/flow/images", files=small, headers=auth)
        assert added.status_code == 201, added.text
        image_id = added.json()["added"][0]["image_id"]
        assert [p.parent.parent for p in files_under(given.image_dir)] == [given.image_dir]
        assert image_file(engine, image_id, settings=given)[0] == png(3, size=16)
        assert client.delete(f"/v1/images/{image_id}", headers=auth).status_code == 204
        assert files_under(given.image_dir) == []
    assert snapshot_path("flow", given).is_dir()
    assert files_under(environment) == []


def test_a_thumbnail_is_read_from_the_services_home(engine, tmp_path, given, environment):
    from fastapi.testclient import TestClient

    from iwan.serve import create_app

    load_norms(engine, tmp_path)
    create_collection(engine, "thumbs", PREDICTOR, settings=given)
    with LiveCollection.open(engine, "thumbs", settings=given, follow=False, encoder=encoder(given)) as live, \
            TestClient(create_app(engine, [live], settings=given)) as client:
        [(image_id, _)] = live.add_files([("small.png", png(7, size=16))]).added
        answer = client.get(f"/v1/images/{image_id}/thumbnail")
        assert answer.status_code == 200 and answer.content == png(7, size=16)


def test_the_collections_a_service_opens_get_its_settings(engine, tmp_path, given, environment):
    from fastapi.testclient import TestClient

    from iwan.serve import create_app

    load_norms(engine, tmp_path)
    create_collection(engine, "loaded", PREDICTOR, settings=given)
    with TestClient(create_app(engine, load=["loaded"], settings=given)) as client:
        deadline = time.monotonic() + 300
        while client.get("/readyz").json()["status"] == "loading":
            assert time.monotonic() < deadline, client.get("/readyz").json()
            time.sleep(0.1)
        assert client.get("/readyz").status_code == 200, client.get("/readyz").json()
        live = client.app.state.service.collections["loaded"]
        assert live.settings is given and live.encoder.settings is given
        # Its predictor (the onnx backend) was exported into the given home's model folder.
        assert (given.model_dir / f"{PREDICTOR}.onnx").is_file()
        refused = client.post("/v1/collections/loaded/images", files=[("images", ("a.png", png(4), "image/png"))],
                              headers={"Authorization": f"Bearer {KEY}"})
        assert refused.status_code == 413
    assert files_under(environment) == []


# --- LiveCollection.open(settings=...) and the catalogue -------------------------------------------


def test_a_live_collection_keeps_its_snapshot_and_files_under_the_given_home(engine, tmp_path, given, environment):
    load_norms(engine, tmp_path)
    create_collection(engine, "kept", PREDICTOR, settings=given)
    assert snapshot_path("kept", given).is_dir()
    with LiveCollection.open(engine, "kept", settings=given, follow=False, encoder=encoder(given)) as live:
        assert live.settings is given
        # The given pixel limit, not the environment's, refuses a 32x32 upload.
        refused = live.add_files([("big.png", png(5))])
        assert refused.added == [] and "over the limit of 1,000" in refused.skipped[0][1]
        [(image_id, _)] = live.add_files([("small.png", png(6, size=16))]).added
        assert image_file(engine, image_id, settings=given)[0] == png(6, size=16)
        assert len(files_under(given.image_dir)) == 1
    details = collection_details(engine, "kept", settings=given)
    assert details["snapshot"] == str(snapshot_path("kept", given)) and details["snapshot_change"] == details["last_change"]
    assert collection_details(engine, "kept")["snapshot"] is None  # the environment's home has none
    drop_collection(engine, "kept", settings=given)
    assert not snapshot_path("kept", given).exists() and files_under(given.image_dir) == []
    assert files_under(environment) == []


# --- load_dataset(settings=...) ------------------------------------------------------------------


def test_load_dataset_reads_the_given_data_dir_and_caches_in_the_given_home(tmp_path, given, environment):
    from PIL import Image

    from iwan.datasets.loaders import DatasetFormatError, DatasetNotFoundError, load_dataset

    cifar_files.write_cifar100(given.data_dir, cifar_files.images(4), [0, 1, 2, 3])
    data = load_dataset("cifar100", "train", settings=given)
    np.testing.assert_array_equal(data.images, cifar_files.images(4))
    with pytest.raises(DatasetNotFoundError, match="env-data"):  # the environment's data folder is empty
        load_dataset("cifar100", "train")

    folder = tmp_path / "folder" / "train"
    (folder / "cat").mkdir(parents=True)
    Image.new("RGB", (16, 16), (200, 0, 0)).save(folder / "cat" / "0.png")
    roomy = dataclasses.replace(given, max_image_pixels=256)
    assert load_dataset(f"imagefolder:{folder.parent}", "train", settings=roomy).images.shape == (1, 16, 16, 3)
    assert len(list((given.cache_dir / "datasets").glob("*.npy"))) == 1
    Image.new("RGB", (32, 32), (0, 200, 0)).save(folder / "cat" / "1.png")
    with pytest.raises(DatasetFormatError, match=r"1,024 pixels .*over the limit of 256"):
        load_dataset(f"imagefolder:{folder.parent}", "train", settings=roomy)
    assert files_under(environment) == []


# --- make_engine(settings=...) --------------------------------------------------------------------


def test_make_engine_uses_the_given_settings(database_url, tmp_path, monkeypatch):
    import sqlalchemy as sa

    from iwan.db.engine import make_engine

    monkeypatch.setenv("IWAN_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("IWAN_CONNECT_TIMEOUT", "not a number")  # settings() would refuse it
    given = Settings(home=tmp_path / "home", data_dir=tmp_path / "data", database_url=database_url, connect_timeout=5)
    engine = make_engine(settings=given)
    try:
        assert engine.url.database == sa.make_url(database_url).database
        with engine.connect():
            pass
    finally:
        engine.dispose()
    with pytest.raises(ValueError, match="IWAN_CONNECT_TIMEOUT='not a number'"):
        make_engine()  # given nothing, it reads the environment


# --- the CLI: the environment read once, by the `iwan` group -----------------------------------------


def test_a_command_reads_the_environment_once_and_hands_it_down(engine, tmp_path, monkeypatch):
    import json

    from click.testing import CliRunner

    from iwan import config
    from iwan.cli import cli

    load_norms(engine, tmp_path)
    calls = []
    real = config.settings

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(config, "settings", counted)
    runner = CliRunner()
    for args in (["collection", "create", "cli", "--predictor", PREDICTOR, "--json"], ["collection", "show", "cli", "--json"],
                 ["data", "check", "norms", "--json"]):
        calls.clear()
        result = runner.invoke(cli, args)
        assert len(calls) == 1, (args, calls)
        if args[0] == "collection":
            assert result.exit_code == 0, result.output
    shown = json.loads(runner.invoke(cli, ["collection", "show", "cli", "--json"]).output)
    assert shown["snapshot"] == str(real().collection_dir / "cli.snapshot")


# --- nothing below the entry points reads the environment ----------------------------------------

NOT_BELOW = {"config.py", "__init__.py"}
"""iwan/config.py reads the environment (that is what it is for); iwan/__init__.py only re-exports."""

ENTRY_POINTS = {
    # Public functions users call directly: given no settings, they read them from the environment.
    ("db/engine.py", "make_engine"): "iwan.make_engine(): IWAN_DATABASE_URL or the embedded server",
    ("db/engine.py", "database_url"): "the URL in force, for scripts and the embedded server's holders",
    ("serve/app.py", "create_app"): "the HTTP service's factory (settings=None: the environment)",
    ("collections/live.py", "LiveCollection.open"): "iwan.LiveCollection.open(engine, name)",
    ("collections/live.py", "create_collection"): "iwan.create_collection: writes the first snapshot",
    ("collections/live.py", "drop_collection"): "iwan.drop_collection: deletes files and the snapshot",
    ("collections/live.py", "collection_details"): "reads the snapshot",
    ("collections/live.py", "image_file"): "an upload's bytes (the service's thumbnails)",
    ("datasets/loaders.py", "load_dataset"): "the data sets' one loader",
    ("vision/predictors.py", "load_predictor"): "a predictor by name (scripts, notebooks)",
    # hashing's backbone registry hands a builder only HashNet's `pretrained`: HashNet(pretrained=
    # "imagenet") over resnet50 is the entry point then (iwan hash train passes the weights' file).
    ("vision/backbones.py", "_predictor_backbone"): "hashing.net.HashNet(pretrained='imagenet')",
}


def _environment_reads(tree: ast.Module) -> list[tuple[str, int, str]]:
    """(enclosing function's qualified name, line, what) of each read of the environment: a call of
    iwan.config.settings (by any name), os.environ / os.getenv, or make_engine() given nothing."""
    settings_names, config_names, os_names, env_names = set(), set(), set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "iwan.config":
            settings_names |= {a.asname or a.name for a in node.names if a.name == "settings"}
        elif isinstance(node, ast.ImportFrom) and node.module == "iwan":
            config_names |= {a.asname or a.name for a in node.names if a.name == "config"}
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            env_names |= {a.asname or a.name for a in node.names if a.name in ("environ", "getenv", "environb")}
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "iwan.config" and alias.asname:
                    config_names.add(alias.asname)
                elif alias.name == "os":
                    os_names.add(alias.asname or "os")

    found = []

    def visit(node: ast.AST, scope: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, child.name if scope == "<module>" else f"{scope}.{child.name}")
                continue
            what = None
            if isinstance(child, ast.Call):
                func = child.func
                if isinstance(func, ast.Name) and func.id in settings_names:
                    what = f"{func.id}()"
                elif isinstance(func, ast.Attribute) and func.attr == "settings" and (
                        isinstance(func.value, ast.Name) and func.value.id in config_names
                        or ast.unparse(func.value) == "iwan.config"):
                    what = f"{ast.unparse(func)}()"
                elif (getattr(func, "id", None) == "make_engine" or getattr(func, "attr", None) == "make_engine") \
                        and not child.args and not child.keywords:
                    what = "make_engine()"
            elif isinstance(child, ast.Attribute) and isinstance(child.value, ast.Name) and child.value.id in os_names \
                    and child.attr in ("environ", "environb", "getenv", "putenv", "unsetenv"):
                what = f"os.{child.attr}"
            elif isinstance(child, ast.Name) and child.id in env_names:
                what = child.id
            if what:
                found.append((scope, child.lineno, what))
            visit(child, scope)

    visit(tree, "<module>")
    return found


def _reads_below_the_entry_points() -> tuple[list[str], set[tuple[str, str]]]:
    offenders, allowed_seen = [], set()
    for path in sorted(IWAN.rglob("*.py")):
        relative = path.relative_to(IWAN).as_posix()
        if relative in NOT_BELOW or relative.startswith("cli/"):
            continue  # the entry points themselves: the command line reads the environment once
        for scope, line, what in _environment_reads(ast.parse(path.read_text(), str(path))):
            if (relative, scope) in ENTRY_POINTS:
                allowed_seen.add((relative, scope))
            else:
                offenders.append(f"iwan/{relative}:{line} {scope}: {what}")
    return offenders, allowed_seen


def test_nothing_below_the_entry_points_reads_the_environment():
    offenders, allowed_seen = _reads_below_the_entry_points()
    assert offenders == [], "pass the settings down instead:\n" + "\n".join(offenders)
    # Each entry point allowed is one that does read it (the list names no more than it must).
    assert allowed_seen == set(ENTRY_POINTS)


def test_the_check_finds_every_kind_of_read():
    source = (
        "import os\nfrom os import environ\nfrom iwan import config\nfrom iwan.config import settings as s\n"
        "import iwan.config as c\nfrom iwan.db.engine import make_engine\n"
        "def a(): return s()\n"
        "def b(): return config.settings().home\n"
        "def c2(): return c.settings()\n"
        "class K:\n    def m(self): return os.environ.get('X'), os.getenv('Y')\n"
        "def d(): return environ['Z']\n"
        "def e(): return make_engine()\n"
        "def fine(settings): return make_engine(settings=settings), settings.home\n"
    )
    found = [(scope, what) for scope, _, what in _environment_reads(ast.parse(source))]
    assert found == [("a", "s()"), ("b", "config.settings()"), ("c2", "c.settings()"), ("K.m", "os.environ"),
                     ("K.m", "os.getenv"), ("d", "environ"), ("e", "make_engine()")]
