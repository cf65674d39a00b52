"""``fluxbee ctl``: the common admin operations from the shell, as readable tables (or ``--json``)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any
from urllib.parse import quote, urlencode

from fluxbee.dataplane import env


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines) if rows else lines[0] + "\n(none)"


def _render(args: argparse.Namespace, payload: Any) -> str:
    cmd = args.ctl_command
    if args.json:
        return json.dumps(payload, indent=2)
    if cmd == "hives":
        rows = [{**h, **{f"link_{k}": v for k, v in (h.get("link") or {}).items()}} for h in payload["hives"]]
        return table(rows, ["hive_id", "role", "status", "address", "via", "link_state", "link_direction",
                            "link_rtt_ms", "link_last_lsa_age_ms", "is_local"])
    if cmd == "nodes":
        return table(payload["nodes"], ["node_name", "lifecycle_state", "managed", "visible_in_router", "vpn_id"])
    if cmd == "status":
        st = payload["node_status"]
        rows = [{"field": k, "value": json.dumps(v) if isinstance(v, dict) else v} for k, v in st.items()]
        return table(rows, ["field", "value"])
    if cmd == "routes":
        return table(payload["routes"], ["prefix", "match_kind", "action", "next_hop_hive", "priority"])
    if cmd == "vpns":
        return table(payload["vpns"], ["pattern", "match_kind", "vpn_id", "priority"])
    if cmd == "runtimes":
        return table(payload["runtimes"], ["runtime", "current", "available", "type"])
    if cmd in ("deployments", "drift"):
        cols = (["finished_at", "category", "action", "result", "actor"] if cmd == "deployments"
                else ["detected_at", "severity", "kind", "message"])
        return table(payload["entries"], cols)
    if cmd == "inventory" and args.summary:
        return table(payload["hives"], ["hive_id", "status", "node_count", "by_kind", "by_status", "error_code"])
    if cmd == "inventory":
        rows = [{**n, "hive_status": h["status"]} for h in payload["hives"] for n in h["nodes"]]
        rows += [{"hive": h["hive_id"], "hive_status": h["status"], "node_name": f"({h.get('error_code')})"}
                 for h in payload["hives"] if h["node_count"] is None]
        return table(rows, ["hive", "hive_status", "node_name", "kind", "lifecycle_state", "managed",
                            "visible_in_router"])
    if cmd in ("start", "restart"):
        return table([payload], ["node_name", "state", "lifecycle_state", "visible_in_router", "pid", "unit"])
    if cmd == "rm-instance":
        return table([payload], ["node_name", "status", "removed_path"])
    if cmd == "actions":
        return table(payload["actions"], ["action", "read_only", "summary"])
    return json.dumps(payload, indent=2)


def cmd_ctl(args: argparse.Namespace) -> int:
    # Imported here: the parser of every `fluxbee` command registers `ctl`, and only `ctl` needs the client.
    from fluxbee.admin.client import AdminCommandError, HttpAdminClient
    try:
        token = env.admin_token(token=args.token, token_flag="--token")
    except env.SettingsError as err:
        print(f"fluxbee ctl: {err}", file=sys.stderr)
        return 2
    if args.url is None:
        args.url = env.ADMIN_URL.read()
    client = HttpAdminClient(base=args.url, token=token)
    h = args.hive
    cmd = args.ctl_command
    try:
        if cmd == "health":
            print(json.dumps(client.call("GET", "/health")[1]))
            return 0
        if cmd == "spawn":
            body = {"node_name": args.name, "runtime": args.runtime, "runtime_version": args.runtime_version,
                    "config": json.loads(args.config) if args.config else {}}
            if args.tenant_id:
                body["tenant_id"] = args.tenant_id
            payload = client.ok("POST", f"/hives/{h}/nodes", body)
        elif cmd == "kill":
            payload = client.ok("DELETE", f"/hives/{h}/nodes/{args.name}", {"purge_instance": args.purge})
        elif cmd in ("start", "restart"):
            payload = client.ok("POST", f"/hives/{h}/nodes/{quote(args.name, safe='@')}/{cmd}")
        elif cmd == "rm-instance":
            payload = client.ok("DELETE", f"/hives/{h}/nodes/{quote(args.name, safe='@')}/instance")
        elif cmd == "inventory":
            query = {k: v for k, v in (("type", args.type), ("hive", args.of_hive)) if v}
            if args.summary and args.of_hive:
                print("fluxbee ctl inventory: --summary covers every hive; leave out --of-hive", file=sys.stderr)
                return 2
            where = "/inventory/summary" if args.summary else "/inventory"
            payload = client.ok("GET", where + (f"?{urlencode(query)}" if query else ""))
        else:
            path = {"hives": "/hives", "nodes": f"/hives/{h}/nodes", "routes": f"/hives/{h}/routes",
                    "vpns": f"/hives/{h}/vpns", "runtimes": f"/hives/{h}/runtimes",
                    "deployments": f"/hives/{h}/deployments", "drift": f"/hives/{h}/drift-alerts",
                    "actions": "/admin/actions", "versions": f"/hives/{h}/versions",
                    "hive-status": "/hive/status"}.get(cmd)
            if cmd in ("status", "config", "state"):
                path = f"/hives/{h}/nodes/{args.name}/{cmd}"
            assert path is not None, cmd
            payload = client.ok("GET", path)
    except AdminCommandError as err:
        print(f"fluxbee ctl {cmd}: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"fluxbee ctl {cmd}: cannot reach {args.url}: {err}", file=sys.stderr)
        return 2
    print(_render(args, payload))
    return 0


def register(sub: Any) -> None:
    c = sub.add_parser("ctl", help="admin API operations from the shell")
    c.add_argument("--url", help=f"the admin API (default $FLUXBEE_ADMIN_URL, else {env.ADMIN_URL.default})")
    c.add_argument("--token", help="bearer token (default $FLUXBEE_ADMIN_TOKEN)")
    c.add_argument("--hive", default="local")
    c.add_argument("--json", action="store_true")
    cs = c.add_subparsers(dest="ctl_command", required=True)
    for name in ("health", "hives", "nodes", "routes", "vpns", "runtimes", "versions", "deployments", "drift",
                 "actions", "hive-status"):
        cs.add_parser(name)
    for name in ("status", "config", "state"):
        cs.add_parser(name).add_argument("name")
    sp = cs.add_parser("spawn")
    sp.add_argument("name")
    sp.add_argument("--runtime", default="fluxbee.echo")
    sp.add_argument("--runtime-version", default="current")
    sp.add_argument("--tenant-id")
    sp.add_argument("--config", help="JSON object of config overrides")
    k = cs.add_parser("kill")
    k.add_argument("name")
    k.add_argument("--purge", action="store_true")
    for name, what in (("start", "start a stopped node's instance"), ("restart", "replace a node's processes"),
                       ("rm-instance", "delete a stopped node's instance")):
        cs.add_parser(name, help=what).add_argument("name")
    inv = cs.add_parser("inventory", help="nodes of this hive and of every hive the links reach")
    inv.add_argument("--type", help="only nodes of this kind (AI, IO, WF, SY, RT)")
    inv.add_argument("--of-hive", help="only this hive")
    inv.add_argument("--summary", action="store_true", help="counts per hive, kind and status")
    c.set_defaults(func=cmd_ctl)
