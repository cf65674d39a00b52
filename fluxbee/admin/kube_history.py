"""The admin history of a hive in a cluster: one ConfigMap that every admin replica shares.

ConfigMap ``<hive>-admin-history`` holds one data key per log (JSON lines, oldest first) and
``dropped.json`` (per log, how many of the oldest entries were dropped to keep it bounded).  An
append is a read-modify-write whose merge patch carries the ``resourceVersion`` it read: the API
server refuses a patch over a newer version (409), and the writer reads again and re-applies its
entry, so two replicas appending at once never lose each other's entries.

The same ConfigMap carries the drift monitor's lease (annotation ``fluxbee.io/drift-monitor``: holder
and expiry, written the same optimistic way): one replica records drift, the others take over
when its lease runs out (:meth:`ConfigMapHistory.lead_drift_monitor`).  :meth:`ConfigMapHistory.lead`
is the same lease under any annotation (the global config's writer and follower use it:
:mod:`fluxbee.admin.kube_global`).

The operator creates the ConfigMap with the admin Deployment (so the admin API needs no right to
create ConfigMaps); an admin process that finds none (run by hand, before the operator) creates it
the same way: owned by the Hive (the garbage collector deletes it with the Hive), and deliberately
not labelled as managed by the operator, whose reconcile its writes must not wake.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Sequence
from typing import Any

from fluxbee.admin.history import HistoryUnavailable, Journal
from fluxbee.dataplane.names import ANNOTATION_DRIFT_LEASE, API_VERSION, LABEL_HIVE
from fluxbee.kube import ApiError, KubeClient

log = logging.getLogger(__name__)

DROPPED_KEY = "dropped.json"
MAX_ENTRIES = 1000
"""Entries kept per log."""
MAX_BYTES = 400_000
"""Bytes kept per log: both logs stay well under the API server's 1 MiB object limit."""
WRITE_RETRIES = 30
HIVE_LABEL = LABEL_HIVE
COMPONENT_LABEL = "app.kubernetes.io/component"
PART_OF_LABEL = "app.kubernetes.io/part-of"
LEASE_ANNOTATION = ANNOTATION_DRIFT_LEASE
LEASE_SECONDS = 15.0
"""How long a drift monitor holds its lease unrenewed: the pause in drift records after its pod goes."""
RENEW_BEFORE = 10.0
"""Renew once less than this is left (about one write every 5 s, not one per check)."""


def history_config_map(hive_resource: str) -> str:
    """Name of a hive's history ConfigMap (the chart's admin Role may patch exactly this one)."""
    return f"{hive_resource}-admin-history"


def bounded(lines: Sequence[str], *, max_entries: int = MAX_ENTRIES,
            max_bytes: int = MAX_BYTES) -> tuple[list[str], int]:
    """The newest ``lines`` that fit both bounds (order kept), and how many older ones were cut."""
    kept: list[str] = []
    size = 0
    for line in reversed(lines):
        size += len(line.encode()) + 1
        if len(kept) >= max_entries or size > max_bytes:
            break
        kept.append(line)
    kept.reverse()
    return kept, len(lines) - len(kept)


def dropped_counts(data: dict[str, Any]) -> dict[str, int]:
    """The ``dropped.json`` counters (an unreadable value counts as none dropped)."""
    try:
        value = json.loads(str(data.get(DROPPED_KEY) or "{}"))
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): int(v) for k, v in value.items() if isinstance(v, int) and not isinstance(v, bool)}


def with_entry(data: dict[str, Any], name: str, line: str) -> dict[str, str]:
    """The data keys to write so that ``data`` gains ``line`` at the end of log ``name`` (pure)."""
    lines = [x for x in str(data.get(name) or "").splitlines() if x.strip()]
    kept, cut = bounded([*lines, line])
    dropped = dropped_counts(data)
    if cut:
        dropped[name] = dropped.get(name, 0) + cut
    return {name: "".join(x + "\n" for x in kept), DROPPED_KEY: json.dumps(dropped, sort_keys=True)}


