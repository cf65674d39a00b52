"""A FluxNode's credential: its Secret, its hash under its name in the hive's claims, and cleanup."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from operator_kmock_support import NS, Cluster, OperatorHandle, eventually

HIVE: dict[str, Any] = {"apiVersion": "fluxbee.io/v1alpha1", "kind": "Hive",
                        "metadata": {"name": "demo", "namespace": NS}, "spec": {}}
RUNTIME: dict[str, Any] = {"apiVersion": "fluxbee.io/v1alpha1", "kind": "Runtime",
                           "metadata": {"name": "fluxbee.echo", "namespace": NS},
                           "spec": {"version": "0.1.0", "command": ["fluxbee", "node", "echo"]}}


def fluxnode(name: str, node_name: str = "WF.echo") -> dict[str, Any]:
    return {"apiVersion": "fluxbee.io/v1alpha1", "kind": "FluxNode", "metadata": {"name": name, "namespace": NS},
            "spec": {"hive": "demo", "nodeName": node_name, "runtime": "fluxbee.echo", "replicas": 1}}


def sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def token_of(cluster: Cluster, secret: str, key: str = "token") -> str:
    async def probe() -> str | None:
        obj = await cluster.api.get("secrets", NS, secret)
        raw = ((obj or {}).get("data") or {}).get(key)
        return base64.b64decode(raw).decode() if raw else None

    return await eventually(probe, what=f"Secret {secret} with {key}")


def claims_where(cluster: Cluster, check: Any, what: str) -> Any:
    async def probe() -> dict[str, Any] | None:
        cm = await cluster.api.get("configmaps", NS, "demo-claims")
        data = {k: json.loads(v) for k, v in ((cm or {}).get("data") or {}).items()}
        return data if cm is not None and check(data) else None

    return eventually(probe, what=what)


async def test_a_fluxnode_gets_a_credential_and_its_name_claimed_until_it_is_deleted(
        cluster: Cluster, operator: OperatorHandle) -> None:
    await cluster.api.create("runtimes", NS, RUNTIME)
    await cluster.api.create("fluxnodes", NS, fluxnode("echo"))
    await cluster.api.create("hives", NS, HIVE)

    token = await token_of(cluster, "echo-credential")
    assert len(token) == 64 and int(token, 16) >= 0
    admin_token = await token_of(cluster, "demo-system-credentials", "SY.admin")
    claims = await claims_where(cluster, lambda d: "WF.echo" in d and "SY.admin" in d, "both claims")
    assert claims["WF.echo"] == {"credential_sha256": [sha256(token)]}
    assert claims["SY.admin"] == {"credential_sha256": [sha256(admin_token)]}
    cm = await cluster.api.get("configmaps", NS, "demo-claims")
    assert cm is not None and cm["metadata"]["ownerReferences"][0]["kind"] == "Hive"
    secret = await cluster.api.get("secrets", NS, "echo-credential")
    assert secret is not None and secret["metadata"]["ownerReferences"][0]["name"] == "echo"

    async def pod() -> dict[str, Any] | None:
        return await cluster.api.get("pods", NS, "echo-0")

    spec = (await eventually(pod, what="echo-0"))["spec"]
    assert {"name": "credential", "secret": {"secretName": "echo-credential"}} in spec["volumes"]

    # A second FluxNode with the same name: both tokens prove it.  Reconciles never rotate a token.
    await cluster.api.create("fluxnodes", NS, fluxnode("echo-b"))
    token_b = await token_of(cluster, "echo-b-credential")
    await claims_where(cluster, lambda d: sorted(d.get("WF.echo", {}).get("credential_sha256", []))
                       == sorted([sha256(token), sha256(token_b)]), "both hashes under WF.echo")
    await cluster.api.patch("fluxnodes", NS, "echo", {"spec": {"replicas": 2}})
    await eventually(lambda: cluster.api.get("pods", NS, "echo-1"), what="echo-1")
    assert await token_of(cluster, "echo-credential") == token

    # Deleting one takes only its own hash out; deleting the last takes the key out.
    await cluster.api.delete("fluxnodes", NS, "echo-b")
    await claims_where(cluster, lambda d: d.get("WF.echo") == {"credential_sha256": [sha256(token)]},
                       "echo-b's hash removed")
    await cluster.api.delete("fluxnodes", NS, "echo")
    claims = await claims_where(cluster, lambda d: "WF.echo" not in d, "WF.echo unclaimed")
    assert claims["SY.admin"] == {"credential_sha256": [sha256(admin_token)]}
    # Every claims change above reconciled the Hive again; its system token stayed the same.
    assert await token_of(cluster, "demo-system-credentials", "SY.admin") == admin_token

    async def secrets_gone() -> bool:
        return all([await cluster.api.get("secrets", NS, s) is None for s in ("echo-credential", "echo-b-credential")])

    await eventually(secrets_gone, what="the credential Secrets deleted")


async def test_a_renamed_fluxnode_moves_its_claim_and_a_system_name_is_refused(
        cluster: Cluster, operator: OperatorHandle) -> None:
    await cluster.api.create("hives", NS, HIVE)
    await cluster.api.create("runtimes", NS, RUNTIME)
    await cluster.api.create("fluxnodes", NS, fluxnode("echo"))
    token = await token_of(cluster, "echo-credential")
    await claims_where(cluster, lambda d: "WF.echo" in d, "WF.echo claimed")

    await cluster.api.patch("fluxnodes", NS, "echo", {"spec": {"nodeName": "WF.echo2"}})
    claims = await claims_where(cluster, lambda d: "WF.echo2" in d and "WF.echo" not in d, "the claim moved")
    assert claims["WF.echo2"] == {"credential_sha256": [sha256(token)]}
    assert await token_of(cluster, "echo-credential") == token

    await cluster.api.create("fluxnodes", NS, fluxnode("impostor", "SY.admin"))

    async def refused() -> dict[str, Any] | None:
        obj = await cluster.api.get("fluxnodes", NS, "impostor")
        status = (obj or {}).get("status") or {}
        return status if status.get("phase") == "Degraded" else None

    status = await eventually(refused, what="the impostor refused")
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "NameClaimedBySystem"
    assert await cluster.api.get("pods", NS, "impostor-0") is None
    claims = await claims_where(cluster, lambda d: "SY.admin" in d, "SY.admin claimed")
    assert len(claims["SY.admin"]["credential_sha256"]) == 1
