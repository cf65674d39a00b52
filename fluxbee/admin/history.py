"""Deployment and drift-alert history: append-only JSON lines under the run dir.

``deployments.jsonl`` gets one entry per change made through the admin API (spawn, kill, config,
routes, VPNs, hives) with its result; ``drift-alerts.jsonl`` one entry per drift the monitor
(:mod:`fluxbee.admin.drift`) observed.  Reads scan from the end; files are small (a line per change).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

DEPLOYMENTS = "deployments.jsonl"


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


class History:
    def __init__(self, directory: Path, hive_id: str) -> None:
        self.directory = directory
        self.hive_id = hive_id

    def open(self, name: str) -> int:
        """A file descriptor to append entries to ``name`` (raises OSError).

        A change opens its history file *before* it is made: if the history cannot be written (a
        read-only run dir, no file descriptors left) the change is refused instead of being made
        unrecorded and answered as a failure."""
        self.directory.mkdir(parents=True, exist_ok=True)
        return os.open(self.directory / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _append(self, name: str, entry: dict[str, Any], fd: int | None = None) -> None:
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        own = fd is None
        fd = self.open(name) if fd is None else fd
        try:
            os.write(fd, line)  # one write of one line with O_APPEND: never interleaved
        finally:
            if own:
                os.close(fd)

    def deployment(self, *, category: str, action: str, actor: str, trigger: str, started: float,
                   result: str, detail: dict[str, Any], fd: int | None = None) -> dict[str, Any]:
        """Append a deployment entry (to ``fd`` when the caller opened the file with :meth:`open`)."""
        entry = {"deployment_id": str(uuid.uuid4()), "category": category, "action": action, "trigger": trigger,
                 "actor": actor, "started_at": _iso(started), "finished_at": _iso(time.time()),
                 "target_hives": [self.hive_id], "result": result, "detail": detail, "history_view": "history",
                 "workers": [{"hive_id": self.hive_id, "status": result,
                              "duration_ms": int((time.time() - started) * 1000), "hive_present": True}]}
        self._append(DEPLOYMENTS, entry, fd)
        return entry

    def drift(self, *, category: str, kind: str, severity: str, message: str,
              detail: dict[str, Any]) -> dict[str, Any]:
        entry = {"alert_id": str(uuid.uuid4()), "detected_at": _iso(time.time()), "category": category,
                 "trigger": "drift_monitor", "hive_id": self.hive_id, "severity": severity, "kind": kind,
                 "message": message, "detail": detail, "history_view": "history", "hive_present": True,
                 "synthetic": False}
        self._append("drift-alerts.jsonl", entry)
        return entry

    def read(self, name: str, *, limit: int, filters: dict[str, str | None]) -> list[dict[str, Any]]:
        """Newest first, at most ``limit``, entries whose fields equal every non-None filter."""
        try:
            lines = (self.directory / name).read_text().splitlines()
        except OSError:
            return []
        out: list[dict[str, Any]] = []
        for line in reversed(lines):
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a torn last line after a crash
            if all(v is None or entry.get(k) == v for k, v in filters.items()):
                out.append(entry)
                if len(out) >= limit:
                    break
        return out
