"""``fluxbee ctl``: the common admin operations from the shell, as readable tables (or ``--json``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from fluxbee.admin.client import AdminCommandError, HttpAdminClient


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
    if cmd == "actions":
        return table(payload["actions"], ["action", "read_only", "summary"])
    return json.dumps(payload, indent=2)


def cmd_ctl(args: argparse.Namespace) -> int:
    client = HttpAdminClient(base=args.url, token=args.token or os.environ.get("FLUXBEE_ADMIN_TOKEN"))
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
    c.add_argument("--url", default=os.environ.get("FLUXBEE_ADMIN_URL", "http://127.0.0.1:8080"))
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
    c.set_defaults(func=cmd_ctl)
