"""System services (``SY.*``) a local hive runs besides the router and the declared nodes.

Each service is an ordinary process described by a :class:`ProcessSpec`; the
supervisor starts them after the router and restarts them like any node.
"""

from __future__ import annotations

from pathlib import Path

from fluxbee.local.plan_types import ProcessSpec
from fluxbee.models import Hive


def system_services(hive: Hive, hive_id: str, run_dir: Path) -> list[ProcessSpec]:
    """The SY.* processes of this hive (none yet: identity and admin add theirs here)."""
    del hive, hive_id, run_dir
    return []
