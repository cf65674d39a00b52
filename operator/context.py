"""What every handler needs, passed explicitly through kopf's ``memo``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fluxbee.operator.conditions import Outcome, status_changed, status_patch
from fluxbee.operator.kube import ApiError, Kube
from fluxbee.operator.settings import OperatorSettings

log = logging.getLogger(__name__)

Key = tuple[str, str, str]  # plural, namespace, name


@dataclass
class Coalescer:
    """One reconcile at a time per object, and at most one more queued behind it.

    Child events (a Pod changed, a ConfigMap was deleted) arrive in bursts; every one of them
    asks for the same parent reconcile, so extra requests while one is queued are dropped.
    """

    _locks: dict[Key, asyncio.Lock] = field(default_factory=dict)
    _queued: set[Key] = field(default_factory=set)

    async def run(self, key: Key, work: Callable[[], Awaitable[None]], *, coalesce: bool) -> None:
        if coalesce and key in self._queued:
            return
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._queued.add(key)
        try:
            async with lock:
                self._queued.discard(key)
                await work()
        finally:
            self._queued.discard(key)
            if not lock.locked() and key not in self._queued:
                self._locks.pop(key, None)


@dataclass
class OperatorContext:
    kube: Kube
    settings: OperatorSettings
    coalescer: Coalescer = field(default_factory=Coalescer)
    hives: set[tuple[str, str]] = field(default_factory=set)
    """(namespace, name) of every Hive reconciled and not seen gone: the periodic renewal's list."""
    renewal: asyncio.Task[None] | None = None
    """The periodic renewal task (``fluxbee.operator.app``), started and cancelled with the operator."""


async def write_status(
    kube: Kube, plural: str, body: Mapping[str, Any], outcome: Outcome
) -> dict[str, Any]:
    """Patch the status subresource with ``outcome`` unless nothing would change."""
    meta = body["metadata"]
    old = body.get("status") or {}
    new = status_patch(outcome, meta.get("generation"), old.get("conditions") or ())
    if status_changed(old, new):
        try:
            await kube.patch(plural, meta["namespace"], meta["name"], {"status": new},
                             subresource="status")
        except ApiError as err:
            if not err.not_found:  # deleted meanwhile: nothing to report on
                raise
    return new
