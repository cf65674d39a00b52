"""The global routes and VPN rules of a hive in a cluster, shared by every admin replica of the hive.

The document (:class:`~fluxbee.admin.global_config.GlobalDoc`: ``{version, routes, vpns}``) is the data
key ``global-config.json`` of the hive's admin ConfigMap ``<hive>-admin-history``: the ConfigMap the
operator makes with the admin Deployment and the chart's admin Role lets the admin API patch, so no
other object or right is needed.  It is the same document a local hive keeps in
``<run dir>/admin/global-config.json``, and :mod:`fluxbee.admin.global_config` runs the same logic
over it (:class:`ConfigMapGlobalStore` is its store).  It fits one frame, so as JSON it is at most
about 140 kB: beside the history's two logs of at most 400 kB each, the ConfigMap stays under the
API server's 1 MiB.

Two replicas of a hive's admin API may change it at once (two ``PUT /config/routes`` on a mother,
or a push and a pull on a worker).  A change runs under the **writer lease** (annotation
``fluxbee.io/global-config-writer`` on the same ConfigMap: holder and expiry, taken with the
``resourceVersion`` it read, given back when the change is done, and running out after
:data:`WRITER_SECONDS` if its holder died), so one replica at a time reads, numbers, applies and
records a version.  The record itself is a merge patch carrying the ``resourceVersion`` of a read
in which the key still held the version the change was computed from: a replica whose lease ran
out while it worked cannot overwrite a newer version (it gets ``BUSY``); a history append or a
lease renewal of another replica in between only makes it read again.

A worker's pull loop runs in one replica at a time (annotation ``fluxbee.io/global-config-follower``,
the drift monitor's lease pattern); pushes from the mother may reach any replica.

A key that is there but does not parse is an error naming the ConfigMap and key (``STATE_READ_FAILED``),
never version 0: a worker would take an old version again, and a mother would number its next
change 1, below what its workers hold.  A missing key (or ConfigMap) is version 0: nothing was set.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

from fluxbee.admin.errors import AdminError
from fluxbee.admin.global_config import GlobalDoc
from fluxbee.admin.history import HistoryUnavailable
from fluxbee.admin.kube_history import WRITE_RETRIES, ConfigMapHistory, lease_holder
from fluxbee.dataplane.names import ANNOTATION_GLOBAL_FOLLOWER, ANNOTATION_GLOBAL_WRITER
from fluxbee.kube import ApiError

log = logging.getLogger(__name__)

GLOBAL_KEY: Final = "global-config.json"
WRITER_ANNOTATION: Final = ANNOTATION_GLOBAL_WRITER
FOLLOWER_ANNOTATION: Final = ANNOTATION_GLOBAL_FOLLOWER
WRITER_SECONDS: Final = 20.0
"""How long the writer lease holds unrenewed: the longest another replica waits behind a dead one."""
WRITER_WAIT: Final = 30.0
"""How long a change waits for the writer lease before it answers ``BUSY``."""


def parse_doc(data: dict[str, Any], where: str) -> GlobalDoc:
    """The global document in a ConfigMap's ``data`` (version 0 when the key is absent)."""
    raw = data.get(GLOBAL_KEY)
    if raw is None:
        return GlobalDoc()
    try:
        return GlobalDoc.from_json(json.loads(str(raw)), where)
    except ValueError as err:
        raise AdminError("STATE_READ_FAILED", f"{where} is damaged ({err}); nothing was changed. Fix the key, or "
                                              "delete it to start the global config again from version 0 "
                                              "(a worker then takes its mother's whole config again)") from err


def encode_doc(doc: GlobalDoc) -> str:
    return json.dumps({**doc.to_json(), "saved_at_ms": int(time.time() * 1000)}, sort_keys=True)


