"""Invalid FluxNodes against the emulator: what only an emulator can hold.

Pods, config, repair, rollout, deletion and restart run against the real control plane
(tests/integration/cluster/test_operator_real.py).  What stays here needs the emulator: FluxNodes
the real API server's CEL rules would refuse (a node name of the wrong form must still end
Degraded, not wedge the operator: such objects exist where the CRD predates a rule), and the count
of writes to an object, which tells a status written once from a retry loop.  The helpers serve
test_operator_degrees_kmock.py too.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from operator_kmock_support import NS, Cluster, OperatorHandle, eventually

from fluxbee.operator import labels as L

HIVE: dict[str, Any] = {
    "apiVersion": "fluxbee.io/v1alpha1",
    "kind": "Hive",
    "metadata": {"name": "demo", "namespace": NS},
    "spec": {"nodeSelector": {"fluxbee.io/hive": "true"}},
}
RUNTIME: dict[str, Any] = {
    "apiVersion": "fluxbee.io/v1alpha1",
    "kind": "Runtime",
    "metadata": {"name": "fluxbee.echo", "namespace": NS},
    "spec": {
        "version": "0.1.0",
        "command": ["fluxbee", "node", "echo"],
        "configTemplate": {"reply_prefix": "echo: ", "timeout_s": 5},
    },
}


def fluxnode(name: str = "echo", replicas: int = 3, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "fluxbee.io/v1alpha1",
        "kind": "FluxNode",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "hive": "demo",
            "nodeName": "AI.echo.a",
            "runtime": "fluxbee.echo",
            "replicas": replicas,
            "config": {"reply_prefix": "a: "},
            "resources": {"requests": {"cpu": "50m"}, "limits": {"memory": "128Mi"}},
            **spec,
        },
    }


async def pods_of(cluster: Cluster, name: str = "echo") -> list[dict[str, Any]]:
    pods = await cluster.api.list("pods", NS, {L.FLUXNODE: name})
    return sorted(pods, key=lambda p: p["metadata"]["name"])


def n_pods(cluster: Cluster, n: int, name: str = "echo") -> Any:
    async def probe() -> list[dict[str, Any]] | None:
        pods = await pods_of(cluster, name)
        return pods if len(pods) == n else None

    return eventually(probe, what=f"{n} pods of {name}")


def status_where(cluster: Cluster, plural: str, name: str, **expected: Any) -> Any:
    async def probe() -> dict[str, Any] | None:
        obj = await cluster.api.get(plural, NS, name)
        status = (obj or {}).get("status") or {}
        return status if all(status.get(k) == v for k, v in expected.items()) else None

    return eventually(probe, what=f"{plural}/{name} status {expected}")


def degraded(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Degraded")


async def setup_hive(cluster: Cluster) -> None:
    await cluster.api.create("hives", NS, HIVE)
    await cluster.api.create("runtimes", NS, RUNTIME)






async def test_invalid_specs_end_degraded_with_a_reason_not_a_retry_loop(
    cluster: Cluster, operator: OperatorHandle
) -> None:
    await setup_hive(cluster)
    # What the API server's CEL rules would refuse still must not wedge the operator.
    await cluster.api.create("fluxnodes", NS, fluxnode("bad-name", nodeName="echo.a"))
    await cluster.api.create("fluxnodes", NS, fluxnode("no-runtime", runtime="ai.missing"))
    await cluster.api.create("fluxnodes", NS, fluxnode("bad-version", runtimeVersion="9.9.9"))
    bad_runtime = copy.deepcopy(RUNTIME)
    bad_runtime["metadata"]["name"] = "ai.broken"
    bad_runtime["spec"] = {"version": "1.0.0", "type": "config_only"}
    await cluster.api.create("runtimes", NS, bad_runtime)
    await cluster.api.create("fluxnodes", NS, fluxnode("on-broken", runtime="ai.broken"))

    for name, reason in (
        ("bad-name", "InvalidSpec"),
        ("no-runtime", "RuntimeNotFound"),
        ("bad-version", "RuntimeVersionNotAvailable"),
        ("on-broken", "RuntimeNotReady"),
    ):
        status = await status_where(cluster, "fluxnodes", name, phase="Degraded")
        assert degraded(status)["reason"] == reason, (name, status)
        assert degraded(status)["status"] == "True" and degraded(status)["message"]
        assert await pods_of(cluster, name) == []

    status = await status_where(cluster, "runtimes", "ai.broken", phase="Degraded")
    assert degraded(status)["reason"] == "InvalidPackage"
    assert "needs a runtimeBase" in degraded(status)["message"]

    # Not a retry loop: the invalid node's status is written once and then left alone.
    before = await cluster.api.get("fluxnodes", NS, "bad-name")
    patches_before = len(cluster.emulator.objects[
        next(k for k in cluster.emulator.objects if k[1:] == (NS, "bad-name"))
    ].history)
    await asyncio.sleep(1.0)
    after = await cluster.api.get("fluxnodes", NS, "bad-name")
    patches_after = len(cluster.emulator.objects[
        next(k for k in cluster.emulator.objects if k[1:] == (NS, "bad-name"))
    ].history)
    assert before and after
    assert before["metadata"]["resourceVersion"] == after["metadata"]["resourceVersion"]
    assert patches_after == patches_before

    # The missing runtime appears: the waiting node starts without being touched.
    missing = copy.deepcopy(RUNTIME)
    missing["metadata"]["name"] = "ai.missing"
    await cluster.api.create("runtimes", NS, missing)
    await n_pods(cluster, 3, "no-runtime")