def parse_log(text: object) -> list[dict[str, Any]]:
    out = []
    for line in str(text or "").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out


def lease_holder(annotations: dict[str, Any], now: float, key: str = LEASE_ANNOTATION) -> str | None:
    """Who holds the lease in annotation ``key`` (default: the drift monitor's) at ``now`` (None:
    nobody, or it ran out)."""
    try:
        lease = json.loads(str(annotations.get(key) or "{}"))
        holder, until = lease["holder"], float(lease["until"])
    except (ValueError, KeyError, TypeError):
        return None
    return str(holder) if until > now else None


def lease_left(annotations: dict[str, Any], holder: str, now: float, key: str = LEASE_ANNOTATION) -> float:
    """Seconds left of ``holder``'s lease at ``now`` (0 when someone else holds it or none does)."""
    if lease_holder(annotations, now, key) != holder:
        return 0.0
    return float(json.loads(str(annotations[key]))["until"]) - now


class _Reserved:
    def __init__(self, store: ConfigMapHistory, name: str) -> None:
        self.store = store
        self.name = name

    async def write(self, entry: dict[str, Any]) -> None:
        await self.store.append(self.name, entry)

    def close(self) -> None:
        return None


class ConfigMapHistory:
    """:class:`~fluxbee.admin.history.HistoryStore` on the hive's history ConfigMap."""

    def __init__(self, api: KubeClient, namespace: str, hive_resource: str) -> None:
        self.api = api
        self.namespace = namespace
        self.hive_resource = hive_resource
        self.name = history_config_map(hive_resource)
        self.where = f"ConfigMap {namespace}/{self.name}"
        self._lock = asyncio.Lock()  # this process's appends one at a time (fewer conflicts)
        self._last: dict[str, Any] | None = None

    def _unavailable(self, err: ApiError, doing: str) -> HistoryUnavailable:
        return HistoryUnavailable(self.where, f"{doing}: the Kubernetes API answered {err.status} {err.reason}: "
                                              f"{err.message}")

    async def _manifest(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace,
                                "labels": {HIVE_LABEL: self.hive_resource, COMPONENT_LABEL: "admin-history",
                                           PART_OF_LABEL: "fluxbee"}}
        hive = await self.api.get("hives", self.namespace, self.hive_resource)
        if hive is not None:  # no blockOwnerDeletion: that would need rights on the Hive's finalizers
            meta["ownerReferences"] = [{"apiVersion": API_VERSION, "kind": "Hive", "name": self.hive_resource,
                                        "uid": hive["metadata"]["uid"]}]
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {}}

    async def _read(self, *, create: bool) -> dict[str, Any] | None:
        try:
            cm = await self.api.get("configmaps", self.namespace, self.name)
        except ApiError as err:
            raise self._unavailable(err, "reading the history") from err
        if cm is not None or not create:
            return cm
        try:  # normally the operator made it with the admin Deployment
            cm = await self.api.create("configmaps", self.namespace, await self._manifest())
            log.info("created %s for the admin history", self.where)
        except ApiError as err:
            if not err.conflict:
                raise self._unavailable(err, "it does not exist and creating it failed") from err
            try:
                cm = await self.api.get("configmaps", self.namespace, self.name)  # another writer made it
            except ApiError as again:
                raise self._unavailable(again, "reading the history") from again
        return cm

    async def read(self, *, create: bool) -> dict[str, Any] | None:
        """The ConfigMap as the API server has it now (made first with ``create``; None: there is none)."""
        return await self._read(create=create)

    async def reserve(self, name: str) -> Journal:
        """The ConfigMap exists (made here if need be) and can be read: entries can be appended."""
        async with self._lock:
            self._last = await self._read(create=True)
            if self._last is None:
                raise HistoryUnavailable(self.where, "it was deleted as it was being created")
        return _Reserved(self, name)

    async def append(self, name: str, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, sort_keys=True)
        async with self._lock:
            cm = self._last
            for _ in range(WRITE_RETRIES):
                if cm is None:
                    cm = await self._read(create=True)
                    if cm is None:
                        continue
                patch = {"metadata": {"resourceVersion": cm["metadata"]["resourceVersion"]},
                         "data": with_entry(cm.get("data") or {}, name, line)}
                try:
                    self._last = await self.api.patch("configmaps", self.namespace, self.name, patch)
                    return
                except ApiError as err:
                    self._last = cm = None
                    if err.status == 409:  # another replica wrote first: read again, re-apply
                        await asyncio.sleep(random.uniform(0.0, 0.05))
                        continue
                    if err.not_found:  # deleted by hand: made again on the next pass
                        continue
                    raise self._unavailable(err, "appending to the history") from err
        raise HistoryUnavailable(self.where, f"it kept changing under {WRITE_RETRIES} attempts to append")

    async def entries(self, name: str) -> tuple[list[dict[str, Any]], int]:
        cm = await self._read(create=False)
        data = (cm or {}).get("data") or {}
        return parse_log(data.get(name)), dropped_counts(data).get(name, 0)

    async def lead_drift_monitor(self, holder: str) -> bool:
        """Whether ``holder`` records drift now: it holds the lease (renewed here when it runs low),
        or takes it because nobody holds it.  A 409 means another replica wrote first: not now."""
        return await self.lead(holder, LEASE_ANNOTATION, "records the hive's drift")

    async def lead(self, holder: str, key: str, role: str, seconds: float = LEASE_SECONDS,
                   renew_before: float = RENEW_BEFORE) -> bool:
        """Whether ``holder`` has the lease in annotation ``key`` now (one replica plays ``role`` at a
        time): it holds it (renewed when less than ``renew_before`` is left), or takes it because
        nobody holds it.  A 409 means another replica wrote first: not now."""
        async with self._lock:
            cm = await self._read(create=False)
            if cm is None:  # the operator makes it with the admin Deployment (or the first change does)
                return False
            annotations = cm["metadata"].get("annotations") or {}
            now = time.time()
            current = lease_holder(annotations, now, key)
            if current not in (None, holder):
                return False
            if current == holder and lease_left(annotations, holder, now, key) > renew_before:
                return True
            lease = json.dumps({"holder": holder, "until": round(now + seconds, 3)}, sort_keys=True)
            patch = {"metadata": {"resourceVersion": cm["metadata"]["resourceVersion"],
                                  "annotations": {key: lease}}}
            try:
                self._last = await self.api.patch("configmaps", self.namespace, self.name, patch)
            except ApiError as err:
                self._last = None
                if err.status == 409 or err.not_found:
                    return False
                raise self._unavailable(err, f"taking the lease {key}") from err
            if current is None:
                log.info("this admin process (%s) now %s", holder, role)
            return True

    async def release(self, holder: str, key: str) -> None:
        """Give up ``holder``'s lease in annotation ``key`` (if it still holds it), so another replica
        need not wait for it to run out."""
        async with self._lock:
            for _ in range(WRITE_RETRIES):
                cm = await self._read(create=False)
                annotations = ((cm or {}).get("metadata") or {}).get("annotations") or {}
                if cm is None or lease_holder(annotations, time.time(), key) != holder:
                    return
                patch = {"metadata": {"resourceVersion": cm["metadata"]["resourceVersion"],
                                      "annotations": {key: None}}}
                try:
                    self._last = await self.api.patch("configmaps", self.namespace, self.name, patch)
                    return
                except ApiError as err:
                    self._last = None
                    if err.status == 409:
                        continue
                    if err.not_found:
                        return
                    raise self._unavailable(err, f"giving up the lease {key}") from err
