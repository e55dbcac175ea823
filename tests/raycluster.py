"""A real local Ray cluster for tests and benchmarks: a head and worker nodes, each a separate
`ray start` process group on this machine, in a private temp dir, stopped by killing only those
process groups (`ray stop` would stop every Ray process on the machine, other users' too)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RAY = Path(sys.executable).with_name("ray")
# Node deaths are noticed within about 3 s (the default waits about 30 s).
HEALTH = {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 1000, "health_check_failure_threshold": 3}


_HANDED_OUT: set[int] = set()


def _free_port() -> int:
    """A port free now and not handed out before (the system may offer a closed one again)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def _ports() -> list[str]:
    """Ports a node listens on, each one free now (the defaults would clash with another Ray)."""
    return [
        "--object-manager-port", str(_free_port()),
        "--metrics-export-port", str(_free_port()), "--runtime-env-agent-port", str(_free_port()),
        "--dashboard-agent-listen-port", str(_free_port()), "--dashboard-agent-grpc-port", str(_free_port()),
    ]


class LocalCluster:
    """`with LocalCluster(workers=1) as cluster`: a head of `head_cpus` CPUs and `workers` nodes of
    one CPU each; `cluster.address` for ray.init, `kill_worker(i)` kills node i's processes."""

    def __init__(self, workers: int = 1, head_cpus: int = 1):
        self.head_cpus = head_cpus
        self.initial_workers = workers
        self.worker_ports: list[int] = []
        # Ray's socket paths must stay under 107 bytes: a short folder right under /tmp.
        self.temp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        # The workers import this checkout's iwan, as the driver does.
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                    "RAY_USAGE_STATS_ENABLED": "0"}

    def _start(self, args: list[str]) -> int:
        """Start a node; its node manager port, which names its processes."""
        port = _free_port()
        process = subprocess.run(
            [str(RAY), "start", *args, "--node-manager-port", str(port), "--disable-usage-stats",
             "--object-store-memory", str(100 << 20), "--min-worker-port", "0", "--max-worker-port", "0", *_ports()],
            env=self.env, cwd=REPO, capture_output=True, text=True, timeout=120, start_new_session=True,
        )
        if process.returncode != 0:
            raise RuntimeError(f"ray start failed: {process.stdout[-2000:]} {process.stderr[-2000:]}")
        return port

    def start_worker(self) -> None:
        self.worker_ports.append(self._start(["--address", self.address, "--num-cpus", "1"]))

    def kill_worker(self, index: int = 0) -> None:
        """SIGKILL a worker node's raylet, its agents and its workers (actors): a machine lost."""
        port = self.worker_ports[index]
        _kill([pid for pid, cmdline in self._processes()
               if f"node_manager_port={port}" in cmdline or f"node-manager-port={port}" in cmdline])

    def _processes(self) -> list[tuple[int, str]]:
        """(pid, command line) of this cluster's processes: those naming its private temp dir."""
        return [(pid, cmdline) for pid, cmdline in _command_lines() if str(self.temp) in cmdline]

    def __enter__(self) -> LocalCluster:
        try:
            head = ["--head", "--port", str(self.port), "--num-cpus", str(self.head_cpus), "--temp-dir", str(self.temp),
                    "--include-dashboard", "false", "--dashboard-port", str(_free_port()),
                    "--system-config", json.dumps(HEALTH)]
            self._start(head)
            for _ in range(self.initial_workers):
                self.start_worker()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        deadline = time.monotonic() + 10
        while (left := self._processes()) and time.monotonic() < deadline:
            _kill([pid for pid, _ in left])
            time.sleep(0.2)
        shutil.rmtree(self.temp, ignore_errors=True)


def _command_lines() -> list[tuple[int, str]]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                found.append((int(pid), Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()))
            except OSError:
                continue
    return found


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
