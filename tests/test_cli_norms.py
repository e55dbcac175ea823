"""The `iwan` command as a user runs it: a real process, a real database, real files."""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading

import pytest
from usf_files import (
    APPENDIX_CUES,
    APPENDIX_PAIRS,
    APPENDIX_TARGETS,
    APPENDIX_WORDS,
    HEADER_LINE,
    row,
    write,
    write_appendix,
)


def iwan(*args: str, database_url: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the CLI as a user would; `env` overrides variables of the test's environment."""
    env = {**os.environ, **(env or {})}
    if database_url:
        env["IWAN_DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "iwan", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_load_show_status(database_url, tmp_path):
    loaded = iwan("norms", "load", str(write_appendix(tmp_path / "usf-appendix-a")), "--json")
    assert loaded.returncode == 0, loaded.stderr
    summary = json.loads(loaded.stdout)
    assert {k: summary[k] for k in ("source", "pairs", "cues", "targets", "words")} == {
        "source": "usf", "pairs": APPENDIX_PAIRS, "cues": APPENDIX_CUES, "targets": APPENDIX_TARGETS,
        "words": APPENDIX_WORDS,
    }
    assert summary["seconds"] > 0

    shown = iwan("norms", "show", "LAB", "--top", "3", "--json")
    assert json.loads(shown.stdout) == [
        {"target": "EXPERIMENT", "strength": 0.145},
        {"target": "CHEMISTRY", "strength": 0.138},
        {"target": "WORK", "strength": 0.13},
    ]
    text = iwan("norms", "show", "lab", "--top", "2")
    assert text.stdout.split() == ["EXPERIMENT", "0.145", "CHEMISTRY", "0.138"]
    assert iwan("norms", "show", "aardvark").stdout.split() == ["PINK", "PANTHER", "0.026"]

    status = json.loads(iwan("db", "status", "--json").stdout)
    assert status["revision"] == status["head"]
    assert status["counts"]["associations"] == APPENDIX_PAIRS
    assert [s["name"] for s in status["sources"]] == ["usf"]


@pytest.mark.real_data("usf")
def test_real_norms_load_show_status(database_url, shared_data):
    loaded = iwan("norms", "load", str(shared_data / "usf-appendix-a"), "--json")
    assert loaded.returncode == 0, loaded.stderr
    summary = json.loads(loaded.stdout)
    assert {k: summary[k] for k in ("source", "pairs", "cues", "targets", "words")} == {
        "source": "usf", "pairs": 72_176, "cues": 5_018, "targets": 10_469, "words": 10_617
    }
    shown = iwan("norms", "show", "LAB", "--top", "3", "--json")
    assert json.loads(shown.stdout) == [
        {"target": "EXPERIMENT", "strength": 0.145},
        {"target": "CHEMISTRY", "strength": 0.138},
        {"target": "WORK", "strength": 0.13},
    ]
    assert json.loads(iwan("db", "status", "--json").stdout)["counts"]["associations"] == 72_176


def test_unknown_word_exits_1_with_one_line(database_url, tmp_path):
    assert iwan("norms", "load", str(write(tmp_path, HEADER_LINE, row()))).returncode == 0
    result = iwan("norms", "show", "NOSUCHWORD")
    assert result.returncode == 1
    assert result.stderr.strip() == "iwan: error: 'NOSUCHWORD' is not a cue word of the 'usf' norms"


def test_malformed_file_exits_non_zero_with_location(database_url, tmp_path):
    path = write(tmp_path, HEADER_LINE, row(), "LAB, X")
    result = iwan("norms", "load", str(path))
    assert result.returncode == 1
    assert f"{path}:6: expected 31 fields" in result.stderr
    assert json.loads(iwan("db", "status", "--json").stdout)["counts"]["associations"] == 0


def test_password_is_hidden_and_bad_server_is_one_line(tmp_path):
    result = iwan("db", "status", database_url="postgresql://me:secret@127.0.0.1:1/nowhere")
    assert result.returncode == 1
    assert "secret" not in result.stderr
    assert "cannot connect to postgresql+psycopg://me:***@127.0.0.1:1/nowhere" in result.stderr


def test_db_downgrade_and_upgrade(database_url):
    assert "schema at revision base" in iwan("db", "downgrade", "base").stdout
    assert json.loads(iwan("db", "status", "--json").stdout)["revision"] is None
    assert "schema at revision 0006" in iwan("db", "upgrade").stdout


@pytest.fixture
def usf_site(tmp_path_factory):
    """A local HTTP server that serves Appendix A files the way the USF site does."""
    folder = write_appendix(tmp_path_factory.mktemp("site"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_download_then_load(database_url, usf_site, tmp_path, monkeypatch):
    monkeypatch.setenv("IWAN_DATA_DIR", str(tmp_path))
    result = iwan("norms", "load", "--download", "--base-url", usf_site, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["pairs"] == APPENDIX_PAIRS
    downloaded = tmp_path / "usf-appendix-a"
    assert sorted(p.name for p in downloaded.iterdir()) == sorted(p.name for p in write_appendix(tmp_path / "served").iterdir())
    assert all((downloaded / p.name).read_bytes() == p.read_bytes() for p in (tmp_path / "served").iterdir())
    assert not list((tmp_path / "usf-appendix-a").glob("*.part"))


def test_download_failure_is_one_line(database_url, tmp_path, monkeypatch):
    monkeypatch.setenv("IWAN_DATA_DIR", str(tmp_path))
    result = iwan("norms", "load", "--download", "--base-url", "http://127.0.0.1:1/")
    assert result.returncode == 1
    assert "cannot download http://127.0.0.1:1/Cue_Target_Pairs.A-B" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_load_without_paths_explains_where_files_go(database_url, tmp_path, monkeypatch):
    monkeypatch.setenv("IWAN_DATA_DIR", str(tmp_path))
    result = iwan("norms", "load")
    assert result.returncode == 1
    assert "iwan norms load --download" in result.stderr and str(tmp_path) in result.stderr
