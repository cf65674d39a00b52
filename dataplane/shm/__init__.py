"""Shared memory of a hive: one region framework and one module per layout.

* :mod:`.region` -- create/open, mapping, seqlock reads, takeover, close-only-if-ours and the one
  error family (:class:`ShmError`) every layout raises.
* :mod:`.table` -- the header shared by a router's two regions; :mod:`.nodes` the node table,
  :mod:`.config` the config region.
* :mod:`.identity` -- SY.identity's region; :mod:`.identity_jsid` the original system's layout of
  the same records; :mod:`.identity_records` the record types both share.
* :mod:`.policy` -- the hive's policy region: the routing-policy artefact the policy service
  publishes and every router loads.

Shared memory is a leaf: it imports nothing of ours. The names below are the package's public
API (``from fluxbee.dataplane import shm; shm.NodeTableWriter``).
"""

from .config import ConfigRegionReader, ConfigRegionWriter
from .nodes import NodeRecord, NodeTableReader, NodeTableWriter
from .region import (
    ClosedOnExit,
    ReadTimeoutError,
    RegionBusyError,
    RegionFormatError,
    RegionFullError,
    RegionNotFoundError,
    RegionPermissionError,
    ShmError,
    epoch_ms,
    pid_alive,
)
from .table import (
    CONFIG_DOC_OFFSET,
    CONFIG_MAGIC,
    FLAG_ACTIVE,
    FLAG_DELETED,
    HEADER_SIZE,
    LAYOUT_VERSION,
    MAX_NAME_BYTES,
    NODE_SLOT_SIZE,
    NODE_TABLE_MAGIC,
    STALE_AFTER_MS,
    RegionHeader,
    config_region_name,
    node_table_name,
)

__all__ = [
    "CONFIG_DOC_OFFSET",
    "CONFIG_MAGIC",
    "FLAG_ACTIVE",
    "FLAG_DELETED",
    "HEADER_SIZE",
    "LAYOUT_VERSION",
    "MAX_NAME_BYTES",
    "NODE_SLOT_SIZE",
    "NODE_TABLE_MAGIC",
    "STALE_AFTER_MS",
    "ClosedOnExit",
    "ConfigRegionReader",
    "ConfigRegionWriter",
    "NodeRecord",
    "NodeTableReader",
    "NodeTableWriter",
    "ReadTimeoutError",
    "RegionBusyError",
    "RegionFormatError",
    "RegionFullError",
    "RegionHeader",
    "RegionNotFoundError",
    "RegionPermissionError",
    "ShmError",
    "config_region_name",
    "epoch_ms",
    "node_table_name",
    "pid_alive",
]
