"""What the admin actions need from a placement backend and from the router.

Two placement backends implement :class:`Backend`: the local supervisor (``fluxbee up``,
:mod:`fluxbee.admin.supervisor_backend`) and the Kubernetes API (FluxNode, Runtime and Hive resources and their
status, :mod:`fluxbee.admin.k8s`).  Both reach the hive's router through a :class:`RouterLink`
(an SDK connection as ``SY.admin``); in a cluster the router may be out of reach, and the link then
refuses with ``ROUTER_UNREACHABLE`` rather than guessing.  Routes and VPN rules live where each
backend keeps them (:class:`RouteConfig`): in the router's live config locally, in the Hive spec in
a cluster (the operator rolls the ConfigMap and the routers reload it).

Reads are ``async`` because the Kubernetes backend reads the API server; they take no lock.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from fluxbee.admin.schemas import KillNodeParams, SpawnNodeParams


@dataclass(slots=True)
class NodeObservation:
    """Desired and observed state of one node, as a backend sees it."""

    node_name: str
    hive: str
    managed: bool
    """Created through the admin API (so it can be killed and reconfigured through it)."""
    lifecycle_state: str
    """RUNNING | STARTING | FAILED | STOPPED | UNKNOWN, as the original admin API reports them."""
    visible_in_router: bool
    runtime: dict[str, Any]
    process: dict[str, Any] = field(default_factory=dict)
    config_path: str | None = None
    config: dict[str, Any] | None = None
    config_valid: bool = False
    state_path: str | None = None
    state: Any = None
    state_exists: bool = False
    instances: list[str] = field(default_factory=list)
    """Identities of the running instances (Pod uids, process ids): a change means a replacement."""


RegisterIlk = Callable[[str, str], Awaitable[str | None]]
"""The spawn's identity step, given the resolved runtime name and version: the node's ILK (None when
skipped).  A backend calls it once the spawn is valid and before it writes anything; it raises
AdminError when SY.identity refuses, and then the backend writes nothing."""


class Backend(Protocol):
    hive_id: str
    kind: str

    async def hive_info(self) -> dict[str, Any]: ...

    async def observe(self, visible: set[str] | None, only: str | None = None) -> list[NodeObservation]:
        """Every node the hive should run, plus stopped managed ones, given the router-visible names
        (None: the router is out of reach), just ``only`` when given."""
        ...

    async def spawn_node(self, name: str, params: SpawnNodeParams, register: RegisterIlk) -> dict[str, Any]:
        """Create and start a node with the ILK ``register`` gives; raises AdminError (NODE_ALREADY_EXISTS,
        RUNTIME_NOT_AVAILABLE …).  Returns ``runtime``, ``version``, ``requested_version``, ``unit``,
        ``visible_in_router`` and ``config``: the original's summary ``{status, path, created, config_version}``
        (the full effective config is served by ``get_node_config``)."""
        ...

    async def node_state(self, name: str) -> tuple[str | None, Any]:
        """Where a node's state file is (or would be) and its content, None when there is none yet: for nodes
        the hive does not declare but that are connected (SY.* services, nodes started by hand).  An unreadable
        file raises AdminError NODE_STATE_READ_FAILED."""
        ...

    async def kill_node(self, name: str, params: KillNodeParams) -> dict[str, Any]: ...

    async def start_node(self, name: str) -> dict[str, Any]:
        """Run a stopped node's instance again: ``state`` ``started`` or ``already_running``, ``unit``, ``runtime``,
        ``version``, ``requested_version``; NODE_NOT_FOUND without an instance, START_FAILED when it cannot."""
        ...

    async def restart_node(self, name: str) -> dict[str, Any]:
        """Replace a node's processes or Pods at once (a stopped instance is started): ``state: restarted``;
        NODE_NOT_FOUND, RESTART_FAILED."""
        ...

    async def remove_node_instance(self, name: str) -> dict[str, Any]:
        """Delete a stopped node's instance (config, state, kept document): ``status`` ``ok`` or ``not_found``,
        ``removed_path``; NODE_INSTANCE_RUNNING while it runs."""
        ...

    async def set_node_config(self, name: str, config: dict[str, Any], replace: bool) -> dict[str, Any]: ...

    def bump_status_version(self, name: str, fingerprint: str) -> int: ...

    async def runtimes(self) -> dict[str, Any]:
        """``{status, manifest_version, manifest_hash, runtimes: {name: {available, current, type,
        runtime_base, readiness: {version: {...}}}}}``."""
        ...

    async def remove_runtime_version(self, runtime: str, version: str) -> dict[str, Any]:
        """Delete one version from the hive's runtime store (checked by the caller: not current unless
        alone, not running, no dependents): ``removed_path``, ``removed_runtime_dir``, ``current``,
        ``manifest_version``, ``manifest_hash``."""
        ...

    async def remote_hives(self) -> dict[str, dict[str, Any]]: ...

    async def add_remote_hive(self, record: dict[str, Any]) -> dict[str, Any]:
        """Register a hive; returns what the backend did (``bootstrap_mode``, ``message``)."""
        ...

    async def remove_remote_hive(self, hive_id: str) -> None: ...


class RouteConfig(Protocol):
    """Where a hive's routes and VPN rules are kept and changed."""

    async def lists(self) -> dict[str, Any]:
        """``{config_version, routes: [...], vpns: [...]}`` (snake_case items, as the router reports them)."""
        ...

    async def apply(self, subsystem: str, items: list[dict[str, Any]], version: int,
                    base: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Replace ``routes`` or ``vpn`` (``version`` 0: any newer); ``{status, config_version, version}``
        or ``{status: error, error_code, error_detail}``.  ``base``: the list (as :meth:`lists` gave it)
        ``items`` was derived from; where another writer may have changed it since (admin replicas),
        nothing is written and ``error_code`` is :data:`LIST_CHANGED`: read again and redo the edit."""
        ...


LIST_CHANGED = "LIST_CHANGED"


class RouterLink(Protocol):
    """The admin node's connection to its hive's router."""

    async def router_status(self) -> dict[str, Any]: ...

    async def node_status(self, name: str, timeout: float) -> dict[str, Any] | None:
        """The node's NODE_STATUS_GET answer, or None when it does not answer in time."""
        ...

    async def config_changed(self, subsystem: str, config: dict[str, Any], version: int) -> dict[str, Any]:
        """Send CONFIG_CHANGED to the router; its CONFIG_RESPONSE payload."""
        ...

    async def router_request(self, msg: str, payload: dict[str, Any], *, timeout: float) -> tuple[str | None, Any]:
        """One control request to the router itself (``LINK_ADD`` …): (reply meta.msg, reply payload)."""
        ...

    async def send(self, dst: str, payload: Any, *, msg_type: str, msg: str | None, meta: dict[str, Any],
                   ttl: int) -> str: ...

    async def request(self, dst: str, payload: Any, *, msg_type: str, msg: str, meta: dict[str, Any], ttl: int,
                      timeout: float) -> tuple[str | None, Any]:
        """(reply meta.msg, reply payload); raises AdminError TIMEOUT/UNREACHABLE."""
        ...
