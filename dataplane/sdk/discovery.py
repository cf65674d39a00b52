"""Finding the router and this node's identity: run dir, router socket, UUID, credential, settings.

Everything a node decides before it opens a socket; no asyncio here.
"""

from __future__ import annotations

import contextlib
import os
import uuid as uuid_mod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fluxbee.dataplane import env, shm, wire
from fluxbee.dataplane.sdk.errors import CredentialError, NotConnectedError
from fluxbee.dataplane.wire import Message

CREDENTIAL_FILE_ENV = env.NODE_CREDENTIAL_FILE.name
"""Names the file holding this process's credential token (README: Trust model)."""


def credential_file_from_env() -> Path | None:
    return env.NODE_CREDENTIAL_FILE.read()


def read_credential(path: Path) -> str:
    """The token in ``path`` (surrounding whitespace stripped); :class:`CredentialError` if unusable."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise CredentialError(f"cannot read the node credential {path} (${CREDENTIAL_FILE_ENV}): {err}") from err
    if not token:
        raise CredentialError(f"the node credential {path} (${CREDENTIAL_FILE_ENV}) is empty")
    return token



def default_run_dir() -> Path:
    """``$FLUXBEE_RUN_DIR``; else /var/run/fluxbee as root, or a per-user dir."""
    configured = env.RUN_DIR.read()
    if configured is not None:
        return configured
    if os.geteuid() == 0:
        return Path("/var/run/fluxbee")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "fluxbee"
    return Path(f"/tmp/fluxbee-{os.geteuid()}")


def find_router_socket(run_dir: Path, name: str) -> Path:
    """Pick the router socket in ``run_dir/routers`` (sticky FNV-1a hash of the base name).

    When ``name`` carries its hive (``WF.echo@prod``), only routers of that hive are candidates
    (read from each router's shared-memory header), so a socket dir shared by two hives on one
    host cannot put a node into the wrong hive.
    """
    sockets = sorted(p for p in (run_dir / "routers").glob("*.sock") if not p.name.startswith("irp-"))
    if not sockets:
        raise NotConnectedError(f"no router socket in {run_dir / 'routers'}")
    base, at, hive = name.rpartition("@")
    if not at:
        base, hive = name, ""
    if hive and len(sockets) > 1:
        own = [p for p in sockets if _router_hive(p) == hive]
        sockets = own or sockets
    h = 0xCBF29CE484222325
    for byte in base.encode():
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return sockets[h % len(sockets)]


def _router_hive(sock: Path) -> str | None:
    """The hive a router socket belongs to, from the router's node-table header (None if unknown)."""
    try:
        router_uuid = str(uuid_mod.UUID(sock.stem))
        with shm.NodeTableReader(shm.node_table_name(router_uuid)) as reader:
            return reader.header().hive_id
    except (ValueError, shm.ShmError):
        return None


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """How a node connects.  ``name`` is its L2 base name (``WF.echo``) or full name."""

    name: str
    """L2 name; ``@hive`` is appended by the router when absent."""
    run_dir: Path = field(default_factory=default_run_dir)
    """Where ``routers/<uuid>.sock`` lives."""
    router_socket: Path | None = None
    """A specific router socket; default: chosen from ``run_dir``."""
    uuid: str | None = None
    """Fixed UUID; default depends on ``persistent``."""
    persistent: bool = False
    """Keep the UUID in ``uuid_dir/<base name>.uuid`` across restarts."""
    uuid_dir: Path | None = None
    """Where persistent UUIDs live; default ``run_dir/state/nodes``."""
    version: str = "1"
    """Reported in HELLO."""
    handle_status: bool = True
    """Answer NODE_STATUS_GET automatically."""
    inbound_queue: int = 1024
    """Messages buffered for the node before the SDK stops reading the socket."""
    announce_timeout: float = 10.0
    """Deadline for ANNOUNCE after HELLO."""
    connect_timeout: float = 30.0
    """How long ``connect()`` and ``send()`` wait for a (re)connection."""
    backoff_initial: float = 0.1
    backoff_max: float = 30.0
    reconnect: bool = True
    """Reconnect after the router goes away."""
    config: dict[str, Any] | None = None
    """The node's effective config (template + overrides + ``_system``), served to CONFIG_GET."""
    handle_config: bool = True
    """Answer CONFIG_GET / CONFIG_SET (``meta.target = node_config_control``) automatically."""
    on_config_set: Callable[[dict[str, Any]], str | None] | None = None
    """Called with a proposed config on CONFIG_SET; return an error text to refuse it."""
    on_message: Callable[[Message], None] | None = None
    """Deliver messages to this callback, synchronously as frames arrive, instead of the
    receiver's queue: no task switch per message.  It must not block; it may send with
    :meth:`NodeSender.send_nowait`/:meth:`NodeSender.reply_nowait`.  It is first called once
    ``connect()`` has returned (what came before waits, in order), so it may use that sender."""
    credential_file: Path | None = field(default_factory=credential_file_from_env)
    """File holding the token that proves a claimed name (default ``$FLUXBEE_NODE_CREDENTIAL_FILE``);
    read at each connection, so a rotated token is picked up on reconnect."""


def resolve_uuid(config: NodeConfig) -> str:
    if config.uuid is not None:
        return wire.canonical_uuid(config.uuid)
    if not config.persistent:
        return str(uuid_mod.uuid4())
    directory = config.uuid_dir or config.run_dir / "state" / "nodes"
    path = directory / f"{config.name.split('@', 1)[0]}.uuid"
    with contextlib.suppress(OSError, ValueError):
        return wire.canonical_uuid(path.read_text().strip())
    value = str(uuid_mod.uuid4())
    directory.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(value + "\n")
    os.replace(tmp, path)
    return value


