"""``fluxbee policy``: a hive's routing policy from the shell, through the admin API (``/opa/*``).

``compile FILE [--apply]`` stages (or applies) a Rego file; ``apply`` the staged version;
``check [FILE] [--input FILE]`` validates and evaluates without writing; ``rollback [--version N]``;
``status``.  Without ``--hive`` a change goes to every hive and a read to the local one.
``serve`` runs SY.policy itself (started by ``fluxbee up``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fluxbee.dataplane import env
from fluxbee.dataplane.names import hive_id_argument


class _Usage(Exception):
    pass


def _read_json_file(path: str, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise _Usage(f"cannot read the {what} file {path}: {err.strerror or err}") from err
    except ValueError as err:
        raise _Usage(f"the {what} file {path} is not JSON: {err}") from err


def _read_rego(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise _Usage(f"cannot read the policy file {path}: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise _Usage(f"the policy file {path} is not UTF-8 text: {err}") from err


def _request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None]:
    prefix = f"/hives/{args.hive}" if args.hive else ""
    cmd = args.policy_command
    if cmd == "compile":
        body: dict[str, Any] = {"rego": _read_rego(args.file)}
        if args.entrypoint:
            body["entrypoint"] = args.entrypoint
        if args.data:
            body["data"] = _read_json_file(args.data, "data")
        return "POST", prefix + ("/opa/policy" if args.apply else "/opa/policy/compile"), body
    if cmd in ("apply", "rollback"):
        return "POST", f"{prefix}/opa/policy/{cmd}", {"version": args.version} if args.version else {}
    if cmd == "check":
        body = {}
        if args.file:
            body["rego"] = _read_rego(args.file)
        elif args.against:
            body["against"] = args.against
        if args.input:
            body["input"] = _read_json_file(args.input, "input")
        return "POST", f"{prefix}/opa/policy/check", body
    if cmd == "status":
        return "GET", f"{prefix}/opa/status", None
    return "GET", f"{prefix}/opa/decisions", None


def _where(detail: Any) -> str:
    if isinstance(detail, dict) and detail.get("line") is not None:
        return f" (line {detail['line']}, column {detail.get('column')})"
    return ""


def _render(cmd: str, payload: dict[str, Any]) -> str:
    if cmd == "status":
        cur, staged = payload.get("current") or {}, payload.get("staged") or {}
        router = payload.get("router") or {}
        return "\n".join([
            f"hive {payload.get('hive')}: last version {payload.get('last_version')}",
            f"current: {cur.get('version', '-')} {cur.get('hash', '')} {cur.get('engine', '')}".rstrip(),
            f"staged:  {staged.get('version', '-')} {staged.get('hash', '')}".rstrip(),
            f"router:  {router.get('status', 'unknown')} version {router.get('version', '-')}"
            + (f" error: {router['error']}" if router.get("error") else "")])
    if "responses" in payload:
        lines = [f"{payload.get('action')} version {payload.get('version')}: {payload.get('status')}"]
        for r in payload["responses"]:
            state = (r.get("router") or {}).get("status")
            lines.append(f"  {r['hive']}: {r['status']}" + (f" (router {state})" if state else "")
                         + (f" {r.get('error_code')}: {r.get('error_detail')}" if r.get("error_code") else ""))
        return "\n".join(lines)
    return json.dumps(payload, indent=2)


def cmd_policy(args: argparse.Namespace) -> int:
    if args.policy_command == "serve":
        from fluxbee.policy_service.node import serve

        serve(args.hive_id, Path(args.run_dir) if args.run_dir else _default_run_dir(), args.mother_hive)
        return 0
    # Imported here: the parser of every `fluxbee` command registers `policy`, and only its client commands use it.
    from fluxbee.admin.client import AdminCommandError, HttpAdminClient

    name = f"fluxbee policy {args.policy_command}"
    try:
        token = env.admin_token(token=args.token, token_flag="--token")
    except env.SettingsError as err:
        print(f"{name}: {err}", file=sys.stderr)
        return 2
    if args.url is None:
        args.url = env.ADMIN_URL.read()
    client = HttpAdminClient(base=args.url, token=token, timeout=120.0)
    try:
        method, path, body = _request(args)
        status, doc = client.call(method, path, body)
    except _Usage as err:
        print(f"{name}: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"{name}: cannot reach {args.url}: {err}", file=sys.stderr)
        return 2
    payload = doc.get("payload") if isinstance(doc.get("payload"), dict) else {}
    if status >= 400 or doc.get("status") == "error":
        refused = AdminCommandError(status, str(doc.get("error_code")), str(doc.get("error_detail")))
        print(f"{name}: {refused}{_where(payload)}", file=sys.stderr)
        if args.json and payload:
            print(json.dumps(payload, indent=2))
        return 1
    print(json.dumps(payload, indent=2) if args.json else _render(args.policy_command, payload or {}))
    return 3 if doc.get("status") == "sync_pending" else 0


def _default_run_dir() -> Path:
    from fluxbee.dataplane.sdk import default_run_dir

    return default_run_dir()


def register(sub: Any) -> None:
    c = sub.add_parser("policy", help="routing policy: compile, apply, check, rollback, status (admin API)")
    c.add_argument("--url", help=f"the admin API (default $FLUXBEE_ADMIN_URL, else {env.ADMIN_URL.default})")
    c.add_argument("--token", help="bearer token (default $FLUXBEE_ADMIN_TOKEN)")
    c.add_argument("--hive", help="one hive (default: every hive for changes, the local one for reads)")
    c.add_argument("--json", action="store_true", help="print the answer's payload as JSON")
    cs = c.add_subparsers(dest="policy_command", required=True)
    comp = cs.add_parser("compile", help="compile a Rego file and stage it (--apply: and apply it)")
    comp.add_argument("file")
    comp.add_argument("--apply", action="store_true")
    comp.add_argument("--entrypoint", help="the target rule (default router/target)")
    comp.add_argument("--data", help="a JSON file: the policy's own data document")
    for name in ("apply", "rollback"):
        cs.add_parser(name).add_argument("--version", type=int, help="apply: the staged version; rollback: the "
                                                                     "applied version to restore")
    chk = cs.add_parser("check", help="validate Rego (a file, or the staged/current policy) and evaluate an input")
    chk.add_argument("file", nargs="?")
    chk.add_argument("--input", help="a JSON file: the input document to evaluate")
    chk.add_argument("--against", choices=("staged", "current"))
    cs.add_parser("status")
    cs.add_parser("decisions")
    srv = cs.add_parser("serve", help="run SY.policy (fluxbee up starts it)")
    srv.add_argument("--hive-id", required=True, type=hive_id_argument)
    srv.add_argument("--run-dir")
    srv.add_argument("--mother-hive", type=hive_id_argument)
    c.set_defaults(func=cmd_policy)
    srv.set_defaults(func=cmd_policy, extra="policy")
