"""System services (``SY.*``) a local hive runs besides the router and the declared nodes.

Each service is an ordinary process described by a :class:`ProcessSpec`; the
supervisor starts them after the router and restarts them like any node.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fluxbee.dataplane import env
from fluxbee.models import Hive
from fluxbee.supervisor.credentials import CREDENTIAL_FILE_ENV, credential_path
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
    from fluxbee.identity.supervised import identity_services

    if env.UP_IDENTITY.read():
        services += identity_services(hive_id, run_dir, env.IDENTITY_DB_URL.read(),
                                      primary_hive=hive.spec.mother)
    if env.UP_POLICY.read():
        services.append(policy_service(hive_id, run_dir, hive.spec.mother))
    return services


def policy_service(hive_id: str, run_dir: Path, mother_hive: str | None) -> ProcessSpec:
    """SY.policy: the hive's routing-policy lifecycle and the writer of its policy region (state under
    ``run_dir/policy``).  Claimed like every SY.* name; on a worker it also takes changes from
    ``SY.admin@<motherHive>``."""
    argv = [sys.executable, "-m", "fluxbee", "policy", "serve", "--hive-id", hive_id, "--run-dir", str(run_dir)]
    if mother_hive:
        argv += ["--mother-hive", mother_hive]
    return ProcessSpec(key=f"SY.policy@{hive_id}#0", argv=tuple(argv),
                       env=((env.RUN_DIR.name, str(run_dir)),
                            (CREDENTIAL_FILE_ENV, str(credential_path(run_dir, "SY.policy")))),
                       node_name=f"SY.policy@{hive_id}", digest=f"mother:{mother_hive or ''}")
