#!/usr/bin/env python3
"""Identity benchmark: channel lookup from shared memory vs an asyncpg point query, the
ILK_PROVISION round trip through a real router and SY.identity, and replication to a replica
SY.identity on the same router (full sync of the database, then the lag from a provision's
reply to the channel being visible in the replica's region).  Prints a Markdown block.

Usage: .venv/bin/python hack/bench-identity.py [--ilks 2000] [--lookups 20000] [--queries 2000] [--provisions 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from fluxbee.dataplane.sdk import NodeConfig, connect
from fluxbee.dataplane.shm import identity as identity_shm
from fluxbee.identity import client as idc
from fluxbee.identity import pg
from fluxbee.identity.model import ProvisionReq
from fluxbee.identity.store import IdentityStore, StoreSettings


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


async def main(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="fbbench", dir="/tmp"))
    os.chmod(base, 0o755)
    cluster = pg.Cluster(base / "pgdata")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with pg.running(cluster, base / "pg.log"):
            store = await IdentityStore.open(StoreSettings(dsn=cluster.dsn(), database="fluxbee_identity_bench"))
            tenant = f"tnt:{store.default_tenant_id}"
            for i in range(args.ilks):
                await store.provision(ProvisionReq(ich_id=f"ich:{uuid.uuid4()}", channel_type="whatsapp",
                                                   address=f"+3460{i:07d}"))
            hive = f"bench{os.getpid()}"
            writer = identity_shm.IdentityRegionWriter(hive, capacity=identity_shm.Capacity.for_ilks(args.ilks * 2))
            snap = await store.snapshot()
            with writer.batch():
                for ch in snap.channels:
                    writer.put_channel(ch.channel_type, ch.address, ch.tenant_id, ilk_id=ch.ilk_id, ich_id=ch.ich_id)
            reader = identity_shm.IdentityRegionReader(hive)
            keys = [f"+3460{i:07d}" for i in range(args.ilks)]
            shm_ns: list[float] = []
            for n in range(args.lookups):
                k = keys[n % len(keys)]
                t0 = time.perf_counter_ns()
                hit = reader.lookup_channel("whatsapp", k, tenant)
                shm_ns.append(time.perf_counter_ns() - t0)
                assert hit is not None
            pg_ns: list[float] = []
            async with store.pool.acquire() as conn:
                stmt = await conn.prepare("SELECT ilk_id FROM identity_ichs WHERE channel_type = $1 AND address = $2 "
                                          "AND tenant_id = $3")
                tid = uuid.UUID(tenant[4:])
                for n in range(args.queries):
                    k = keys[n % len(keys)]
                    t0 = time.perf_counter_ns()
                    v = await stmt.fetchval("whatsapp", k, tid)
                    pg_ns.append(time.perf_counter_ns() - t0)
                    assert v is not None
            reader.close()
            writer.close()
            await store.close()

            run_dir = base / "run"
            run_dir.mkdir()
            py = [sys.executable, "-m", "fluxbee"]
            logf = open(base / "procs.log", "ab")  # noqa: SIM115
            procs.append(subprocess.Popen([*py, "router", "--hive-id", hive, "--run-dir", str(run_dir)],
                                          stdout=logf, stderr=logf))
            while not list((run_dir / "routers").glob("*.sock")) if (run_dir / "routers").exists() else True:
                await asyncio.sleep(0.05)
            procs.append(subprocess.Popen([*py, "identity", "serve", "--hive-id", hive, "--run-dir", str(run_dir),
                                           "--db-url", cluster.dsn(), "--database", "fluxbee_identity_bench"],
                                          stdout=logf, stderr=logf))
            io, _ = await connect(NodeConfig(name="IO.bench", run_dir=run_dir))
            for _ in range(200):
                try:
                    await idc.identity_metrics(io, target=f"SY.identity@{hive}")
                    break
                except idc.IdentityCallError:
                    await asyncio.sleep(0.1)
            replica_hive = f"{hive}r"
            t_spawn = time.perf_counter()
            procs.append(subprocess.Popen([*py, "identity", "serve", "--hive-id", hive, "--run-dir", str(run_dir),
                                           "--primary", f"SY.identity@{hive}", "--node-name", "SY.identity.replica",
                                           "--region-hive", replica_hive, "--max-ilks", str(args.ilks * 2)],
                                          stdout=logf, stderr=logf))
            replica: identity_shm.IdentityRegionReader | None = None
            while True:
                if time.perf_counter() - t_spawn > 60:
                    raise RuntimeError("the replica did not complete its full sync within 60 s")
                try:
                    replica = replica or identity_shm.IdentityRegionReader(replica_hive, run_dir=run_dir)
                    if replica.header().chan_count >= args.ilks:
                        break
                except identity_shm.IdentityShmError:
                    pass
                await asyncio.sleep(0.005)
            full_sync_s = time.perf_counter() - t_spawn
            rt_ns: list[float] = []
            lag_ns: list[float] = []
            for i in range(args.provisions):
                t0 = time.perf_counter_ns()
                made = await idc.provision_ilk(io, "sms", f"+1555{i:07d}", target=f"SY.identity@{hive}")
                t1 = time.perf_counter_ns()
                rt_ns.append(t1 - t0)
                while (hit := replica.lookup_channel("sms", f"+1555{i:07d}", tenant)) is None:
                    if time.perf_counter_ns() - t1 > 5e9:
                        raise RuntimeError("a provision did not reach the replica within 5 s")
                    await asyncio.sleep(0)
                lag_ns.append(time.perf_counter_ns() - t1)
                assert hit.ilk_id == made["ilk_id"]
            replica.close()
            await io.close()
            for p in procs:
                p.terminate()
                p.wait(10)
            logf.close()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        shutil.rmtree(base, ignore_errors=True)

    s50, s99 = pct(shm_ns, 0.5) / 1000, pct(shm_ns, 0.99) / 1000
    q50, q99 = pct(pg_ns, 0.5) / 1000, pct(pg_ns, 0.99) / 1000
    r50, r99 = pct(rt_ns, 0.5) / 1000, pct(rt_ns, 0.99) / 1000
    l50, l99 = pct(lag_ns, 0.5) / 1000, pct(lag_ns, 0.99) / 1000
    print(f"""
## Identity

`hack/bench-identity.py` ({args.ilks} channels, {args.lookups} shm lookups, {args.queries} PG queries,
{args.provisions} provisions; one run, shared 2-core machine, {time.strftime('%Y-%m-%d')})

| measurement | p50 | p99 |
|---|---|---|
| channel -> ILK from the identity region (shared memory, seqlock) | {s50:.2f} µs | {s99:.2f} µs |
| same lookup as an asyncpg prepared point query (Unix socket, embedded PostgreSQL 18) | {q50:.1f} µs | {q99:.1f} µs |
| ILK_PROVISION round trip (IO -> router -> SY.identity -> commit -> region -> reply) | {r50:.0f} µs | {r99:.0f} µs |
| replication lag: provision reply received -> channel visible in the replica's region | {l50:.0f} µs | {l99:.0f} µs |

Replica full sync of {args.ilks} ILKs/channels, from spawning the replica process (interpreter start
included) to all channels in its region: {full_sync_s:.2f} s.

Shared memory is {q50 / s50:.0f}x faster than PostgreSQL at p50 (mean of samples: {statistics.mean(shm_ns)/1000:.2f} µs
vs {statistics.mean(pg_ns)/1000:.1f} µs).
""")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--ilks", type=int, default=2000)
    ap.add_argument("--lookups", type=int, default=20000)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--provisions", type=int, default=300)
    asyncio.run(main(ap.parse_args()))
