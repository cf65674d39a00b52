"""How one router runs, and the error it raises when it cannot start."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fluxbee.dataplane.link.settings import LinkSettings
from fluxbee.dataplane.names import DEFAULT_ROUTER_NAME, FRONTDESK_NODE


@dataclass(frozen=True, slots=True)
class RouterSettings:
    """How one router runs.  Built once at the entry point and passed in."""

    hive_id: str
    """Hive this router serves; appended as ``@hive`` to names without one."""
    run_dir: Path
    """Root of ``routers/<uuid>.sock`` and ``state/``."""
    router_name: str = DEFAULT_ROUTER_NAME
    """L2 base name of the router (``RT.*``); not addressable by nodes."""
    config_path: Path | None = None
    """Hive config file (routes, VPNs); polled and reloaded live when it changes."""
    metrics_addr: tuple[str, int] | None = None
    """Serve /healthz, /readyz, /metrics and /status over HTTP here."""
    max_nodes: int = 4096
    """Capacity of the shared-memory node table (and of connections)."""
    hello_timeout_s: float = 5.0
    """A connection that sends no HELLO within this time is closed."""
    high_water: int = 256 * 1024
    """Outbound buffer size at which a connection counts as congested."""
    max_buffer: int = 1024 * 1024
    """Outbound buffer cap per connection; frames beyond it are dropped."""
    slow_consumer_timeout_s: float = 10.0
    """A connection congested for this long is closed (SLOW_CONSUMER)."""
    dedupe_window_s: float = 30.0
    """Broadcast trace ids are remembered this long."""
    heartbeat_interval_s: float = 2.0
    """Shared-memory heartbeat period."""
    config_poll_s: float = 1.0
    """How often the config file's stat is checked."""
    identity_frontdesk: str = FRONTDESK_NODE
    """Where ``dst: null`` messages from temporary ILKs go (L3, :mod:`fluxbee.dataplane.router.l3`)."""
    scheduling: str = "batch"
    """CPU scheduling class of the router process, set by :func:`run_router`: ``batch`` or
    ``inherit`` (:mod:`fluxbee.dataplane.router.scheduling` says why and what it costs)."""
    busy_poll_us: int = 0
    """After routing a read, keep polling this long before sleeping (0: off; see
    :mod:`fluxbee.dataplane.router.busypoll` for what it trades)."""
    claims_dir: Path | None = None
    """Claimed names and their proofs (:mod:`fluxbee.dataplane.router.trust`), polled like the config
    file.  Without it no claims file exists: ``SY.*``/``RT.*`` names cannot register at all."""
    policy_dir: Path | None = None
    """A directory holding the delivered policy (a mounted ConfigMap: ``artefact``, ``version``,
    ``sha256``), polled every second; this router then writes its hive's policy region itself
    (:mod:`fluxbee.dataplane.router.policy_dir`).  Without it the policy comes from SY.policy."""
    socket_group: int | None = None
    """Group of the socket directory (0750) and socket (0660); default the router's primary gid.
    Processes outside the owner and this group cannot connect at all."""
    claimed_reserve: int = 256
    """Node-table slots only proven claimed names may use: undeclared names are refused once
    ``max_nodes - claimed_reserve`` nodes are registered, so a flood never locks the hive out."""
    max_unclaimed_per_uid: int = 2048
    """Registered nodes with unclaimed names per peer uid (SO_PEERCRED)."""
    max_unclaimed_per_pid: int = 1024
    """Registered nodes with unclaimed names per peer process."""
    max_pending_per_uid: int = 256
    """Connections of one uid that have not said HELLO yet; more are closed at once."""
    takeover_window_s: float = 30.0
    """Window in which repeated takeovers of one live UUID count as flapping."""
    takeover_limit: int = 3
    """Takeovers of one live UUID (by another process) allowed in the window; the next HELLO is
    refused ``UUID_IN_USE`` and the incumbent keeps the UUID for as long as it stays connected."""
    wan_listen: tuple[str, int] | None = None
    """Accept WAN links from other hives here (README: Links)."""
    uplinks: tuple[tuple[str, int], ...] = ()
    """Dial these WAN peers (other hives' gateways); redialled with backoff."""
    authorized_hives: frozenset[str] = frozenset()
    """Hives allowed on WAN links; empty: any hive holding a certificate from the CA."""
    wan_cert: Path | None = None
    """This hive's link certificate (PEM), presented on WAN and mesh links."""
    wan_key: Path | None = None
    wan_ca_cert: Path | None = None
    """The hive CA (PEM) every peer's certificate must chain to."""
    mesh_listen: tuple[str, int] | None = None
    """Accept mesh links from the other routers of this hive here."""
    mesh_peers: tuple[tuple[str, int], ...] = ()
    mesh_dns: tuple[str, int] | None = None
    """A name (a headless Service) resolved periodically; every address but our own is a mesh peer."""
    link_insecure_dev: bool = False
    """Plaintext links whose peers are believed on their word: development only, logged loudly."""
    link_hello_interval_s: float = 10.0
    link_dead_interval_s: float = 40.0

    @property
    def links(self) -> LinkSettings:
        """The link settings (:mod:`fluxbee.dataplane.link`)."""
        return LinkSettings(wan_listen=self.wan_listen, uplinks=self.uplinks, authorized_hives=self.authorized_hives,
                            cert=self.wan_cert, key=self.wan_key, ca_cert=self.wan_ca_cert,
                            mesh_listen=self.mesh_listen, mesh_peers=self.mesh_peers, mesh_dns=self.mesh_dns,
                            insecure_dev=self.link_insecure_dev, hello_interval_s=self.link_hello_interval_s,
                            dead_interval_s=self.link_dead_interval_s)


class RouterError(Exception):
    """The router cannot start (socket path, busy regions, bad config)."""
