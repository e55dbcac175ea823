"""Operations: a command stopped by SIGTERM, SIGHUP or Ctrl-C cleans up the same way (snapshots
saved, the embedded server left to its other users or stopped); two `iwan predict` runs of one
split at once both succeed; `iwan data check|fetch` name the local copies that run the main job
offline."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import sqlalchemy as sa
from cifar_files import images, write_cifar10_jpgs, write_cifar100
from conftest import private_folder
from livedata import png
from PIL import Image
from serving import free_port
from test_hardening_embedded import hold_server, server_pid, wait_stopped
from usf_files import write_appendix

from iwan.config import STORED_PREDICTIONS
from iwan.db import embedded

KEY = "operations-key"


def environment(home: Path | None = None, **extra: str) -> dict[str, str]:
    """The test's environment for a CLI run; with `home`, on that home's embedded server."""
    env = {**os.environ, **extra}
    if home is not None:
        env["IWAN_HOME"] = str(home)
        env.pop("IWAN_DATABASE_URL", None)
    return env


def iwan(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iwan", *args], capture_output=True, text=True, env=env,
                          timeout=300, check=False)


def start(*args: str, env: dict[str, str], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
          preexec_fn=None) -> subprocess.Popen:
    """`iwan *args` started as a supervisor starts a service: the stop signals at their default
    actions (then `preexec_fn`), whatever the test runner ignores. A child inherits ignored
    signals, and `iwan` keeps them ignored: run under nohup, the suite's SIGHUP would stop nothing."""
    def prepare() -> None:
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        if preexec_fn is not None:
            preexec_fn()

    return subprocess.Popen([sys.executable, "-m", "iwan", *args], stdout=stdout, stderr=stderr, text=True,
                            env=env, preexec_fn=prepare)


def ignored_signals(pid: int) -> set[int]:
    """The signals process `pid` ignores (SigIgn in /proc/PID/status)."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    mask = int(next(line.split()[1] for line in status if line.startswith("SigIgn:")), 16)
    return {signum for signum in range(1, 65) if mask >> (signum - 1) & 1}


def listed(pgdata: Path) -> list[int]:
    """The pids in the handle list as written (the dead ones included)."""
    try:
        return json.loads((pgdata / embedded.HANDLES_FILE).read_text())
    except FileNotFoundError:
        return []


def server_processes(pgdata: Path) -> list[psutil.Process]:
    """The postmaster of `pgdata` and every process under it."""
    postmaster = psutil.Process(server_pid(pgdata))
    return [postmaster, *postmaster.children(recursive=True)]


def snapshot_ids(home: Path) -> list[int]:
    """The image ids in the saved snapshot of collection `pics`."""
    return np.load(home / "collections" / "pics.snapshot" / "ids.npy", allow_pickle=False).tolist()


def eventually(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def waiting_on_locks(url: str) -> int:
    """How many sessions of the database at `url` wait for a lock (asked on a connection of its own:
    pg_stat_activity is read once per transaction)."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return conn.scalar(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            ))
    finally:
        engine.dispose()


# --- 1. stopping by signal: the same clean-up as Ctrl-C ------------------------------------------------


