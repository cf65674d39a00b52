"""System services (``SY.*``) a local hive runs besides the router and the declared nodes.

Each service is an ordinary process described by a :class:`ProcessSpec`; the
supervisor starts them after the router and restarts them like any node.
"""

from __future__ import annotations

import os
from pathlib import Path

from fluxbee.models import Hive
from fluxbee.supervisor.plan_types import ProcessSpec


def system_services(hive: Hive, hive_id: str, run_dir: Path) -> list[ProcessSpec]:
    """The SY.* processes of this hive.  (SY.admin runs inside the ``fluxbee up`` process.)

    Identity: on a hive with ``spec.motherHive`` (a worker) SY.identity is a replica of
    ``SY.identity@<motherHive>``, reached over the links, and no PostgreSQL runs here; otherwise
    the embedded PostgreSQL (unless ``FLUXBEE_IDENTITY_DB_URL`` names a server) and a primary.
    On by default; ``FLUXBEE_UP_IDENTITY=0`` runs a hive without identity."""
    services: list[ProcessSpec] = []
    # Identity: embedded PostgreSQL unless FLUXBEE_IDENTITY_DB_URL names a server, then SY.identity.
    # On by default; FLUXBEE_UP_IDENTITY=0 runs a hive without identity (no PostgreSQL).
    from fluxbee.identity.supervised import DB_URL_ENV, UP_IDENTITY_ENV, identity_services

    if os.environ.get(UP_IDENTITY_ENV, "1") != "0":
        services += identity_services(hive_id, run_dir, os.environ.get(DB_URL_ENV) or None,
                                      primary_hive=hive.spec.mother)
    return services
