"""The real_data marker: a test that needs absent data is skipped with the reason and where to get
the data; under IWAN_REQUIRE_REAL_DATA=1 (as CI runs) it fails instead. Checked by running pytest
on a small test file with this suite's conftest and pytest configuration."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from usf_files import write_appendix

REPO = Path(__file__).resolve().parent.parent

TESTS = '''
import pytest

@pytest.mark.real_data("usf")
def test_needs_norms(shared_data):
    assert (shared_data / "usf-appendix-a" / "Cue_Target_Pairs.A-B").is_file()

def test_needs_nothing():
    pass
'''


@pytest.fixture
def suite(tmp_path) -> Path:
    """A test folder with this suite's conftest and the markers pyproject.toml registers."""
    folder = tmp_path / "suite"
    folder.mkdir()
    shutil.copy(REPO / "tests" / "conftest.py", folder / "conftest.py")
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    markers = "".join(f"\n    {m}" for m in config["markers"])
    (folder / "pytest.ini").write_text(f"[pytest]\naddopts = {config['addopts']}\nmarkers ={markers}\n")
    (folder / "test_sample.py").write_text(TESTS)
    return folder


def pytest_run(folder: Path, data_dir: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("IWAN_REQUIRE_REAL_DATA", "PYTEST_ADDOPTS")}
    environment.update(IWAN_DATA_DIR=str(data_dir), **env)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--basetemp", str(folder / "tmp"), str(folder)],
        cwd=folder, env=environment, capture_output=True, text=True, timeout=120, check=False,
    )


def test_missing_data_is_a_skip_that_says_where_to_get_it(suite, tmp_path):
    result = pytest_run(suite, tmp_path / "no-data")

    assert result.returncode == 0, result.stdout
    assert re.search(r"\b1 passed, 1 skipped\b", result.stdout)
    skipped = next(line for line in result.stdout.splitlines() if line.startswith("SKIPPED"))
    assert "test_sample.py:4: needs the USF free association norms" in skipped
    assert str(tmp_path / "no-data" / "usf-appendix-a") in skipped
    assert "iwan norms load --download" in skipped


def test_missing_data_fails_when_real_data_is_required(suite, tmp_path):
    result = pytest_run(suite, tmp_path / "no-data", IWAN_REQUIRE_REAL_DATA="1")

    assert result.returncode == 1
    assert re.search(r"\b1 passed, 1 error\b", result.stdout)
    assert "IWAN_REQUIRE_REAL_DATA=1 but this test needs the USF free association norms" in result.stdout
    assert "skipped" not in result.stdout


def test_present_data_runs_the_test(suite, tmp_path):
    data = tmp_path / "data"
    write_appendix(data / "usf-appendix-a")

    result = pytest_run(suite, data, IWAN_REQUIRE_REAL_DATA="1")

    assert result.returncode == 0, result.stdout
    assert re.search(r"\b2 passed\b", result.stdout) and "skipped" not in result.stdout


def test_real_data_without_the_marker_is_refused(suite, tmp_path):
    (suite / "test_sample.py").write_text("def test_unmarked(shared_data):\n    pass\n")
    data = tmp_path / "data"
    write_appendix(data / "usf-appendix-a")

    result = pytest_run(suite, data)

    assert result.returncode == 1
    assert "uses shared_data: mark it @pytest.mark.real_data(<data sets>)" in result.stdout


def test_unknown_data_set_name_is_refused(suite, tmp_path):
    (suite / "test_sample.py").write_text(
        'import pytest\n\n@pytest.mark.real_data("imagenet")\ndef test_x(shared_data):\n    pass\n'
    )

    result = pytest_run(suite, tmp_path)

    assert result.returncode == 1
    assert "real_data('imagenet',) must name data sets among usf, cifar10-jpg, cifar100-sample, barz" in result.stdout


def test_ci_requires_the_real_data():
    script = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^export IWAN_REQUIRE_REAL_DATA=1$", script, re.MULTILINE)
    assert script.index("IWAN_REQUIRE_REAL_DATA=1") < script.index("scripts/test.sh")
