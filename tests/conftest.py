"""Shared fixtures: a private IWAN_HOME and data folder per test, a real (embedded) PostgreSQL,
and the real data for the tests marked `real_data`.

Most tests make their own data (tests/usf_files.py, tests/cifar_files.py). A test that needs the
real data says which with `@pytest.mark.real_data("usf", ...)` and takes the `shared_data`
fixture; the data is found in IWAN_DATA_DIR, else in ../shared/data beside the checkout. Where a
data set is missing the test is skipped with the reason and where to get the data, unless
IWAN_REQUIRE_REAL_DATA=1 (as in CI), which turns that skip into a failure.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_database_numbers = itertools.count()
# Read once, before any fixture points IWAN_DATA_DIR at a test's own folder.
SHARED_DATA = Path(os.environ.get("IWAN_DATA_DIR") or REPO.parent / "shared" / "data").resolve()
REQUIRE_REAL_DATA = os.environ.get("IWAN_REQUIRE_REAL_DATA", "") not in ("", "0")


@dataclass(frozen=True)
class RealData:
    folder: str
    what: str
    how: str


REAL_DATA = {
    "usf": RealData(
        "usf-appendix-a",
        "the USF free association norms, Appendix A (the 8 Cue_Target_Pairs.* files, 72,176 pairs)",
        "`IWAN_DATA_DIR=DIR iwan norms load --download` fetches them into DIR/usf-appendix-a",
    ),
    "cifar10-jpg": RealData(
        "cifar10-jpg",
        "CIFAR-10 as JPEG files, train/<class>/NNNN.jpg and test/<class>/NNNN.jpg",
        "export the official CIFAR-10 (cs.toronto.edu/~kriz/cifar.html) to JPEG class folders "
        "in that layout",
    ),
    "cifar100-sample": RealData(
        "cifar100-train-sample/cifar-100-python",
        "the official CIFAR-100 python format: meta, and train holding the first 675 images",
        "extract cifar-100-python.tar.gz (cs.toronto.edu/~kriz/cifar.html) there and cut train "
        "to its first 675 images",
    ),
    "barz": RealData(
        "barz-cifar100",
        "Barz & Denzler's CIFAR-100 hierarchy (cifar.parent-child.txt, class_names.txt, hierarchy.txt, LICENSE)",
        "copy Cifar-Hierarchy/ of github.com/cvjena/semantic-embeddings",
    ),
}


def missing_real_data(names) -> list[str]:
    """Why each named data set is unusable, with where to get it; empty when all are there."""
    reasons = []
    for name in names:
        data = REAL_DATA[name]
        folder = SHARED_DATA / data.folder
        if not folder.is_dir() or not any(folder.iterdir()):
            reasons.append(
                f"needs {data.what} in {folder} (set IWAN_DATA_DIR or put the data in ../shared/data; "
                f"{data.how})"
            )
    return reasons


def _known(names) -> bool:
    return bool(names) and all(name in REAL_DATA for name in names)


_EXIT_STATUS = pytest.StashKey[int]()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the test process once pytest is done, its atexit hooks run (the embedded servers'
    stops, the temporary folders), without the interpreter's teardown. Why: a whole-suite run
    (776 tests, 2026-12-07) passed every test and then died of a segfault in libstdc++ on a
    non-main thread while the interpreter tore its modules down (exit status 139), which no test
    or subset run reproduced; the suite loads several C++ runtimes that keep threads (ONNX
    Runtime, torch, Ray's driver, numba). The exit status stays pytest's own."""
    status = config.stash.get(_EXIT_STATUS, None)
    if status is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()
    os._exit(status)


def pytest_collection_modifyitems(config, items):
    """Skip (with the reason and where to get the data) what needs absent data; under
    IWAN_REQUIRE_REAL_DATA=1 leave those tests to fail in set-up instead."""
    for item in items:
        marker = item.get_closest_marker("real_data")
        if marker is None or REQUIRE_REAL_DATA or not _known(marker.args):
            continue  # unmarked; or left for set-up to fail (required data, unknown names)
        reasons = missing_real_data(marker.args)
        if reasons:
            item.add_marker(pytest.mark.skip(reason="; ".join(reasons)))


def pytest_runtest_setup(item):
    marker = item.get_closest_marker("real_data")
    if marker is None:
        if "shared_data" in item.fixturenames:
            pytest.fail(f"{item.nodeid} uses shared_data: mark it @pytest.mark.real_data(<data sets>)", pytrace=False)
        return
    if not _known(marker.args):
        pytest.fail(
            f"{item.nodeid}: @pytest.mark.real_data{tuple(marker.args)} must name data sets among "
            f"{', '.join(REAL_DATA)}",
            pytrace=False,
        )
    reasons = missing_real_data(marker.args)
    if reasons:
        pytest.fail(f"IWAN_REQUIRE_REAL_DATA=1 but this test {'; '.join(reasons)}", pytrace=False)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real data; only for tests marked real_data, which checked it is there."""
    return SHARED_DATA


@pytest.fixture(scope="session", autouse=True)
def _isolated_session_env(tmp_path_factory):
    """Module fixtures too see a private IWAN_HOME and an empty data folder, never the user's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IWAN_DATA_DIR", str(tmp_path_factory.mktemp("session-data")))
        patch.setenv("IWAN_HOME", str(tmp_path_factory.mktemp("session-home")))
        patch.delenv("IWAN_DATABASE_URL", raising=False)
        # TestClient's requests name the host "testserver": the service answers only names it is
        # told (its default is loopback), and the tests' settings tell it this one.
        patch.setenv("IWAN_ALLOWED_HOSTS", "testserver")
        yield


@pytest.fixture(autouse=True)
def _isolated_iwan_env(tmp_path_factory, monkeypatch):
    """Every test has its own empty IWAN_DATA_DIR and IWAN_HOME: it brings the data it needs."""
    monkeypatch.setenv("IWAN_DATA_DIR", str(tmp_path_factory.mktemp("iwan-data")))
    monkeypatch.setenv("IWAN_HOME", str(tmp_path_factory.mktemp("iwan-home")))
    monkeypatch.delenv("IWAN_DATABASE_URL", raising=False)



@pytest.fixture(scope="module")
def module_home(tmp_path_factory) -> Path:
    """One IWAN_HOME for a whole module: a served collection's files and snapshot live there."""
    return tmp_path_factory.mktemp("module-home")


@pytest.fixture
def in_module_home(module_home, monkeypatch):
    """Each test of a module that uses it sees `module_home` as IWAN_HOME
    (`pytestmark = pytest.mark.usefixtures("in_module_home")`)."""
    monkeypatch.setenv("IWAN_HOME", str(module_home))

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

    from iwan.db import migrate
    from iwan.db.engine import _embedded_uri, _sqlalchemy_url

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
def module_engine(module_database_url):
    """An engine on the module's database (modules name it `engine` for their module-scoped fixtures)."""
    import sqlalchemy as sa

    engine = sa.create_engine(module_database_url)
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
