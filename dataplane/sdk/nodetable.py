"""Reading the router's node table from shared memory (no round trip to the router)."""

from __future__ import annotations

import uuid as uuid_mod
from pathlib import Path

from fluxbee.dataplane import shm
from fluxbee.dataplane.sdk.discovery import default_run_dir

_ATTEMPTS = 5


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
        try:
            reader = shm.NodeTableReader(shm.node_table_name(router_uuid))
        except shm.RegionNotFoundError:
            continue
        with reader:
            for attempt in range(_ATTEMPTS):
                try:
                    if not reader.header().is_stale():
                        records.extend(reader.read())
                    break
                except shm.ReadTimeoutError:
                    # The writer was descheduled mid-write; its next step finishes the record.
                    if attempt == _ATTEMPTS - 1:
                        raise
    return records
