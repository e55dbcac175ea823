"""Shared fixtures: the real data in ../shared/data, and a real (embedded) PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("IWAN_TEST_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real data (USF norms, CIFAR-10 JPEGs, CIFAR-100 sample, Barz hierarchy)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: tests need the project's shared data beside the repo")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_iwan_env(tmp_path_factory, monkeypatch):
    """Every test sees the shared data as IWAN_DATA_DIR and a private IWAN_HOME."""
    monkeypatch.setenv("IWAN_DATA_DIR", str(SHARED_DATA))
    monkeypatch.setenv("IWAN_HOME", str(tmp_path_factory.mktemp("iwan-home")))
    monkeypatch.delenv("IWAN_DATABASE_URL", raising=False)
