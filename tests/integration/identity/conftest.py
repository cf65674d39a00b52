"""Identity fixtures: one embedded PostgreSQL per session, one database per test, SY.identity as a process."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from hive_harness import RouterProc, fluxbee_argv, stop_process, wait_until

from fluxbee.dataplane.shm import identity as identity_shm
from fluxbee.identity import pg


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[pg.Cluster]:
    # PostgreSQL runs as an unprivileged account when we are root: its dir must be enterable.
    base = Path(tempfile.mkdtemp(prefix="fbpg", dir="/tmp"))
    os.chmod(base, 0o755)
    cluster = pg.Cluster(base / "data")
    with pg.running(cluster, base / "postgres.log"):
        yield cluster
    shutil.rmtree(base, ignore_errors=True)


@dataclass
class Db:
    dsn: str
    database: str

    async def connect(self) -> asyncpg.Connection:
        from fluxbee.identity.store import with_database

        return await asyncpg.connect(with_database(self.dsn, self.database))


@pytest.fixture
async def identity_db(pg_cluster: pg.Cluster) -> AsyncIterator[Db]:
    name = f"fbid_{uuid.uuid4().hex[:12]}"
    yield Db(pg_cluster.dsn(), name)
    conn = await asyncpg.connect(pg_cluster.dsn())
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


class IdentityProc:
    """``fluxbee identity serve`` in a child process: the primary (with ``db``) or a replica (``primary=NAME``,
    writing the region of ``region_hive``)."""

    def __init__(self, run_dir: Path, db: Db | None, hive_id: str = "t", *, primary: str | None = None,
                 node_name: str = "SY.identity", region_hive: str | None = None, extra: tuple[str, ...] = ()) -> None:
        self.run_dir = run_dir
        self.db = db
        self.hive_id = hive_id
        self.region_hive = region_hive or hive_id
        self.node_name = node_name
        self.primary = primary
        self.extra = extra
        self.log_path = run_dir / f"identity-{node_name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def argv(self) -> list[str]:
        args = ["identity", "serve", "--hive-id", self.hive_id, "--run-dir", str(self.run_dir),
                "--node-name", self.node_name, "--region-hive", self.region_hive, *self.extra]
        if self.db is not None:
            args += ["--db-url", self.db.dsn, "--database", self.db.database]
        if self.primary is not None:
            args += ["--primary", self.primary]
        return fluxbee_argv(*args)

    def start(self) -> None:
        before = self.generation()
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(self.argv(), stdout=logf, stderr=logf)
        wait_until(lambda: self._ready(before), 20, f"{self.node_name} to publish its region")

    def log(self) -> str:
        return self.log_path.read_text()[-4000:]

    def generation(self) -> int:
        try:
            with identity_shm.IdentityRegionReader(self.region_hive, run_dir=self.run_dir) as r:
                return r.header().generation
        except identity_shm.IdentityShmError:
            return 0

    def _ready(self, before: int) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"SY.identity exited {self.proc.returncode}: {self.log_path.read_text()[-3000:]}")
        try:
            with identity_shm.IdentityRegionReader(self.region_hive, run_dir=self.run_dir) as r:
                h = r.header()
                return h.owner_pid == self.pid and h.data_version >= 1 and not h.is_stale()
        except identity_shm.IdentityShmError:
            return False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> int:
        return stop_process(self.proc, self.node_name)


@pytest.fixture
def identity(run_dir: Path, router: RouterProc, identity_db: Db) -> Iterator[IdentityProc]:
    proc = IdentityProc(run_dir, identity_db)
    yield proc
    assert proc.stop() == 0, proc.log_path.read_text()[-3000:]
    assert not Path("/dev/shm" + identity_shm.region_name("t", run_dir)).exists(), "identity region left behind"
