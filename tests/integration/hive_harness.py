"""Harness for data-plane tests: a router, SDK nodes and raw socket peers as real processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from fluxbee.dataplane import wire
from fluxbee.dataplane.sdk import read_node_table
from fluxbee.dataplane.shm import identity as identity_shm

HEADER = struct.Struct(">I")
T = TypeVar("T")
TEST_SYSTEM_NAMES = ("SY.admin", "SY.identity", "SY.identity.replica", "SY.frontdesk.gov", "SY.desk",
                     "SY.orchestrator")
"""The SY.* names the tests run as.  They are claimed (README: Trust model): each test router gets a
claims file per name holding the hash of one test token, and the test process (and its children) prove
them with ``$FLUXBEE_NODE_CREDENTIAL_FILE`` pointing at that token — the same contract `fluxbee up` uses."""


def grant(run_dir: Path, *names: str, token_name: str = "test-system") -> Path:
    """Claim ``names`` in ``run_dir/claims`` for the token in ``run_dir/credentials/<token_name>``; that file."""
    import hashlib
    import secrets

    creds = run_dir / "credentials"
    creds.mkdir(mode=0o700, exist_ok=True)
    token_file = creds / token_name
    if not token_file.exists():
        token_file.write_text(secrets.token_hex(32) + "\n")
        token_file.chmod(0o600)
    digest = hashlib.sha256(token_file.read_text().strip().encode()).hexdigest()
    claims = run_dir / "claims"
    claims.mkdir(exist_ok=True)
    for name in names:
        path = claims / name
        try:
            doc = json.loads(path.read_text())
        except OSError:
            doc = {}
        hashes = doc.setdefault("credential_sha256", [])
        if digest not in hashes:
            hashes.append(digest)
            tmp = claims / f".{name}.tmp"
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, path)
    return token_file


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition", step: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)


def read_identity_region(hive_id: str, run_dir: Path, read: Callable[[identity_shm.IdentityRegionReader], T],
                         timeout: float = 10.0) -> T:
    """``read(reader)`` on the identity region of ``hive_id``, as one consistent read.

    The reader gives up with ``ReadTimeoutError`` when the writer stays inside a batch for longer than
    its deadline (a few ms): on a loaded machine a writer descheduled in the middle of a resync's
    rebuild does that.  The router then counts the miss and reads again at its next message; a test
    does the same here, retrying until ``timeout`` (then the error propagates), instead of failing on
    a region that was merely busy.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with identity_shm.IdentityRegionReader(hive_id, run_dir=run_dir) as reader:
                return read(reader)
        except identity_shm.ReadTimeoutError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


async def until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Wait for ``cond()``, evaluated on the event loop itself: for state that lives on the loop (sessions,
    channels, protocol objects), which :func:`eventually` must not read from its worker thread."""
    import asyncio

    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.01)


async def eventually(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Like :func:`wait_until`, but lets the event loop run (SDK writes are flushed by it)."""
    import asyncio

    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.01)


def stop_process(proc: subprocess.Popen[Any] | None, what: str, *, strict: bool = True,
                 sig: signal.Signals = signal.SIGTERM, timeout: float = 10) -> int:
    """Send ``sig`` (SIGTERM; SIGINT is Ctrl-C for ``fluxbee up``), then wait ``timeout`` s; a process
    that needs SIGKILL fails the test when ``strict``. Its exit code."""
    if proc is None or proc.poll() is not None:
        return proc.returncode if proc else 0
    proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        if strict:
            raise AssertionError(f"{what} did not stop on {sig.name} within {timeout:.0f} s") from None
        return proc.returncode


def fluxbee_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "fluxbee", *args]


class RouterProc:
    """``fluxbee router`` in a child process."""

    def __init__(self, run_dir: Path, hive_id: str = "t", config: dict[str, Any] | None = None,
                 extra: tuple[str, ...] = ()) -> None:
        self.run_dir = run_dir
        self.hive_id = hive_id
        self.config_path = run_dir / "hive-config.json"
        self.write_config(config or {})
        self.metrics_port = free_port()
        self.extra = extra
        self.log_path = run_dir / "router.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.credential_file = grant(run_dir, *TEST_SYSTEM_NAMES)
        self.start()

    def write_config(self, config: dict[str, Any]) -> None:
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"hive_id": self.hive_id, **config}))
        os.replace(tmp, self.config_path)

    def start(self) -> None:
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                fluxbee_argv("router", "--hive-id", self.hive_id, "--run-dir", str(self.run_dir),
                             "--config", str(self.config_path), "--metrics-addr", f"127.0.0.1:{self.metrics_port}",
                             "--claims-dir", str(self.run_dir / "claims"), *self.extra),
                stdout=logf, stderr=logf,
            )
        wait_until(self._ready, 15, "the router to listen")

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"router exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=0.5) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    @property
    def socket_path(self) -> Path:
        return next((self.run_dir / "routers").glob("*.sock"))

    @property
    def uuid(self) -> str:
        return str(uuid.UUID(self.socket_path.stem))

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise AssertionError("router not started")
        return self.proc.pid

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/status", timeout=5) as r:
            return dict(json.loads(r.read()))

    def counter(self, name: str, reason: str | None = None) -> int:
        counters = self.status()["counters"]
        value = counters.get(name, 0)
        if reason is not None:
            return int(value.get(reason, 0)) if isinstance(value, dict) else 0
        return int(value)

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def stop(self) -> int:
        return stop_process(self.proc, "router")


