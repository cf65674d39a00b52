"""Reading the router's node table from shared memory (no round trip to the router)."""

from __future__ import annotations

import time
import uuid as uuid_mod
from pathlib import Path

from fluxbee.dataplane import shm
from fluxbee.dataplane.sdk.discovery import default_run_dir

_ATTEMPTS = 5
_BACKOFF_S = 0.002
"""Pause after the first failed attempt; the n-th waits n times as long (20 ms in all at most)."""


def read_node_table(run_dir: Path | None = None) -> list[shm.NodeRecord]:
    """Every node connected to the routers whose sockets are in ``run_dir/routers``.

    Regions whose owner stopped heartbeating are skipped: their content may be
    a dead router's ghosts.
    """
    base = run_dir or default_run_dir()
    records: list[shm.NodeRecord] = []
    for sock in sorted((base / "routers").glob("*.sock")):
        try:
            router_uuid = str(uuid_mod.UUID(sock.stem))
        except ValueError:
            continue
        for attempt in range(_ATTEMPTS):
            try:
                # Opening reads the header too: it can meet the same half-finished write as a read.
                with shm.NodeTableReader(shm.node_table_name(router_uuid)) as reader:
                    if not reader.header().is_stale():
                        records.extend(reader.read())
                break
            except shm.RegionNotFoundError:
                break
            except shm.ReadTimeoutError:
                # The writer was descheduled mid-write; its next step finishes the record. Yield the
                # CPU before trying again, so that it can take that step (on a busy host it waits for one).
                if attempt == _ATTEMPTS - 1:
                    raise
                time.sleep(_BACKOFF_S * (attempt + 1))
    return records
