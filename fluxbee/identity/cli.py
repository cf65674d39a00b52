"""``fluxbee identity ...``: run SY.identity, its PostgreSQL, a graduated agent; look up and call.

Settings come from flags, then the environment (read here, at the edge):
``FLUXBEE_IDENTITY_DB_URL`` (a PostgreSQL server URL; when unset, the embedded
server of ``--pg-data`` is used).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from fluxbee.dataplane import env
from fluxbee.dataplane.names import FRONTDESK_NODE, IDENTITY_NODE, hive_id_argument

DB_URL_ENV = env.IDENTITY_DB_URL.name


def _run_dir(value: str | None) -> Path:
    from fluxbee.dataplane.sdk import default_run_dir

    return Path(value) if value else default_run_dir()


def _run(main: Any) -> Any:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


async def _until_signal(fn: Any) -> Any:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return await fn(stop)


def default_pg_data(run_dir: Path) -> Path:
    return run_dir / "identity" / "pgdata"


def cmd_serve(args: argparse.Namespace) -> int:
    from fluxbee.extras import exit_unless_installed
    from fluxbee.identity.pg import Cluster

    run_dir = _run_dir(args.run_dir)
    primary = args.primary or (f"{IDENTITY_NODE}@{args.primary_hive}" if args.primary_hive else None)
    if primary is not None and (args.db_url or args.pg_data):
        print("fluxbee identity serve: a replica (--primary/--primary-hive) has no database; drop --db-url/--pg-data",
              file=sys.stderr)
        return 2
    dsn: str = "" if primary is not None else args.db_url or env.IDENTITY_DB_URL.read() or ""
    if primary is None and not dsn:  # the embedded server: only then is the PostgreSQL wheel needed
        exit_unless_installed("postgres", "identity serve (no --db-url: the embedded PostgreSQL)")
        dsn = Cluster(Path(args.pg_data) if args.pg_data else default_pg_data(run_dir)).dsn()
    from fluxbee.identity.service import IdentityService, IdentitySettings

    settings = IdentitySettings(
        hive_id=args.hive_id, run_dir=run_dir, dsn=dsn, database=args.database, node_name=args.node_name,
        frontdesk=args.frontdesk, default_tenant=args.default_tenant, max_ilks=args.max_ilks,
        key_path=Path(args.key) if args.key else None, merge_alias_ttl_s=args.merge_alias_ttl,
        primary=primary, region_hive=args.region_hive, sync_heartbeat_s=args.sync_heartbeat,
        sync_timeout_s=args.sync_timeout, jsr_region=not args.no_jsr_region)
    service = IdentityService(settings)
    _run(_until_signal(service.run))
    return 0


def cmd_postgres(args: argparse.Namespace) -> int:
    from fluxbee.identity.pg import serve_foreground

    data = Path(args.data) if args.data else default_pg_data(_run_dir(args.run_dir))
    return serve_foreground(data, args.port)


def cmd_agent(args: argparse.Namespace) -> int:
    from fluxbee.identity.agent import AgentSettings, serve

    run_dir = _run_dir(args.run_dir)
    key = Path(args.public_key) if args.public_key else run_dir / "identity" / "signing.key.pub"
    settings = AgentSettings(name=args.name, run_dir=run_dir, ilk_id=args.ilk, public_key_path=key)
    code = _run(_until_signal(lambda stop: serve(settings, stop)))
    if code:
        print(f"fluxbee identity agent {args.name}: refused to run (degree verification failed; see the log)",
              file=sys.stderr)
    return int(code)


def cmd_lookup(args: argparse.Namespace) -> int:
    from fluxbee.dataplane.shm import identity as identity_shm

    try:
        reader = identity_shm.IdentityRegionReader(args.hive_id, run_dir=_run_dir(args.run_dir))
    except identity_shm.IdentityShmError as err:
        print(f"fluxbee identity lookup: {err}", file=sys.stderr)
        return 2
    with reader:
        out: dict[str, Any] = {}
        if args.channel:
            ctype, _, addr = args.channel.partition(":")
            hit = reader.lookup_channel(ctype, addr, args.tenant or "")
            out["channel"] = None if hit is None else {"ilk_id": hit.ilk_id, "ich_id": hit.ich_id}
        if args.ilk:
            info = reader.resolve(args.ilk)
            out["canonical"] = reader.canonical(args.ilk)
            out["ilk"] = None if info is None else {
                "ilk_id": info.ilk_id, "tenant_id": info.tenant_id, "ilk_type": info.ilk_type,
                "registration_status": info.registration_status, "handler_node": info.handler_node}
        if not out:
            h = reader.header()
            out = {"hive_id": h.hive_id, "generation": h.generation, "data_version": h.data_version,
                   "ilks": h.ilk_count, "aliases": h.alias_count, "channels": h.chan_count,
                   "stale": h.is_stale()}
    print(json.dumps(out, indent=2))
    return 0


def cmd_call(args: argparse.Namespace) -> int:
    from fluxbee.dataplane.sdk import NodeConfig, connect
    from fluxbee.identity.client import IdentityCallError, identity_call

    payload = json.loads(args.payload) if args.payload else {}

    async def main() -> int:
        sender, _ = await connect(NodeConfig(name=args.as_name, run_dir=_run_dir(args.run_dir)))
        try:
            body = await identity_call(sender, args.action, payload, timeout=args.timeout)
        except IdentityCallError as err:
            print(json.dumps(err.payload or {"error_code": err.code, "message": err.detail}, indent=2))
            return 1
        finally:
            await sender.close()
        print(json.dumps(body, indent=2))
        return 0

    return int(_run(main()))


def add_parser(sub: Any) -> None:
    """Register ``fluxbee identity`` on the top-level subparsers."""
    p = sub.add_parser("identity", help="SY.identity, its PostgreSQL, graduated agents, lookups")
    isub = p.add_subparsers(dest="identity_command", required=True)

    s = isub.add_parser("serve", help="run SY.identity")
    s.add_argument("--hive-id", required=True, type=hive_id_argument)
    s.add_argument("--run-dir")
    s.add_argument("--db-url", help=f"PostgreSQL server URL (default ${DB_URL_ENV}, else the embedded server)")
    s.add_argument("--pg-data", help="embedded server data dir (default RUN_DIR/identity/pgdata)")
    s.add_argument("--database", default="fluxbee_identity")
    s.add_argument("--frontdesk", default=FRONTDESK_NODE, help="identity front-desk node name")
    s.add_argument("--default-tenant", default="fluxbee")
    s.add_argument("--max-ilks", type=int, default=8192)
    s.add_argument("--key", help="Ed25519 signing key (default RUN_DIR/identity/signing.key)")
    s.add_argument("--merge-alias-ttl", type=int, default=3600)
    s.add_argument("--node-name", default=IDENTITY_NODE, help=f"L2 base name (default {IDENTITY_NODE})")
    role = s.add_mutually_exclusive_group()
    role.add_argument("--primary", metavar="NAME",
                      help="run as a replica of this primary (L2 name, e.g. SY.identity@motherbee): no database, "
                           "NOT_PRIMARY for writes, region filled by replication")
    role.add_argument("--primary-hive", metavar="HIVE", type=hive_id_argument,
                      help=f"shorthand for --primary {IDENTITY_NODE}@HIVE")
    s.add_argument("--region-hive", type=hive_id_argument, help="write this hive's identity region (default --hive-id)")
    s.add_argument("--no-jsr-region", action="store_true",
                   help="do not also publish /jsr-identity-<hive> in the original layout (for original-SDK nodes)")
    s.add_argument("--sync-heartbeat", type=float, default=1.0,
                   help="primary: seconds between heartbeats to replicas (default 1)")
    s.add_argument("--sync-timeout", type=float, default=5.0,
                   help="replica: seconds of silence from the primary before a full resync (default 5)")
    s.set_defaults(func=cmd_serve, extra="identity")

    pg = isub.add_parser("postgres", help="run the embedded PostgreSQL in the foreground")
    pg.add_argument("--run-dir")
    pg.add_argument("--data", help="data dir (default RUN_DIR/identity/pgdata; kept between runs)")
    pg.add_argument("--port", type=int, default=5432, help="port number of the Unix socket (no TCP)")
    pg.set_defaults(func=cmd_postgres, extra="postgres")

    a = isub.add_parser("agent", help="run a graduated agent node (verifies its degree first)")
    a.add_argument("--name", required=True)
    a.add_argument("--ilk", required=True)
    a.add_argument("--public-key", help="identity public key (default RUN_DIR/identity/signing.key.pub)")
    a.add_argument("--run-dir")
    a.set_defaults(func=cmd_agent, extra="identity")

    lk = isub.add_parser("lookup", help="look up the identity region (no round trip)")
    lk.add_argument("--hive-id", required=True, type=hive_id_argument)
    lk.add_argument("--run-dir", help="the hive's run dir (default: per-user or /var/run/fluxbee)")
    lk.add_argument("--channel", help="TYPE:ADDRESS")
    lk.add_argument("--tenant", help="tnt:<uuid>")
    lk.add_argument("--ilk", help="ilk:<uuid> to canonicalise and show")
    lk.set_defaults(func=cmd_lookup)

    c = isub.add_parser("call", help="send an identity request and print the reply")
    c.add_argument("action", help="e.g. IDENTITY_METRICS, ILK_GET")
    c.add_argument("--payload", help="JSON payload")
    c.add_argument("--as", dest="as_name", default="WF.cli",
                   help="sender name (default WF.cli, an undeclared name: enough for IDENTITY_METRICS). Admin-only "
                        "actions go through the admin HTTP API (e.g. GET /hives/HIVE/identity/ilks), which has its "
                        "own token; SY.* names are claimed and need their credential ($FLUXBEE_NODE_CREDENTIAL_FILE)")
    c.add_argument("--timeout", type=float, default=5.0)
    c.add_argument("--run-dir")
    c.set_defaults(func=cmd_call)