class NodeProc:
    """An SDK example node (``fluxbee node echo|listener``) in a child process."""

    def __init__(self, kind: str, name: str, run_dir: Path, *, persistent: bool = False) -> None:
        self.kind = kind
        self.name = name
        argv = fluxbee_argv("node", kind, "--name", name, "--run-dir", str(run_dir))
        if persistent:
            argv.append("--persistent")
        self.log_path = run_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE if kind == "listener" else self._log,
                                     stderr=self._log)
        self._lines: list[dict[str, Any]] = []
        self._pending = b""

    def lines(self, timeout: float = 0.5) -> list[dict[str, Any]]:
        """Messages a listener printed so far (reads what arrives within ``timeout``)."""
        import selectors

        out = self.proc.stdout
        if out is None:
            return self._lines
        fd = out.fileno()
        sel = selectors.DefaultSelector()
        sel.register(fd, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            if not sel.select(remaining):
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            self._pending += chunk
            *complete, self._pending = self._pending.split(b"\n")
            self._lines.extend(json.loads(line) for line in complete if line)
        sel.close()
        return self._lines

    def stop(self) -> None:
        stop_process(self.proc, self.name, strict=False)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


def recv_frame(sock: socket.socket) -> dict[str, Any]:
    """One length-prefixed frame read from ``sock``, decoded; EOFError if the stream ends first."""
    (size,) = HEADER.unpack(_exact(sock, HEADER.size))
    return dict(msgspec.json.decode(_exact(sock, size)))


def _exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


class RawPeer:
    """A hand-driven socket peer, for inputs the SDK would never produce."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(str(path))
        self.uuid = str(uuid.uuid4())

    def hello(self, name: str) -> dict[str, Any]:
        self.sock.sendall(wire.system_frame(self.uuid, None, wire.HELLO, wire.HelloPayload(uuid=self.uuid, name=name),
                                            trace_id=str(uuid.uuid4()), ttl=1))
        msg = self.recv()
        assert msg["meta"]["msg"] == wire.ANNOUNCE, msg
        return msg

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, body: dict[str, Any]) -> None:
        self.sock.sendall(wire.encode_frame(body))

    def recv(self) -> dict[str, Any]:
        return recv_frame(self.sock)

    def closed_by_peer(self, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Read until EOF; return the frames received before it."""
        self.sock.settimeout(timeout)
        frames = []
        # A reset instead of a clean EOF is also "closed": Linux resets the peer of a Unix socket
        # closed with unread data (the router stops reading an offending connection mid-stream).
        with contextlib.suppress(EOFError, ConnectionResetError):
            while True:
                frames.append(self.recv())
        return frames

    def close(self) -> None:
        self.sock.close()


def node_names(run_dir: Path) -> dict[str, list[str]]:
    """name -> UUIDs, from the router's shared-memory node table."""
    out: dict[str, list[str]] = {}
    for rec in read_node_table(run_dir):
        out.setdefault(rec.name, []).append(rec.uuid)
    return out


def linked_hive_file(hive: str, mother: str | None) -> str:
    """A hive file for ``fluxbee up``: hive ``hive`` (a worker of ``mother``, else the motherbee) with
    one ``WF.echo``."""
    spec = {"role": "worker", "motherHive": mother} if mother else {"role": "motherbee"}
    docs = [{"apiVersion": "fluxbee.io/v1alpha1", "kind": "Hive", "metadata": {"name": hive}, "spec": spec},
            {"apiVersion": "fluxbee.io/v1alpha1", "kind": "FluxNode", "metadata": {"name": "echo"},
             "spec": {"hive": hive, "nodeName": "WF.echo", "runtime": "fluxbee.echo", "replicas": 1}}]
    return "\n---\n".join(json.dumps(d) for d in docs)