class ConfigMapGlobalStore:
    """:class:`~fluxbee.admin.global_config.GlobalStore` on the hive's admin ConfigMap; ``holder``
    names this admin process among the replicas (its pod name in a Deployment)."""

    def __init__(self, history: ConfigMapHistory, holder: str) -> None:
        self.history = history
        self.holder = holder
        self.where = f"{history.where} key {GLOBAL_KEY}"
        self._lock = asyncio.Lock()  # this process's changes one at a time; the lease excludes the others

    async def _read(self, *, create: bool) -> dict[str, Any] | None:
        try:
            return await self.history.read(create=create)
        except HistoryUnavailable as err:
            raise AdminError("STATE_WRITE_FAILED" if create else "STATE_READ_FAILED", str(err)) from err

    async def load(self) -> GlobalDoc:
        cm = await self._read(create=False)
        return parse_doc((cm or {}).get("data") or {}, self.where)

    async def save(self, doc: GlobalDoc, based_on: int) -> None:
        h = self.history
        for _ in range(WRITE_RETRIES):
            cm = await self._read(create=True)
            if cm is None:
                continue
            held = parse_doc(cm.get("data") or {}, self.where).version
            if held != based_on:
                raise AdminError("BUSY", f"{self.where} holds version {held}, not {based_on}: another admin replica "
                                         "changed it meanwhile (this one's writer lease ran out); nothing was "
                                         "recorded, try again")
            patch = {"metadata": {"resourceVersion": cm["metadata"]["resourceVersion"]},
                     "data": {GLOBAL_KEY: encode_doc(doc)}}
            try:
                await h.api.patch("configmaps", h.namespace, h.name, patch)
                return
            except ApiError as err:
                if err.status == 409 or err.not_found:  # another write to the ConfigMap: read again
                    await asyncio.sleep(random.uniform(0.0, 0.05))
                    continue
                raise AdminError("STATE_WRITE_FAILED", f"writing {self.where}: the Kubernetes API answered "
                                                       f"{err.status} {err.reason}: {err.message}") from err
        raise AdminError("BUSY", f"{h.where} kept changing under {WRITE_RETRIES} attempts to record the global "
                                 "config; nothing was recorded, try again")

    async def _lead(self, key: str, role: str, seconds: float, renew_before: float) -> bool:
        try:
            return await self.history.lead(self.holder, key, role, seconds, renew_before)
        except HistoryUnavailable as err:
            raise AdminError("STATE_WRITE_FAILED", str(err)) from err

    async def _holder(self) -> str | None:
        cm = await self._read(create=False)
        return lease_holder(((cm or {}).get("metadata") or {}).get("annotations") or {}, time.time(),
                            WRITER_ANNOTATION)

    @asynccontextmanager
    async def locked(self) -> AsyncIterator[None]:
        """Hold the writer lease (taken fresh, so a whole change fits in it) while the block runs."""
        async with self._lock:
            await self._read(create=True)  # the lease lives on it: made first if need be (normally the operator's)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + WRITER_WAIT
            while not await self._lead(WRITER_ANNOTATION, "changes the global config", WRITER_SECONDS,
                                       WRITER_SECONDS):
                if loop.time() > deadline:
                    raise AdminError("BUSY", f"another admin replica ({await self._holder() or 'unknown'}) has been "
                                             f"changing the global config for over {WRITER_WAIT:g} s "
                                             f"({self.history.where}, annotation {WRITER_ANNOTATION}); nothing "
                                             "was changed, try again")
                await asyncio.sleep(random.uniform(0.05, 0.2))
            try:
                yield
            finally:
                try:
                    await asyncio.shield(self.history.release(self.holder, WRITER_ANNOTATION))
                except HistoryUnavailable as err:
                    log.warning("could not give up the global config's writer lease (%s); it runs out in %g s",
                                err, WRITER_SECONDS)

    async def lead_follower(self) -> bool:
        """Whether this replica runs the worker's pull loop now (one replica at a time)."""
        return await self._lead(FOLLOWER_ANNOTATION, "follows the mother's global config", 15.0, 10.0)
