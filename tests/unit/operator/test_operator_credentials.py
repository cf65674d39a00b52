"""Builders of the credential contract: per-node Secrets, the hive's claims, the pods' mounts."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from fluxbee.models import FluxNode, Hive, Runtime
from fluxbee.operator.fluxnode.build import (
    build_credential_secret,
    build_pod,
    claim_key,
    resolve_package,
)
from fluxbee.operator.hive.build import (
    build_admin_deployment,
    build_daemon_set,
    build_system_claims,
    build_system_credentials,
    claim_hashes,
    claim_value,
    claims_patch,
    credential_sha256,
    secret_tokens,
)
from fluxbee.operator.settings import OperatorSettings

SETTINGS = OperatorSettings(image="img:1")
TOKEN = "ab" * 32


def hive(**spec: Any) -> Hive:
    return Hive.model_validate({"metadata": {"name": "h"}, "spec": spec})


def node(name: str = "WF.echo@h") -> FluxNode:
    return FluxNode.model_validate({"metadata": {"name": "n"}, "spec": {
        "hive": "h", "nodeName": name, "runtime": "wf.echo"}})


def containers(ds: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in ds["spec"]["template"]["spec"]["containers"]}


def test_the_credential_hash_is_sha256_of_the_token_text() -> None:
    assert credential_sha256(TOKEN) == hashlib.sha256(TOKEN.encode()).hexdigest()


def test_a_node_secret_holds_its_token_and_the_claim_it_was_written_to() -> None:
    secret = build_credential_secret(node(), "ns", TOKEN)
    assert secret["metadata"]["name"] == "n-credential"
    assert base64.b64decode(secret["data"]["token"]).decode() == TOKEN
    assert secret["metadata"]["annotations"]["fluxbee.io/claim"] == "h/WF.echo"
    assert secret_tokens(secret) == {"token": TOKEN}
    assert claim_key(node("AI.support.l1")) == "AI.support.l1"


def test_secret_tokens_keeps_only_well_formed_tokens() -> None:
    secret = {"data": {"ok": base64.b64encode(TOKEN.encode()).decode(), "short": base64.b64encode(b"abc").decode(),
                       "junk": "!!"},
              "stringData": {"fresh": "cd" * 32 + "\n", "upper": "AB" * 32}}
    assert secret_tokens(secret) == {"ok": TOKEN, "fresh": "cd" * 32}


def test_node_pods_mount_their_credential_read_only_and_name_the_file() -> None:
    runtime = Runtime.model_validate({"metadata": {"name": "wf.echo"}, "spec": {"version": "1", "command": ["x"]}})
    pod = build_pod(node(), hive(), resolve_package(runtime, None, SETTINGS), "ns", 0, "d", SETTINGS)
    spec = pod["spec"]
    volume = next(v for v in spec["volumes"] if v["name"] == "credential")
    assert volume["secret"] == {"secretName": "n-credential"}
    container = spec["containers"][0]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "credential")
    assert mount == {"name": "credential", "mountPath": "/etc/fluxbee/credential", "readOnly": True}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["FLUXBEE_NODE_CREDENTIAL_FILE"] == "/etc/fluxbee/credential/token"


def test_claims_values_are_the_routers_format_and_patches_touch_one_key() -> None:
    other = "cd" * 32
    assert json.loads(claim_value([other, TOKEN, other])) == {"credential_sha256": [TOKEN, other]}
    assert claims_patch("WF.echo", [TOKEN]) == {"data": {"WF.echo": claim_value([TOKEN])}}
    assert claims_patch("WF.echo", []) == {"data": {"WF.echo": None}}  # merge patch: key removed
    assert claim_hashes(claim_value([TOKEN])) == [TOKEN]
    assert claim_hashes("not json") == [] and claim_hashes('{"credential_sha256": "x"}') == []


def test_the_router_mounts_the_claims_and_the_admin_deployment_its_own_system_token() -> None:
    ds = build_daemon_set(hive(), "ns", SETTINGS)
    router = containers(ds)["router"]
    flag = router["command"].index("--claims-dir")
    assert router["command"][flag + 1] == "/etc/fluxbee/claims"
    assert {"name": "claims", "mountPath": "/etc/fluxbee/claims", "readOnly": True} in router["volumeMounts"]
    volumes = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    assert volumes["claims"] == {"name": "claims", "configMap": {"name": "h-claims"}}
    assert "credential-sy-admin" not in volumes  # the hive pods run no SY.* process of their own
    deployment = build_admin_deployment(hive(), "ns", SETTINGS)
    admin = containers(deployment)["admin"]
    admin_volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert admin_volumes["credential-sy-admin"]["secret"] == {
        "secretName": "h-system-credentials", "items": [{"key": "SY.admin", "path": "token"}]}
    assert {"name": "credential-sy-admin", "mountPath": "/etc/fluxbee/credential",
            "readOnly": True} in admin["volumeMounts"]
    env = {e["name"]: e.get("value") for e in admin["env"]}
    assert env["FLUXBEE_NODE_CREDENTIAL_FILE"] == "/etc/fluxbee/credential/token"
    assert not any(m["mountPath"].startswith("/var/run/fluxbee/cred") for m in router["volumeMounts"])


def test_without_the_admin_api_no_system_token_is_mounted_but_the_claims_are() -> None:
    ds = build_daemon_set(hive(admin={"enabled": False}, identity={"enabled": False}), "ns", SETTINGS)
    names = [v["name"] for v in ds["spec"]["template"]["spec"]["volumes"]]
    assert "claims" in names and not any(n.startswith("credential-") for n in names)
    with_replica = build_daemon_set(hive(admin={"enabled": False}), "ns", SETTINGS)
    names = [v["name"] for v in with_replica["spec"]["template"]["spec"]["volumes"]]
    assert [n for n in names if n.startswith("credential-")] == ["credential-sy-identity-replica"]


def test_system_credentials_and_claims_carry_one_key_per_system_node() -> None:
    secret = build_system_credentials(hive(), "ns", {"SY.admin": TOKEN})
    assert secret["metadata"]["name"] == "h-system-credentials"
    assert secret_tokens(secret) == {"SY.admin": TOKEN}
    claims = build_system_claims(hive(), "ns", {"SY.admin": credential_sha256(TOKEN)})
    assert claims["metadata"]["name"] == "h-claims"
    assert claim_hashes(claims["data"]["SY.admin"]) == [credential_sha256(TOKEN)]