@pytest.fixture(scope="module")
def served_home(tmp_path_factory) -> Path:
    """A home of its own (the embedded server stopped) with norms and an empty collection `pics`."""
    home = private_folder("iwan-test-ops-") / "home"
    env = environment(home)
    norms = write_appendix(tmp_path_factory.mktemp("norms") / "usf-appendix-a")
    for args in (("norms", "load", str(norms)), ("collection", "create", "pics", "--predictor", "efficientnet-lite0")):
        done = iwan(*args, env=env)
        assert done.returncode == 0, done.stderr
    assert wait_stopped(home / "pgdata")
    return home


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_a_stopped_server_saves_its_snapshot_and_stops_postgresql(served_home, signum):
    pgdata = served_home / "pgdata"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = start("serve", "--port", str(port), "--log-level", "warning",
                  env=environment(served_home, IWAN_API_KEY=KEY), stdout=subprocess.DEVNULL)
    try:
        def ready() -> bool:
            assert serve.poll() is None, serve.communicate()[1]
            try:
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        assert eventually(ready, 240), "iwan serve was not ready in time"
        assert httpx.get(f"{url}/healthz", timeout=5).json() == {"status": "ok"}
        added = httpx.post(f"{url}/v1/collections/pics/images", files=[("images", ("new.png", png(int(signum)), "image/png"))],
                           headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
        assert added.status_code == 201, added.text
        [new] = [a["image_id"] for a in added.json()["added"]]
        assert new not in snapshot_ids(served_home), "saved before the stop: the test proves nothing"
        assert serve.pid in listed(pgdata)
        postgres = server_processes(pgdata)
        assert len(postgres) > 1
        assert signum not in ignored_signals(serve.pid), "the server ignores the signal: nothing would stop it"

        serve.send_signal(signum)
        _, stderr = serve.communicate(timeout=120)
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()

    # SIGTERM and SIGHUP end it by the signal once it has cleaned up (a clean stop to systemd);
    # Ctrl-C is uvicorn's own shutdown, which returns.
    assert serve.returncode == (0 if signum == signal.SIGINT else -signum), stderr
    assert "Traceback" not in stderr
    # The normal shutdown: the collection's snapshot holds the image added meanwhile ...
    assert new in snapshot_ids(served_home)
    # ... and its last user gone, PostgreSQL stopped: no process of it left behind.
    assert serve.pid not in listed(pgdata)
    assert not (pgdata / "postmaster.pid").exists()
    assert [p.pid for p in postgres if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []


def test_a_server_started_with_sighup_ignored_keeps_it_so_says_so_and_stops_on_sigterm(served_home, tmp_path):
    """Under nohup, SIGHUP is ignored from the start: `iwan serve` leaves it so (a closed terminal
    does not stop it) and says so at start, since a SIGHUP that stops nothing looks like a hang."""
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as stderr:
        serve = start("serve", "--port", str(port), "--log-level", "warning", env=environment(served_home),
                      stdout=subprocess.DEVNULL, stderr=stderr,
                      preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    try:
        def ready() -> bool:
            assert serve.poll() is None, log.read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        assert eventually(ready, 240), "iwan serve was not ready in time"
        assert "iwan serve: SIGHUP is ignored, as this process was started (nohup?); stop it with SIGTERM or Ctrl-C" \
            in log.read_text()
        serve.send_signal(signal.SIGHUP)
        assert not eventually(lambda: serve.poll() is not None, 3), log.read_text()
        assert ready()
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=120)
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
    assert serve.returncode == -signal.SIGTERM, log.read_text()
    assert not (served_home / "pgdata" / "postmaster.pid").exists()


def test_a_command_stopped_by_sigterm_leaves_the_server_to_its_other_users():
    """`iwan db status` held in PostgreSQL (a table locked) is a long command: SIGTERM ends it as
    Ctrl-C would, it leaves the server's users, and the server stays up for the one left."""
    home = private_folder("iwan-test-ops-") / "home"
    pgdata = home / "pgdata"
    upgraded = iwan("db", "upgrade", env=environment(home))
    assert upgraded.returncode == 0, upgraded.stderr
    holder, url = hold_server(home)
    engine = sa.create_engine(url)  # plain SQLAlchemy: this test process never becomes a user
    try:
        with engine.connect() as conn, conn.begin():
            conn.execute(sa.text("LOCK TABLE predictions IN ACCESS EXCLUSIVE MODE"))
            status = start("db", "status", env=environment(home))
            try:
                assert eventually(lambda: status.poll() is not None or waiting_on_locks(url) == 1, 120)
                assert status.poll() is None, status.communicate()[1]
                assert status.pid in listed(pgdata)
                status.send_signal(signal.SIGTERM)
                stdout, stderr = status.communicate(timeout=60)
            finally:
                if status.poll() is None:
                    status.kill()
                    status.wait()
        assert (status.returncode, stdout) == (-signal.SIGTERM, ""), stderr
        assert stderr.strip().splitlines()[-1] == "iwan: stopped by SIGTERM"
        assert status.pid not in listed(pgdata)
        assert listed(pgdata) == [holder.pid]
        assert server_pid(pgdata) is not None, "the server stopped under its other user"
    finally:
        engine.dispose()
        holder.communicate("")
    assert wait_stopped(pgdata), "the last user's exit did not stop the server"


# --- 2. two `iwan predict` runs of one split at once ------------------------------------------------


def write_image_folder(root: Path, per_class: int) -> Path:
    """`root/train/<class>/N.png`, two classes."""
    pixels = images(2 * per_class, seed=3)
    for c, name in enumerate(("cat", "dog")):
        (root / "train" / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(pixels[c * per_class + i]).save(root / "train" / name / f"{i}.png")
    return root


def test_two_predict_runs_of_one_split_at_once_both_succeed(database_url, engine, tmp_path):
    folder = write_image_folder(tmp_path / "pics", per_class=3)
    args = ("predict", "--dataset", f"imagefolder:{folder}", "--split", "train", "--predictor", "efficientnet-lite0",
            "--json")
    # Held back by a lock on the table until both have predicted the split and want to store it:
    # the moment at which each has found that no image is done yet.
    with engine.connect() as conn, conn.begin():
        conn.execute(sa.text("LOCK TABLE predictions IN SHARE MODE"))
        runs = [start(*args, env=environment()) for _ in range(2)]
        try:
            assert eventually(lambda: any(r.poll() is not None for r in runs) or waiting_on_locks(database_url) == 2,
                              240)
            assert all(r.poll() is None for r in runs), [r.communicate()[1] for r in runs if r.poll() is not None]
        except BaseException:
            for run in runs:
                run.kill()
                run.wait()
            raise
    results = [run.communicate(timeout=300) for run in runs]

    for run, (_, stderr) in zip(runs, results):
        assert run.returncode == 0, stderr
    summaries = [json.loads(stdout) for stdout, _ in results]
    assert all(s["images"] == 6 and s["predicted"] + s["skipped"] == 6 for s in summaries), summaries
    assert sorted(s["predicted"] for s in summaries) == [0, 6]
    with engine.connect() as conn:
        stored = conn.execute(sa.text(
            "SELECT count(DISTINCT image_id), sum(cardinality(class_indices)) FROM predictions "
            "WHERE model = 'efficientnet-lite0'"
        )).one()
    assert tuple(stored) == (6, 6 * STORED_PREDICTIONS)


# --- 3. the local copies that run the main job offline -------------------------------------------------


@pytest.fixture
def data_dir() -> Path:
    return Path(os.environ["IWAN_DATA_DIR"])


@pytest.fixture
def offline() -> dict[str, str]:
    """Every download URL on a port where nothing listens: connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/"
    return environment(**{v: closed for v in ("IWAN_USF_URL", "IWAN_CIFAR_URL", "IWAN_WEIGHTS_URL")})


def test_check_lists_the_local_copies_and_offline_messages_name_the_local_route(data_dir, offline):
    checked = iwan("data", "check", "--json", env=offline)
    fetched = iwan("data", "fetch", env=offline)

    assert checked.returncode == 1
    rows = {row["name"]: row for row in json.loads(checked.stdout)}
    assert list(rows) == ["norms", "cifar100", "resnet50", "cifar10-jpg", "cifar100-sample"]
    assert rows["cifar10-jpg"] == {
        "name": "cifar10-jpg", "title": "CIFAR-10 as JPEGs", "path": str(data_dir / "cifar10-jpg"), "present": False,
        "missing": ["train/", "test/"], "url": None,
    }
    assert rows["cifar100-sample"]["path"] == str(data_dir / "cifar100-train-sample" / "cifar-100-python")
    assert (rows["cifar100-sample"]["present"], rows["cifar100-sample"]["missing"]) == (False, ["meta", "train"])
    for result in (checked, fetched):
        [line] = result.stderr.splitlines()
        # Never downloaded, the local copies are no missing piece unless named; they are the way round.
        assert line.startswith("iwan: error: 3 pieces of data are missing"), line
        assert f"where {data_dir / 'cifar10-jpg'}/ holds CIFAR-10 as JPEGs" in line
        assert "scripts/main.sh then runs its `local` profile" in line
        assert str(data_dir / "cifar100-train-sample" / "cifar-100-python") in line
    assert fetched.returncode == 1 and fetched.stdout == ""

    named = iwan("data", "check", "cifar10-jpg", env=offline)
    assert named.returncode == 1
    assert named.stdout.split() == ["cifar10-jpg", "missing", str(data_dir / "cifar10-jpg")]
    [line] = named.stderr.splitlines()
    assert line.startswith("iwan: error: 1 piece of data is missing: CIFAR-10 as JPEGs. To fix, put them in place by hand")
    assert "iwan data fetch" not in line


def test_check_with_the_local_copies_written(data_dir, offline):
    write_cifar10_jpgs(data_dir, per_class=1)
    write_cifar100(data_dir / "cifar100-train-sample", images(3), fine=[0, 1, 2])

    local = iwan("data", "check", "cifar10-jpg", "cifar100-sample", env=offline)
    everything = iwan("data", "check", "--json", env=offline)

    assert local.returncode == 0, local.stderr
    assert [line.split() for line in local.stdout.splitlines()] == [
        ["cifar10-jpg", "present", str(data_dir / "cifar10-jpg")],
        ["cifar100-sample", "present", str(data_dir / "cifar100-train-sample" / "cifar-100-python")],
    ]
    rows = {row["name"]: row for row in json.loads(everything.stdout)}
    assert rows["cifar10-jpg"]["present"] and rows["cifar100-sample"]["present"]
    [line] = everything.stderr.splitlines()
    assert line.startswith("iwan: error: 3 pieces of data are missing")
    assert f"CIFAR-10 as JPEGs are in {data_dir / 'cifar10-jpg'}" in line
    assert "so scripts/main.sh runs its `local` profile, which needs only the USF norms besides" in line
