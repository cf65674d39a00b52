"""The ``fluxbee`` command: router, nodes, local hive, send/status, benchmark, operator.

The event loop is chosen here (uvloop) and nowhere else.  Every command imports what it runs
inside its own function, so that the base install (``pip install fluxbee``, no extras) runs
``router``, ``node``, ``send``, ``status`` and ``ctl``; a command that needs an extra declares it
(``set_defaults(extra=…)``) and :func:`require_extra` names it when it is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import ssl
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

log = logging.getLogger("fluxbee")


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _addr(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host or "127.0.0.1", int(port)


def _address_text(value: str) -> str:
    """``HOST:PORT`` checked, kept as text (link flags)."""
    from fluxbee.dataplane.link.settings import format_address, parse_address

    try:
        return format_address(parse_address(value))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _link_addr(value: str) -> tuple[str, int]:
    from fluxbee.dataplane.link.settings import parse_address

    try:
        return parse_address(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {value!r}")
    return int(value)


def _group(value: str) -> int:
    """A group name or a numeric gid (``--socket-group``)."""
    import grp

    if value.isdigit():
        return int(value)
    try:
        return grp.getgrnam(value).gr_gid
    except KeyError:
        raise argparse.ArgumentTypeError(f"no group named {value!r} (give a group name or a numeric gid)") from None


def _non_negative(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {value!r}")
    return int(value)


STATUS_NODE = "WF.cli.status"
"""``fluxbee status`` asks the router as this undeclared name (ROUTER_STATUS_GET needs no privilege)."""


def _run_dir(value: str | None) -> Path:
    from fluxbee.dataplane.sdk import default_run_dir

    return Path(value) if value else default_run_dir()


def _busy_poll_us(value: str) -> int:
    if not value.isdigit() or int(value) > 10_000:
        raise argparse.ArgumentTypeError(f"expected microseconds from 0 to 10000, got {value!r}")
    return int(value)


def _hive_id(value: str) -> str:
    """The hive-id rule every layer applies (:mod:`fluxbee.dataplane.names`)."""
    from fluxbee.dataplane.names import hive_id_argument

    return hive_id_argument(value)


def require_extra(extra: str | None, command: str) -> None:
    """Stop with a message naming the extra to install when ``command`` needs one that is missing."""
    if extra is None:
        # A base-install command (router, node, send, status) has nothing to check; the check reads the
        # installed metadata (importlib.metadata, about 1.5 MB of a router's RSS), so it is not loaded.
        return
    from fluxbee.extras import exit_unless_installed

    exit_unless_installed(extra, command)


def cmd_router(args: argparse.Namespace) -> int:
    if args.metrics_addr is not None:  # the probes are served by aiohttp
        require_extra("metrics", "router --metrics-addr")
    from fluxbee.dataplane.router.server import RouterError, RouterSettings, run_router

    settings = RouterSettings(
        hive_id=args.hive_id,
        run_dir=_run_dir(args.run_dir),
        router_name=args.router_name,
        config_path=Path(args.config) if args.config else None,
        metrics_addr=args.metrics_addr,
        max_nodes=args.max_nodes,
        max_buffer=args.max_buffer,
        slow_consumer_timeout_s=args.slow_consumer_timeout,
        identity_frontdesk=args.identity_frontdesk,
        scheduling=args.scheduling,
        busy_poll_us=args.busy_poll_us,
        claims_dir=Path(args.claims_dir) if args.claims_dir else None,
        policy_dir=Path(args.policy_dir) if args.policy_dir else None,
        socket_group=args.socket_group,
        claimed_reserve=args.claimed_reserve,
        max_unclaimed_per_uid=args.max_unclaimed_per_uid,
        max_unclaimed_per_pid=args.max_unclaimed_per_pid,
        max_pending_per_uid=args.max_pending_per_uid,
        takeover_window_s=args.takeover_window,
        takeover_limit=args.takeover_limit,
        wan_listen=args.wan_listen,
        uplinks=tuple(args.uplink or ()),
        authorized_hives=frozenset(args.authorized_hive or ()),
        wan_cert=Path(args.wan_cert) if args.wan_cert else None,
        wan_key=Path(args.wan_key) if args.wan_key else None,
        wan_ca_cert=Path(args.wan_ca_cert) if args.wan_ca_cert else None,
        mesh_listen=args.mesh_listen,
        mesh_peers=tuple(args.mesh_peer or ()),
        mesh_dns=args.mesh_dns,
        link_insecure_dev=args.link_insecure_dev,
        link_hello_interval_s=args.link_hello_interval,
        link_dead_interval_s=args.link_dead_interval,
    )
    from fluxbee.dataplane.link.settings import LinkConfigError

    try:
        settings.links.check()
    except LinkConfigError as err:
        print(f"fluxbee router: {err}", file=sys.stderr)
        return 2
    if settings.claimed_reserve >= settings.max_nodes:
        print(f"fluxbee router: --claimed-reserve ({settings.claimed_reserve}) must be below --max-nodes "
              f"({settings.max_nodes})", file=sys.stderr)
        return 2
    _raise_fd_limit()
    try:
        _run(run_router(settings))
    except RouterError as err:
        print(f"fluxbee router: {err}", file=sys.stderr)
        return 2
    return 0


def cmd_node(args: argparse.Namespace) -> int:
    import importlib

    from fluxbee.dataplane.nodes.common import NodeConfigError, node_config, run_node
    from fluxbee.dataplane.sdk import SdkError

    module = importlib.import_module(f"fluxbee.dataplane.nodes.{args.kind}")
    default = {"echo": "WF.echo", "listener": "WF.listener"}[args.kind]
    try:
        config, _ = node_config(default, args.name, args.run_dir, args.persistent)
    except NodeConfigError as err:
        print(f"fluxbee node: {err}", file=sys.stderr)
        return 2

    async def main(stop: asyncio.Event) -> None:
        await module.serve(config, stop)

    try:
        return run_node(main)
    except SdkError as err:
        print(f"fluxbee node {args.kind}: {err}", file=sys.stderr)
        return 1


def cmd_send(args: argparse.Namespace) -> int:
    from fluxbee.dataplane import wire
    from fluxbee.dataplane.sdk import NodeConfig, SdkError, UnreachableError, connect

    try:
        payload = json.loads(args.payload) if args.payload is not None else None
    except json.JSONDecodeError as err:
        print(f"fluxbee send: --payload is not valid JSON: {err}", file=sys.stderr)
        return 2
    meta: wire.Meta | None = None
    if args.meta is not None:
        import msgspec

        try:
            meta = msgspec.json.decode(args.meta.encode(), type=wire.Meta)
        except msgspec.DecodeError as err:
            print(f"fluxbee send: --meta must be a JSON object of meta fields (context, action, target, src_ilk, "
                  f"…): {err}", file=sys.stderr)
            return 2

    async def main() -> int:
        config = NodeConfig(name=args.as_name, run_dir=_run_dir(args.run_dir), connect_timeout=args.timeout,
                            reconnect=False)
        sender, _ = await connect(config)
        try:
            if not args.wait:
                trace = await sender.send(args.name, payload, msg_type=args.msg_type, meta=meta)
                print(json.dumps({"status": "sent", "trace_id": trace, "dst": args.name}))
                return 0
            reply = await sender.request(args.name, payload, msg_type=args.msg_type, meta=meta,
                                         timeout=args.timeout)
            out = {"trace_id": reply.routing.trace_id, "from": reply.routing.src_l2_name,
                   "meta": reply.meta, "payload": reply.payload}
            print(wire.encode(out).decode())
            return 0
        except UnreachableError as err:
            print(f"fluxbee send: {err}", file=sys.stderr)
            return 3
        finally:
            await sender.close()

    try:
        return int(_run(main()))
    except SdkError as err:
        print(f"fluxbee send: {err}", file=sys.stderr)
        return 1


def cmd_status(args: argparse.Namespace) -> int:
    from fluxbee.dataplane.sdk import NodeConfig, SdkError, connect

    async def main() -> dict[str, Any]:
        sender, _ = await connect(NodeConfig(name=STATUS_NODE, run_dir=_run_dir(args.run_dir),
                                             connect_timeout=5.0, reconnect=False))
        try:
            return await sender.router_status()
        finally:
            await sender.close()

    try:
        status = _run(main())
    except SdkError as err:
        print(f"fluxbee status: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(format_status(status))
    return 0


def format_status(status: dict[str, Any]) -> str:
    router = status["router"]
    lines = [
        f"router  {router['name']}  uuid {router['uuid']}  pid {router['pid']}  config v{status['config_version']}",
        f"socket  {router['socket']}  fast path {router.get('fast_path', '?')}  "
        f"scheduling {router.get('scheduling', '?')}  allocator {router.get('allocator', '?')}",
        "",
        f"{'NODE':40} {'UUID':36} {'VPN':>4}  {'PID':>7} {'UID':>6}  TRUST",
    ]
    nodes = [n for n in status["nodes"] if not n["name"].startswith(STATUS_NODE + "@")]
    for node in sorted(nodes, key=lambda n: n["name"]):
        peer = node.get("peer") or {}
        trust = "claimed" if node.get("claimed") else "open"
        if node.get("replacements"):
            trust += f", replaced {node['replacements']}x"
        if node.get("flapping"):
            trust += f", FLAPPING ({node.get('takeovers_refused', 0)} takeovers refused)"
        lines.append(f"{node['name']:40} {node['uuid']:36} {node['vpn_id']:>4}  {peer.get('pid', '?'):>7} "
                     f"{peer.get('uid', '?'):>6}  {trust}")
    if not nodes:
        lines.append("(no nodes)")
    lines.append("")
    lines.append(f"routes: {len(status['routes'])}   vpn rules: {len(status['vpns'])}")
    for route in status["routes"]:
        hop = f" -> {route['next_hop_hive']}" if route.get("next_hop_hive") else ""
        lines.append(f"  {route['action']:8} {route['match_kind']:7} {route['prefix']}{hop}")
    for vpn in status["vpns"]:
        lines.append(f"  VPN {vpn['vpn_id']:<4} {vpn['match_kind']:7} {vpn['pattern']}")
    for role in ("wan", "mesh"):
        section = status.get(role) or {}
        if not section.get("listen") and not section.get("links"):
            continue
        lines.append("")
        lines.append(f"{role} links (listen {section.get('listen') or '-'}):")
        for link in section.get("links", []):
            rtt = "-" if link.get("rtt_ms") is None else f"{link['rtt_ms']:.1f} ms"
            lsa = "-" if link.get("last_lsa_seq") is None else f"#{link['last_lsa_seq']}"
            why = f"  ({link['reason']})" if link.get("state") != "up" and link.get("reason") else ""
            lines.append(f"  {link.get('hive_id') or '?':16} {link['direction']:3} {link['state']:10} "
                         f"{link['address']:24} rtt {rtt:>9}  lsa {lsa}{why}")
        for route in section.get("routes", []):
            lines.append(f"  route to {route['hive']}: {' > '.join(route['path'])}")
        for reason, count in sorted((section.get("drops") or {}).items()):
            lines.append(f"  dropped {reason}={count}")
    counters = status["counters"]
    lines.append("")
    lines.append("counters: " + "  ".join(
        f"{k}={v}" for k, v in counters.items() if isinstance(v, int) and v) or "counters: (none)")
    for key, value in counters.items():
        if isinstance(value, dict) and value:
            lines.append(f"  {key}: " + ", ".join(f"{r}={n}" for r, n in sorted(value.items())))
    return "\n".join(lines)


def _admin_services(args: argparse.Namespace) -> list[Any]:
    """The admin API for ``fluxbee up`` (``--admin-listen off`` disables it)."""
    if args.admin_listen == "off":
        return []
    from fluxbee.admin.http import AdminSettings, check_settings
    from fluxbee.admin.main_supervisor import local_admin
    from fluxbee.dataplane.env import SettingsError

    host, port = _addr(args.admin_listen) if args.admin_listen.rpartition(":")[2] != "0" else (
        args.admin_listen.rpartition(":")[0] or "127.0.0.1", 0)
    try:
        settings = AdminSettings.from_env(token_file=args.admin_token_file, file_flag="--admin-token-file",
                                          host=host, port=port)
        check_settings(settings)
    except SettingsError as err:
        print(f"fluxbee up: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    return [local_admin(settings)]


def cmd_admin(args: argparse.Namespace) -> int:
    """``fluxbee admin --backend kubernetes``: the admin API of one hive, as the pods of its admin Deployment."""
    import signal

    from fluxbee.admin.http import AdminSettings, check_settings
    from fluxbee.admin.main_kubernetes import ClusterSettings, run_cluster_admin
    from fluxbee.dataplane import env
    from fluxbee.dataplane.env import SettingsError
    from fluxbee.kube import KubeConfig, KubeConfigError

    host, port = args.listen
    try:
        settings = AdminSettings.from_env(token_file=args.token_file, file_flag="--token-file", host=host, port=port)
        check_settings(settings)
        hive = args.hive or env.HIVE_RESOURCE.read()
    except SettingsError as err:
        print(f"fluxbee admin: {err}", file=sys.stderr)
        return 2
    if not hive:
        print("fluxbee admin: which Hive? give --hive NAME or set FLUXBEE_HIVE_RESOURCE", file=sys.stderr)
        return 2
    run_dir = _run_dir(args.run_dir)
    try:
        access = KubeConfig.from_environment(args.kube_api)
        access.ssl_context()  # bad CA/certificate files are reported here, not as a traceback
    except (KubeConfigError, ssl.SSLError, OSError) as err:
        print(f"fluxbee admin: no Kubernetes API to log in to: {err}", file=sys.stderr)
        return 2
    namespace = args.namespace or os.environ.get("POD_NAMESPACE") or access.namespace or "default"
    cluster = ClusterSettings(namespace=namespace, hive_resource=hive, run_dir=run_dir, kube=access)
    if os.environ.get("POD_NAME"):  # the admin Deployment's pod: its name tells the replicas apart
        cluster = dataclasses.replace(cluster, instance=os.environ["POD_NAME"])

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await run_cluster_admin(settings, cluster, stop)

    return int(_run(main()))


def cmd_up(args: argparse.Namespace) -> int:
    from fluxbee.supervisor.hive import LocalHiveError, run_local_hive
    from fluxbee.supervisor.wan import WanOptions

    _raise_fd_limit()
    services = _admin_services(args)
    wan = WanOptions(listen=args.wan_listen, ca_dir=Path(args.wan_ca) if args.wan_ca else None,
                     uplinks=tuple(args.uplink or ()), authorized_hives=tuple(args.authorized_hive or ()),
                     cert=Path(args.wan_cert) if args.wan_cert else None,
                     key=Path(args.wan_key) if args.wan_key else None,
                     hello_interval_s=args.link_hello_interval, dead_interval_s=args.link_dead_interval)
    try:
        return int(_run(run_local_hive(args.file, hive_id=args.hive_id, run_dir=args.run_dir, services=services,
                                       wan=wan)))
    except LocalHiveError as err:
        print(f"fluxbee up: {err}", file=sys.stderr)
        return 2


def cmd_bench(args: argparse.Namespace) -> int:
    from fluxbee.bench.run import run_bench

    _raise_fd_limit()
    return run_bench(quick=args.quick, as_json=args.json, round_trips=args.round_trips, messages=args.messages,
                     idle_nodes=args.idle_nodes)


def cmd_operator(args: argparse.Namespace) -> int:
    from fluxbee.operator.main import main as operator_main

    return int(operator_main(args.rest))


def _raise_fd_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def build_parser() -> argparse.ArgumentParser:
    from fluxbee.dataplane import names

    p = argparse.ArgumentParser(prog="fluxbee", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("router", help="run a hive router")
    r.add_argument("--hive-id", required=True, type=_hive_id)
    r.add_argument("--run-dir", help="socket/state root (default: per-user or /var/run/fluxbee)")
    r.add_argument("--config", help="hive config file (routes, VPNs), reloaded when it changes")
    r.add_argument("--router-name", default=names.DEFAULT_ROUTER_NAME)
    r.add_argument("--metrics-addr", type=_addr, help="HOST:PORT for /healthz /readyz /metrics /status")
    r.add_argument("--max-nodes", type=int, default=4096, help="node table capacity")
    r.add_argument("--max-buffer", type=int, default=1 << 20,
                   help="outbound bytes buffered per connection before frames are refused (default 1 MiB)")
    r.add_argument("--slow-consumer-timeout", type=float, default=10.0,
                   help="seconds a connection may stay congested before it is closed (default 10)")
    r.add_argument("--identity-frontdesk", default=names.FRONTDESK_NODE, metavar="NAME",
                   help="where dst=null messages from temporary ILKs go (L2 name; @HIVE added when absent; "
                        f"default {names.FRONTDESK_NODE})")
    r.add_argument("--busy-poll-us", type=_busy_poll_us, default=0, metavar="US",
                   help="after routing a read, keep polling this many microseconds before sleeping: lower "
                        "latency for CPU (at most half a CPU; default 0, off)")
    r.add_argument("--scheduling", choices=["batch", "inherit"], default="batch",
                   help="CPU scheduling class: batch (default; Linux SCHED_BATCH, no preemption on wake-up: "
                        "faster hand-offs, longer tail when every CPU is saturated) or inherit (keep the "
                        "class the router was started in)")
    t = r.add_argument_group("trust (README: Trust model)")
    t.add_argument("--claims-dir", metavar="DIR",
                   help="claimed node names and their proofs, one JSON file per name (reloaded when it changes); "
                        "without it SY.*/RT.* names cannot register")
    t.add_argument("--policy-dir", metavar="DIR",
                   help="run the routing policy delivered in DIR (files artefact, version, sha256: the hive's "
                        "policy ConfigMap as kubelet mounts it), checked and reloaded when it changes; the "
                        "router then writes the hive's policy region itself (no SY.policy)")
    t.add_argument("--socket-group", type=_group, metavar="NAME|GID",
                   help="group of the socket dir (0750) and socket (0660); default the router's primary group")
    t.add_argument("--claimed-reserve", type=_non_negative, default=256,
                   help="node slots only claimed names may use (default 256)")
    t.add_argument("--max-unclaimed-per-uid", type=_positive, default=2048,
                   help="registered undeclared nodes per peer uid (default 2048)")
    t.add_argument("--max-unclaimed-per-pid", type=_positive, default=1024,
                   help="registered undeclared nodes per peer process (default 1024)")
    t.add_argument("--max-pending-per-uid", type=_positive, default=256,
                   help="connections per peer uid still waiting for their HELLO (default 256)")
    t.add_argument("--takeover-window", type=float, default=30.0, metavar="SECONDS",
                   help="window in which repeated takeovers of one live UUID count as flapping (default 30)")
    t.add_argument("--takeover-limit", type=_non_negative, default=3,
                   help="takeovers of one live UUID allowed in the window before the incumbent keeps it (default 3)")
    lk = r.add_argument_group("links between routers (README: Links)")
    lk.add_argument("--wan-listen", type=_link_addr, metavar="HOST:PORT", help="accept links from other hives here")
    lk.add_argument("--uplink", type=_link_addr, action="append", metavar="HOST:PORT",
                    help="dial another hive's gateway (repeatable)")
    lk.add_argument("--authorized-hive", type=_hive_id, action="append", metavar="ID",
                    help="a hive allowed on WAN links (repeatable; none: any hive with a certificate from the CA)")
    lk.add_argument("--wan-cert", metavar="FILE", help="this hive's certificate (PEM), for WAN and mesh links")
    lk.add_argument("--wan-key", metavar="FILE", help="the key of --wan-cert (PEM)")
    lk.add_argument("--wan-ca-cert", metavar="FILE", help="the hive CA certificate (PEM) peers are checked against")
    lk.add_argument("--mesh-listen", type=_link_addr, metavar="HOST:PORT",
                    help="accept links from the other routers of this hive here")
    lk.add_argument("--mesh-peer", type=_link_addr, action="append", metavar="HOST:PORT",
                    help="another router of this hive (repeatable)")
    lk.add_argument("--mesh-dns", type=_link_addr, metavar="NAME:PORT",
                    help="a name resolved every few seconds; every address but this router's is a mesh peer")
    lk.add_argument("--link-insecure-dev", action="store_true",
                    help="plaintext links, peers believed on their word: development only")
    lk.add_argument("--link-hello-interval", type=float, default=10.0, metavar="SECONDS",
                    help="seconds between keepalives on a link (default 10)")
    lk.add_argument("--link-dead-interval", type=float, default=40.0, metavar="SECONDS",
                    help="a link silent this long is closed (default 40)")
    r.set_defaults(func=cmd_router)

    n = sub.add_parser("node", help="run an example node built on the SDK")
    n.add_argument("kind", choices=["echo", "listener"])
    n.add_argument("--name", help="L2 name (default: from $FLUXBEE_NODE_CONFIG, else WF.<kind>)")
    n.add_argument("--run-dir")
    n.add_argument("--persistent", action="store_true", help="keep the UUID across restarts")
    n.set_defaults(func=cmd_node)

    u = sub.add_parser("up", help="run a local hive from resource documents")
    u.add_argument("-f", "--file", help="hive file (Hive + FluxNodes); default: the bundled one")
    u.add_argument("--hive-id", type=_hive_id, help="override the Hive's id")
    u.add_argument("--run-dir")
    u.add_argument("--admin-listen", default="127.0.0.1:8080",
                   help="HOST:PORT of the admin API (port 0: any free port; 'off': no admin API)")
    u.add_argument("--admin-token-file", help="file holding the admin bearer token (default $FLUXBEE_ADMIN_TOKEN)")
    w = u.add_argument_group("links to other hives (README: Links; the same as the hive file's spec.wan)")
    w.add_argument("--wan-listen", type=_address_text, metavar="HOST:PORT", help="accept links from other hives here")
    w.add_argument("--wan-ca", metavar="DIR", help="the hive CA (`fluxbee wan ca DIR`); with DIR/ca.key the hive's "
                                                    "certificate is issued into the run dir at start")
    w.add_argument("--uplink", action="append", type=_address_text, metavar="HOST:PORT",
                   help="dial this hive's gateway (repeatable)")
    w.add_argument("--authorized-hive", action="append", type=_hive_id, metavar="ID",
                   help="a hive allowed to link (repeatable; none: any hive the CA signed)")
    w.add_argument("--wan-cert", metavar="FILE", help="this hive's certificate (when the CA key is not at hand)")
    w.add_argument("--wan-key", metavar="FILE", help="the key of --wan-cert")
    w.add_argument("--link-hello-interval", type=float, metavar="SECONDS", help="keepalive period (router default 10)")
    w.add_argument("--link-dead-interval", type=float, metavar="SECONDS",
                   help="a link silent this long is closed (router default 40)")
    u.set_defaults(func=cmd_up, extra="local")

    a = sub.add_parser("admin", help="run the admin HTTP API of a hive in a cluster (Kubernetes backend)")
    a.add_argument("--listen", type=_addr, default=("127.0.0.1", 8080),
                   help="HOST:PORT to serve on (default 127.0.0.1:8080; anything but loopback needs a token)")
    a.add_argument("--backend", choices=["kubernetes"], required=True,
                   help="kubernetes: Hive/FluxNode/Runtime resources (the local backend runs inside `fluxbee up`)")
    a.add_argument("--namespace", help="namespace of the Hive (default $POD_NAMESPACE, else the service account's or "
                                         "kubeconfig context's, else 'default')")
    a.add_argument("--hive", help="name of the Hive resource (default $FLUXBEE_HIVE_RESOURCE)")
    a.add_argument("--token-file", help="file holding the bearer token (default $FLUXBEE_ADMIN_TOKEN)")
    a.add_argument("--run-dir", help="the hive's socket directory, to reach its router (default $FLUXBEE_RUN_DIR)")
    a.add_argument("--kube-api", help="API server URL without auth (`kubectl proxy`); default: in-cluster "
                                      "service account ($FLUXBEE_SERVICE_ACCOUNT_DIR), else $KUBECONFIG")
    a.set_defaults(func=cmd_admin, extra="admin")

    from fluxbee.admin.ctl import register as register_ctl

    register_ctl(sub)

    from fluxbee.admin.policy_cli import register as register_policy

    register_policy(sub)

    s = sub.add_parser("send", help="send a message as an ephemeral node")
    s.add_argument("name", nargs="?", help="destination: L2 name, name@hive, name@*, UUID or 'broadcast'; "
                                           "left out, dst is null and the hive's routing policy chooses")
    s.add_argument("--payload", help="JSON payload")
    s.add_argument("--meta", help="JSON object of meta fields, e.g. '{\"context\": {\"required_capability\": "
                                  "\"billing\"}, \"action\": \"system_status\"}'")
    s.add_argument("--wait", action="store_true", help="wait for the reply and print it")
    s.add_argument("--timeout", type=float, default=5.0)
    s.add_argument("--msg-type", default="user")
    s.add_argument("--as", dest="as_name", default="WF.cli",
                   help="sender name (default WF.cli, an undeclared name; SY.* and declared names are claimed: "
                        "they need the credential in $FLUXBEE_NODE_CREDENTIAL_FILE)")
    s.add_argument("--run-dir")
    s.set_defaults(func=cmd_send)

    st = sub.add_parser("status", help="nodes, routes and counters, from the router")
    st.add_argument("--run-dir")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    b = sub.add_parser("bench", help="latency/throughput vs a raw socket floor and NATS")
    b.add_argument("--quick", action="store_true", help="3,000 round trips and 30,000 messages (a smoke run)")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.add_argument("--round-trips", type=_positive, help="round trips per transport (default 20,000)")
    b.add_argument("--messages", type=_positive, help="one-way messages per transport (default 200,000)")
    b.add_argument("--idle-nodes", type=_positive, help="idle nodes for the router memory figure (default 1,000)")
    b.set_defaults(func=cmd_bench, extra="bench")

    o = sub.add_parser("operator", help="run the Kubernetes operator", add_help=False)
    o.add_argument("rest", nargs=argparse.REMAINDER)
    o.set_defaults(func=cmd_operator, extra="operator")

    from fluxbee.identity.cli import add_parser as add_identity_parser

    add_identity_parser(sub)

    from fluxbee.dataplane.link.cli import add_parser as add_wan_parser

    add_wan_parser(sub)
    return p


def main(argv: list[str] | None = None) -> None:
    # Children we start (`python -m fluxbee …`) must not put their working directory on sys.path:
    # in a source checkout it holds the `operator/` folder, which would shadow the stdlib module.
    os.environ.setdefault("PYTHONSAFEPATH", "1")
    argv = sys.argv[1:] if argv is None else list(argv)
    # `fluxbee operator …` parses its own options (fluxbee.operator.main).  argparse's REMAINDER
    # refuses an option that comes first (`fluxbee operator --namespace NS`), so the words after
    # `operator` are handed over as they are.
    command_at = next((i for i, arg in enumerate(argv) if not arg.startswith("-")), None)
    if command_at is not None and argv[command_at] == "operator":
        args = build_parser().parse_args(argv[:command_at + 1])
        args.rest = argv[command_at + 1:]
    else:
        args = build_parser().parse_args(argv)
    from fluxbee.dataplane.env import LOG, SettingsError

    try:
        level = logging.DEBUG if args.verbose else LOG.read()
    except SettingsError as err:
        print(f"fluxbee: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.command in ("send", "status", "ctl") and not args.verbose:
        # One-shot commands: their errors are printed; connection retries are noise.
        logging.getLogger("fluxbee.dataplane.sdk").setLevel(logging.WARNING)
    # Only the base install is certain: a command that needs an extra says which, before importing it.
    require_extra(getattr(args, "extra", None), " ".join(
        word for word in (args.command, getattr(args, "identity_command", None)) if word))
    raise SystemExit(args.func(args))
