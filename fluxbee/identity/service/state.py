"""What every part of SY.identity shares: its settings, store, region, connection and replication state."""

from __future__ import annotations

import asyncio
import uuid

from fluxbee.dataplane.sdk import NodeSender
from fluxbee.dataplane.shm import identity as identity_shm
from fluxbee.identity import degrees as dg
from fluxbee.identity import model as m
from fluxbee.identity import sync
from fluxbee.identity.service.auth import Authorizer
from fluxbee.identity.service.settings import IdentitySettings
from fluxbee.identity.service.shown import Shown
from fluxbee.identity.store import IdentityStore


class ServiceState:
    """The state of one SY.identity; the parts (regions, actions, replication) are mixins over it."""

    def __init__(self, settings: IdentitySettings) -> None:
        self.settings = settings
        self.auth = Authorizer(settings.hive_id, settings.frontdesk)
        self.store: IdentityStore | None = None
        self.region: identity_shm.IdentityRegionWriter | None = None
        self.is_primary = settings.primary is None
        # Only the primary signs graduations; a replica must not mint a key of its own.
        self.key = dg.load_or_create_key(settings.signing_key_path) if self.is_primary else None
        self.sender: NodeSender | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # primary: write ordering and replication
        self.epoch = str(uuid.uuid4())
        self._lock = asyncio.Lock()
        self._pending = m.Change()
        self._shown = Shown()
        """The records the region shows (a full sync then writes only what differs)."""
        self._published = 0
        self.subscribers: dict[str, str] = {}
        """Replica UUID -> name."""
        # replica
        self.tracker = sync.ReplicaTracker()
        self.tenants: dict[str, m.TenantRecord] = {}
        self._jsr_dropped_logged = 0
        self._heard = 0.0
        self._chunk_at = 0.0
        """When the last full-sync chunk arrived: an unsynced replica waits on this, not on heartbeats (which
        keep coming from a primary that still lists it, even when the subscription itself was lost)."""
        self._subscribed_at = 0.0
        self._resync = asyncio.Event()

    def _ready(self) -> IdentityStore:
        if self.store is None:
            raise m.IdentityError(m.DB_NOT_READY, "the identity database is not ready yet; retry shortly")
        return self.store
