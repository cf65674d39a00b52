"""kind end-to-end: helm-installed hive, two echo FluxNodes, a routed round trip, the admin API.

Run on a machine with docker and kind: ``pytest -m e2e tests/e2e`` (it calls hack/kind-up.sh;
set FLUXBEE_E2E_KEEP=1 to keep the cluster afterwards).  Without docker or kind every test is
skipped with the reason printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kind_e2e_support import missing_tools

ROOT = Path(__file__).resolve().parents[2]
NS = os.environ.get("FLUXBEE_NAMESPACE", "fluxbee")
CLUSTER = os.environ.get("KIND_CLUSTER", "fluxbee-e2e")

pytestmark = pytest.mark.e2e


def sh(*args: str, timeout: float = 120, check: bool = True) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr}")
    return done.stdout


def kubectl(*args: str, timeout: float = 120) -> str:
    return sh("kubectl", "--context", f"kind-{CLUSTER}", "-n", NS, *args, timeout=timeout)


@pytest.fixture(scope="module")
def hive() -> Iterator[str]:
    reason = missing_tools()
    if reason is not None:
        print(f"kind e2e skipped: {reason}", file=sys.stderr)
        pytest.skip(f"kind e2e: {reason}")
    sh(str(ROOT / "hack" / "kind-up.sh"), timeout=1200)
    try:
        yield "e2e"
    finally:
        if not os.environ.get("FLUXBEE_E2E_KEEP"):
            sh(str(ROOT / "hack" / "kind-down.sh"), timeout=300, check=False)


NODES = """
apiVersion: fluxbee.io/v1alpha1
kind: Runtime
metadata: {name: fluxbee.echo}
spec: {version: 0.1.0, command: [fluxbee, node, echo]}
---
apiVersion: fluxbee.io/v1alpha1
kind: FluxNode
metadata: {name: echo-a}
spec: {hive: e2e, nodeName: AI.echo.a, runtime: fluxbee.echo}
---
apiVersion: fluxbee.io/v1alpha1
kind: FluxNode
metadata: {name: echo-b}
spec: {hive: e2e, nodeName: AI.echo.b, runtime: fluxbee.echo}
"""

# Runs in the hive pod's router container (same image: the SDK is there, FLUXBEE_RUN_DIR
# points at the shared socket directory).  Full names: the nodes register as
# `<spec.nodeName>@<hive id>` (the operator's `_system.node_name`).
PROBE = textwrap.dedent("""
    import asyncio
    from fluxbee.dataplane.sdk import NodeConfig, connect, text_of, text_v1

    async def main():
        sender, _ = await connect(NodeConfig(name="WF.e2e.probe", connect_timeout=20))
        try:
            for target in ("AI.echo.a@e2e", "AI.echo.b@e2e"):
                reply = await sender.request(target, text_v1("ping " + target), timeout=10)
                print(target, text_of(reply))
        finally:
            await sender.close()

    asyncio.run(main())
""")


def hive_pod(name: str) -> str:
    pods = json.loads(kubectl("get", "pods", "-l", f"fluxbee.io/hive={name},"
                              "app.kubernetes.io/component=hive", "-o", "json"))
    ready = [p["metadata"]["name"] for p in pods["items"]
             if p.get("status", {}).get("phase") == "Running"]
    assert ready, "no running hive pod"
    return str(ready[0])


def test_echo_nodes_run_and_answer_through_the_router(hive: str) -> None:
    subprocess.run(["kubectl", "--context", f"kind-{CLUSTER}", "-n", NS, "apply", "-f", "-"],
                   input=NODES, text=True, check=True, capture_output=True, timeout=60)
    for name in ("echo-a", "echo-b"):
        kubectl("wait", f"fluxnode/{name}", "--for=jsonpath={.status.phase}=Ready",
                "--timeout=180s", timeout=200)
    pods = json.loads(kubectl("get", "pods", "-l", "fluxbee.io/fluxnode", "-o", "json"))
    assert {p["metadata"]["name"] for p in pods["items"]} >= {"echo-a-0", "echo-b-0"}
    assert all(p["status"]["phase"] == "Running" for p in pods["items"])

    out = kubectl("exec", hive_pod(hive), "-c", "router", "--", "python", "-c", PROBE, timeout=60)
    assert "AI.echo.a@e2e ping AI.echo.a@e2e" in out, out  # the echo node returns the payload
    assert "AI.echo.b@e2e ping AI.echo.b@e2e" in out, out


ADMIN_PROBE = textwrap.dedent("""
    import base64, json, sys, urllib.error, urllib.request

    def get(path, token=None):
        headers = {"Authorization": "Bearer " + token} if token else {}
        req = urllib.request.Request("http://127.0.0.1:8080" + path, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    token = base64.b64decode(sys.argv[1]).decode()
    print(json.dumps({"health": get("/health"), "anonymous": get("/hive/status"),
                      "status": get("/hive/status", token)}))
""")


def test_admin_api_answers_with_the_token(hive: str) -> None:
    """The real admin paths: GET /health (open), GET /hive/status (bearer token, envelope)."""
    token_b64 = kubectl("get", "secret", f"{hive}-admin-token", "-o", "jsonpath={.data.token}")
    assert token_b64
    deadline = time.monotonic() + 60
    while True:
        try:
            out = kubectl("exec", f"deployment/{hive}-admin", "-c", "admin", "--", "python", "-c",
                          ADMIN_PROBE, token_b64, timeout=30)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)
    answers = json.loads(out.strip().splitlines()[-1])
    assert answers["health"] == [200, {"status": "ok"}], answers
    assert answers["anonymous"][0] == 401, answers
    code, body = answers["status"]
    assert code == 200 and body["status"] == "ok" and body["action"] == "hive_status", answers
    assert body["payload"]["hive_id"] == "e2e" and body["payload"]["backend"] == "kubernetes"
    assert body["payload"]["router_connected"] is True, answers
