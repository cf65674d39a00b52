"""How SY.identity runs: :class:`IdentitySettings`, built at the entry point (CLI) and passed in."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fluxbee.identity.store import DATABASE


@dataclass(frozen=True, slots=True)
class IdentitySettings:
    """How SY.identity runs.  Built at the entry point (CLI) and passed in."""

    hive_id: str
    run_dir: Path
    dsn: str
    """PostgreSQL server URL (any database part is replaced by ``database``)."""
    database: str = DATABASE
    node_name: str = "SY.identity"
    frontdesk: str = "SY.frontdesk.gov"
    """The hive's identity front desk (``government.identity_frontdesk``), allowed to register and merge."""
    default_tenant: str = "fluxbee"
    max_ilks: int = 8192
    """Sizes the identity region (ILKs + aliases; channels x 2)."""
    key_path: Path | None = None
    """Ed25519 signing key (PEM); default ``run_dir/identity/signing.key``; public key next to it (``.pub``)."""
    merge_alias_ttl_s: int = 3600
    heartbeat_s: float = 2.0
    alias_gc_s: float = 30.0
    db_retry_s: float = 0.5
    primary: str | None = None
    """L2 name of the primary (``SY.identity@motherbee``).  Set: this instance is a replica (no database,
    NOT_PRIMARY for writes, region filled by replication).  ``@hive_id`` is appended when absent."""
    region_hive: str | None = None
    """Hive whose identity region this instance writes (default ``hive_id``): lets a second instance on one
    hive (a co-located replica, tests) keep its own region."""
    sync_heartbeat_s: float = 1.0
    """Primary: how often subscribers get the current ``(epoch, version)``."""
    jsr_region: bool = True
    """Also publish ``/jsr-identity-<region hive>`` in the original's layout (for nodes built with the
    original SDKs), sized by ``max_ilks``; written in the same batch as our own region."""
    sync_timeout_s: float = 5.0
    """Replica: silence from the primary after which it subscribes again (full resync)."""
    sync_retry_s: float = 0.5
    """Replica: first delay between subscription attempts while no full sync arrived (doubles up to
    ``sync_timeout_s``)."""

    @property
    def signing_key_path(self) -> Path:
        return self.key_path or self.run_dir / "identity" / "signing.key"

    @property
    def primary_name(self) -> str | None:
        if self.primary is None:
            return None
        return self.primary if "@" in self.primary else f"{self.primary}@{self.hive_id}"

    @property
    def region_hive_id(self) -> str:
        return self.region_hive or self.hive_id
