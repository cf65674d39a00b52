"""The identity store: PostgreSQL ``fluxbee_identity`` through asyncpg.

Every write is **one transaction** that validates first (rows locked with
``FOR UPDATE``), then changes, then returns a :class:`~fluxbee.identity.model.Change`
describing what the region must show.  Nothing is kept in process memory
between requests, so a refused or failed request cannot leave phantom state
(the original mutated memory before validating).  Unique violations are mapped
to the original's error codes by constraint name, never by message text.

One module per job: :mod:`.tenants`, :mod:`.ilks` (ILK writes), :mod:`.reads` and
:mod:`.curriculum` (modules, degrees, graduations), over :mod:`.base` (settings, the
database, the shared helpers and the write transaction); :class:`IdentityStore` composes them.
"""

from __future__ import annotations

import logging

import asyncpg

from fluxbee.identity import migrations
from fluxbee.identity.store.base import DATABASE, StoreSettings, ensure_database, init_conn, with_database
from fluxbee.identity.store.curriculum import Curriculum
from fluxbee.identity.store.ilks import IlkWrites
from fluxbee.identity.store.reads import IdentityReads, ilk_cursor, parse_ilk_cursor
from fluxbee.identity.store.tenants import TenantWrites

log = logging.getLogger(__name__)


class IdentityStore(TenantWrites, IlkWrites, IdentityReads, Curriculum):
    """Open with :meth:`open`; every public coroutine is one transaction (or one read)."""

    @classmethod
    async def open(cls, settings: StoreSettings) -> IdentityStore:
        await ensure_database(settings.dsn, settings.database)
        pool = await asyncpg.create_pool(with_database(settings.dsn, settings.database), min_size=1,
                                         max_size=settings.pool_size, init=init_conn)
        store = cls(settings, pool)
        try:
            async with pool.acquire() as conn:
                applied = await migrations.migrate(conn)
            if applied:
                log.info("applied identity schema migrations %s", applied)
            await store.ensure_default_tenant()
        except BaseException:
            await pool.close()
            raise
        return store

    async def close(self) -> None:
        await self.pool.close()


__all__ = ["DATABASE", "IdentityStore", "StoreSettings", "ensure_database", "ilk_cursor", "parse_ilk_cursor",
           "with_database"]
