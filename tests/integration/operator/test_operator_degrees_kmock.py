"""An agent FluxNode gets Pods only if its degree's graduation verifies (signature and digest).

The real operator against the emulator: Modules, a Degree, the identity public key in a
ConfigMap and a graduation signed with the matching private key.  Tampering with a module's
text, the degree's pins or the signature leaves the node Degraded with the reason and no Pods;
a valid graduation gets Pods, and a later tamper stops them.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from operator_kmock_support import NS, Cluster, OperatorHandle, eventually
from test_operator_nodes_kmock import HIVE, RUNTIME, fluxnode, n_pods, pods_of

from fluxbee.identity import degrees as dg
from fluxbee.operator.settings import OperatorSettings

ILK = "ilk:6f1c2a52-7b0e-4c39-9d64-0a1f3c5e8b21"
TEXTS = {"tone": "Be kind.", "billing": "Refunds take five days."}


def doc(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "fluxbee.io/v1alpha1", "kind": kind,
            "metadata": {"name": name, "namespace": NS}, "spec": spec}


def digest_of(texts: dict[str, str]) -> str:
    return dg.degree_digest([dg.PinnedModule(n, "1", dg.module_digest(t)) for n, t in texts.items()])


def graduation(key: Ed25519PrivateKey, digest: str, ilk: str = ILK) -> dict[str, str]:
    """The record SY.identity issues, as a user copies it into the FluxNode."""
    grad = dg.sign_graduation(key, ilk, "support", "2026.1", digest)
    return {"digest": grad.digest, "signature": grad.signature, "keyId": grad.key_id,
            "ilkId": grad.ilk_id}


async def setup(cluster: Cluster, key: Ed25519PrivateKey, hive: dict[str, Any] = HIVE) -> None:
    # The key before the Hive: on a mother hive the operator publishes SY.identity's key into this
    # ConfigMap when it is absent, so a create after the Hive could meet the operator's copy (409).
    await cluster.api.create("configmaps", NS, {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": OperatorSettings().identity_key_config_map, "namespace": NS},
        "data": {"ed25519.pub": dg.public_pem(key.public_key()).decode()},
    })
    await cluster.api.create("hives", NS, hive)
    await cluster.api.create("runtimes", NS, RUNTIME)
    for name, text in TEXTS.items():
        await cluster.api.create("modules", NS, doc("Module", name, {"version": "1", "content": text}))
    await cluster.api.create("degrees", NS, doc("Degree", "support", {
        "version": "2026.1", "modules": [{"name": n, "version": "1"} for n in TEXTS],
    }))


def agent(name: str, grad: dict[str, str], ilk: str = ILK) -> dict[str, Any]:
    return fluxnode(name, replicas=2, agentIlk=ilk,
                    degree={"name": "support", "version": "2026.1", "graduation": grad})


async def degraded(cluster: Cluster, name: str, reason: str) -> Any:
    seen: list[Any] = []

    async def probe() -> dict[str, Any] | None:
        status = ((await cluster.api.get("fluxnodes", NS, name)) or {}).get("status") or {}
        seen[:] = [status]
        degraded = [c for c in status.get("conditions") or [] if c["type"] == "Degraded"]
        return status if degraded and degraded[0]["reason"] == reason else None

    try:  # generous: under a loaded CI machine the operator's retry after a failed key read can take >10 s
        return await eventually(probe, timeout=30.0, what=f"fluxnode {name} Degraded/{reason}")
    except AssertionError as err:
        raise AssertionError(f"{err}; the FluxNode's last status: {seen[0] if seen else None!r}") from None


async def test_a_valid_graduation_gets_pods_and_the_degree_counts_it(
    cluster: Cluster, operator: OperatorHandle
) -> None:
    key = Ed25519PrivateKey.generate()
    await setup(cluster, key)
    await cluster.api.create("fluxnodes", NS, agent("agent", graduation(key, digest_of(TEXTS))))
    pods = await n_pods(cluster, 2, "agent")
    assert [p["metadata"]["name"] for p in pods] == ["agent-0", "agent-1"]
    container = pods[0]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["FLUXBEE_AGENT_ILK"] == ILK and env["FLUXBEE_DEGREE"] == "support@2026.1"
    assert {"name": "identity-key", "mountPath": "/etc/fluxbee/identity", "readOnly": True} in (
        container["volumeMounts"])

    async def verified() -> dict[str, Any] | None:
        status = ((await cluster.api.get("fluxnodes", NS, "agent")) or {}).get("status") or {}
        return status if status.get("graduation") == "Verified" else None

    status = await eventually(verified, what="graduation Verified")  # Pods may come before the status write
    assert status["degreeDigest"] == digest_of(TEXTS)

    async def counted() -> dict[str, Any] | None:
        status = ((await cluster.api.get("degrees", NS, "support")) or {}).get("status") or {}
        return status if status.get("graduations") == "1/1" else None

    assert (await eventually(counted, what="degree graduations 1/1"))["verifiedGraduations"] == 1

    # Tampering with a module after the fact stops the agent.
    await cluster.api.patch("modules", NS, "tone", {"spec": {"content": "Be rude."}})
    status = await degraded(cluster, "agent", "DegreeDigestMismatch")
    assert status["graduation"] == "DegreeDigestMismatch" and status["replicas"] == 0
    await n_pods(cluster, 0, "agent")


@pytest.mark.parametrize("tamper", ["module", "degree", "signature", "ilk"])
async def test_a_tampered_graduation_gets_no_pods_and_says_why(
    cluster: Cluster, operator: OperatorHandle, tamper: str
) -> None:
    key = Ed25519PrivateKey.generate()
    await setup(cluster, key)
    grad = graduation(key, digest_of(TEXTS))
    ilk = ILK
    if tamper == "module":  # the degree pins the original text; the module was edited
        await cluster.api.patch("degrees", NS, "support", {"spec": {"modules": [
            {"name": n, "version": "1", "sha256": dg.module_digest(t)} for n, t in TEXTS.items()
        ]}})
        await cluster.api.patch("modules", NS, "billing", {"spec": {"content": "No refunds."}})
        reason = dg.MODULE_DIGEST_MISMATCH
    elif tamper == "degree":  # graduated to a different set of modules
        grad = graduation(key, digest_of({"tone": TEXTS["tone"]}))
        reason = dg.DEGREE_DIGEST_MISMATCH
    elif tamper == "signature":  # signed by another key
        grad = graduation(Ed25519PrivateKey.generate(), digest_of(TEXTS))
        reason = dg.SIGNATURE_INVALID
    else:  # a graduation copied from another agent
        ilk = "ilk:00000000-0000-4000-8000-000000000000"
        reason = dg.GRADUATION_MISMATCH
    await cluster.api.create("fluxnodes", NS, agent("agent", grad, ilk))
    status = await degraded(cluster, "agent", reason)
    assert status["phase"] == "Degraded" and status["graduation"] == reason
    assert await pods_of(cluster, "agent") == []


async def test_without_the_identity_key_nothing_starts(
    cluster: Cluster, operator: OperatorHandle
) -> None:
    key = Ed25519PrivateKey.generate()
    # a worker hive: a mother hive runs SY.identity's primary, and the operator publishes that key into
    # the ConfigMap whenever it reconciles the Hive (it would come back, with a key the graduation was
    # not signed with); a worker's primary is elsewhere, so nothing puts the key back here
    worker = {**HIVE, "spec": {**HIVE["spec"], "role": "worker", "motherHive": "mother"}}
    await setup(cluster, key, worker)
    await cluster.api.delete("configmaps", NS, OperatorSettings().identity_key_config_map)
    bad = base64.b64encode(b"\0" * 64).decode()
    await cluster.api.create("fluxnodes", NS, agent("agent", {**graduation(key, digest_of(TEXTS)),
                                                              "signature": bad}))
    status = await degraded(cluster, "agent", "IdentityKeyUnavailable")
    assert "ed25519.pub" in status["conditions"][2]["message"]
    assert await pods_of(cluster, "agent") == []
