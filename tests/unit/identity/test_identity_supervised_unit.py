"""What ``fluxbee up`` runs for identity: PostgreSQL + primary, or a replica on a worker hive."""

from __future__ import annotations

from pathlib import Path

from fluxbee.identity.cli import default_pg_data
from fluxbee.identity.supervised import identity_services


def test_a_mother_hive_runs_postgresql_and_the_primary(tmp_path: Path) -> None:
    specs = identity_services("mb", tmp_path, None)
    assert [s.key for s in specs] == ["identity-postgres", "SY.identity@mb#0"]
    assert str(default_pg_data(tmp_path)) in specs[0].argv
    assert "--db-url" in specs[1].argv and "--primary-hive" not in specs[1].argv


def test_a_configured_database_url_skips_the_embedded_server(tmp_path: Path) -> None:
    specs = identity_services("mb", tmp_path, "postgresql://db.example/x")
    assert [s.key for s in specs] == ["SY.identity@mb#0"]


def test_a_worker_hive_runs_only_a_replica_of_the_primary_hive(tmp_path: Path) -> None:
    (spec,) = identity_services("w1", tmp_path, None, primary_hive="motherbee")
    argv = list(spec.argv)
    assert argv[argv.index("--primary-hive") + 1] == "motherbee"
    assert "--db-url" not in argv and spec.node_name == "SY.identity@w1"
