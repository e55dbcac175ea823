"""Shared fixtures: the real data in ../shared/data, and a real (embedded) PostgreSQL."""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_database_numbers = itertools.count()
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


def private_folder(prefix: str) -> Path:
    """A new folder that only its owner can list, removed at exit after the servers in it stop.

    pytest's own folders are mode 0700; as root, the embedded server's user could not pass
    through them, and iwan never loosens folders it did not create.
    """
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    folder.chmod(0o711)
    # atexit runs last-registered first: the server's stop (registered later) runs before this.
    atexit.register(shutil.rmtree, folder, True)
    return folder


@pytest.fixture(scope="session")
def _template_database(tmp_path_factory):
    """An embedded PostgreSQL for the whole run, with one migrated template database."""
    import sqlalchemy as sa

    from iwan import migrate
    from iwan.db import _embedded_uri, _sqlalchemy_url

    pgdata = private_folder("iwan-test-pg-") / "data"
    server_url = _sqlalchemy_url(_embedded_uri(pgdata))
    template_url = sa.make_url(server_url).set(database="iwan_template")
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text("CREATE DATABASE iwan_template"))
    template = sa.create_engine(template_url)
    migrate.upgrade(template)
    template.dispose()
    yield admin, template_url
    admin.dispose()


@contextlib.contextmanager
def _fresh_database(template):
    """A new database cloned from the migrated template, set as IWAN_DATABASE_URL meanwhile."""
    import sqlalchemy as sa

    admin, template_url = template
    name = f"test_{next(_database_numbers)}"
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name} TEMPLATE iwan_template"))
    url = template_url.set(database=name).render_as_string(hide_password=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IWAN_DATABASE_URL", url)
        yield url
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE {name} WITH (FORCE)"))


@pytest.fixture
def database_url(_template_database) -> str:
    """A fresh, fully migrated database for one test; also set as IWAN_DATABASE_URL."""
    with _fresh_database(_template_database) as url:
        yield url


@pytest.fixture(scope="module")
def module_database_url(_template_database) -> str:
    """One fresh database shared by a module's tests, for set-up too slow to repeat per test."""
    with _fresh_database(_template_database) as url:
        yield url


@pytest.fixture
def engine(database_url):
    import sqlalchemy as sa

    engine = sa.create_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small batches run as fast on one thread, and a busy shared CPU stalls two (measured 3x)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
