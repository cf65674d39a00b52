"""Deployment and drift-alert history, on a pluggable store.

``deployments.jsonl`` gets one entry per change made through the admin API (spawn, kill, config,
routes, VPNs, hives) with its result; ``drift-alerts.jsonl`` one entry per drift the monitor
(:mod:`fluxbee.admin.drift`) observed.  Where the entries live is a :class:`HistoryStore`: append-only
JSON-lines files under the run dir for a local hive (:class:`FileHistory`), a ConfigMap the admin
replicas of a cluster share (:mod:`fluxbee.admin.kube_history`).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

DEPLOYMENTS = "deployments.jsonl"
DRIFT_ALERTS = "drift-alerts.jsonl"
LOGS = (DEPLOYMENTS, DRIFT_ALERTS)


class HistoryUnavailable(Exception):
    """The history cannot be written (``detail`` says why; ``where`` names the store)."""

    def __init__(self, where: str, detail: str) -> None:
        super().__init__(f"{where}: {detail}")
        self.where = where
        self.detail = detail


class Journal(Protocol):
    """One reserved append to one log: obtained *before* a change is made (:meth:`History.open`)."""

    async def write(self, entry: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class HistoryStore(Protocol):
    where: str
    """Where the entries are kept, for messages."""

    async def reserve(self, name: str) -> Journal:
        """Make sure an entry of ``name`` can be written; raises :class:`HistoryUnavailable`."""
        ...

    async def append(self, name: str, entry: dict[str, Any]) -> None: ...

    async def entries(self, name: str) -> tuple[list[dict[str, Any]], int]:
        """Every kept entry of ``name``, oldest first, and how many older ones were dropped."""
        ...


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


class _FileJournal:
    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    async def write(self, entry: dict[str, Any]) -> None:
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        try:
            os.write(self.fd, line)  # one write of one line with O_APPEND: never interleaved
        except OSError as err:
            raise HistoryUnavailable(str(self.path), err.strerror or str(err)) from err

    def close(self) -> None:
        os.close(self.fd)


class FileHistory:
    """JSON lines under ``directory`` (one file per log; a local hive has one admin process).

    A change opens its file *before* it is made and keeps the descriptor: if the history cannot be
    written (a read-only run dir, no descriptors left) the change is refused instead of being made
    unrecorded."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.where = str(directory)

    async def reserve(self, name: str) -> Journal:
        path = self.directory / name
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as err:
            raise HistoryUnavailable(self.where, err.strerror or str(err)) from err
        return _FileJournal(fd, path)

    async def append(self, name: str, entry: dict[str, Any]) -> None:
        journal = await self.reserve(name)
        try:
            await journal.write(entry)
        finally:
            journal.close()

    async def entries(self, name: str) -> tuple[list[dict[str, Any]], int]:
        try:
            lines = (self.directory / name).read_text().splitlines()
        except OSError:
            return [], 0
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a torn last line after a crash
        return out, 0


class History:
    """The entries' shape (the original's fields) over a :class:`HistoryStore`."""

    def __init__(self, store: HistoryStore, hive_id: str) -> None:
        self.store = store
        self.hive_id = hive_id

    @property
    def where(self) -> str:
        return self.store.where

    async def open(self, name: str) -> Journal:
        """A reserved append to ``name``; raises :class:`HistoryUnavailable` (then make no change)."""
        return await self.store.reserve(name)

    async def deployment(self, *, category: str, action: str, actor: str, trigger: str, started: float,
                         result: str, detail: dict[str, Any], journal: Journal | None = None) -> dict[str, Any]:
        """Append a deployment entry (to ``journal`` when the caller reserved it with :meth:`open`)."""
        entry = {"deployment_id": str(uuid.uuid4()), "category": category, "action": action, "trigger": trigger,
                 "actor": actor, "started_at": _iso(started), "finished_at": _iso(time.time()),
                 "target_hives": [self.hive_id], "result": result, "detail": detail, "history_view": "history",
                 "workers": [{"hive_id": self.hive_id, "status": result,
                              "duration_ms": int((time.time() - started) * 1000), "hive_present": True}]}
        if journal is not None:
            await journal.write(entry)
        else:
            await self.store.append(DEPLOYMENTS, entry)
        return entry

    async def drift(self, *, category: str, kind: str, severity: str, message: str,
                    detail: dict[str, Any]) -> dict[str, Any]:
        entry = {"alert_id": str(uuid.uuid4()), "detected_at": _iso(time.time()), "category": category,
                 "trigger": "drift_monitor", "hive_id": self.hive_id, "severity": severity, "kind": kind,
                 "message": message, "detail": detail, "history_view": "history", "hive_present": True,
                 "synthetic": False}
        await self.store.append(DRIFT_ALERTS, entry)
        return entry

    async def read(self, name: str, *, limit: int,
                   filters: dict[str, str | None]) -> tuple[list[dict[str, Any]], int]:
        """Newest first, at most ``limit``, entries whose fields equal every non-None filter; and how
        many of the oldest entries the store dropped to stay within its bound."""
        entries, dropped = await self.store.entries(name)
        out: list[dict[str, Any]] = []
        for entry in reversed(entries):
            if all(v is None or entry.get(k) == v for k, v in filters.items()):
                out.append(entry)
                if len(out) >= limit:
                    break
        return out, dropped
