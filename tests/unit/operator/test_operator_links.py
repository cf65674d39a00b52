"""Hive.spec.wan / meshPort / identity: the models, the router flags, the link and identity objects,
and the certificate checks (pure: models, dicts and bytes)."""

from __future__ import annotations

import base64
import datetime
from typing import Any

import pytest
from pydantic import ValidationError

from fluxbee.dataplane.link.certs import hive_id_of, issue_hive_cert, make_ca
from fluxbee.models import Hive
from fluxbee.operator.hive.build import build_daemon_set, system_nodes
from fluxbee.operator.hive.certs import (
    RENEW_BEFORE,
    SecretProblem,
    check_ca_secret,
    check_user_secret,
    generated_still_good,
    tls_data,
)
from fluxbee.operator.hive.gateway import build_gateway_deployment, build_gateway_service, build_mesh_service
from fluxbee.operator.hive.identity import build_identity_deployment, build_postgres_stateful_set
from fluxbee.operator.hive.links import wan_problem
from fluxbee.operator.settings import OperatorSettings, SettingsError

SETTINGS = OperatorSettings(image="img:1")


def hive(name: str = "h", **spec: Any) -> Hive:
    return Hive.model_validate({"metadata": {"name": name, "namespace": "ns"}, "spec": spec})


def args_of(container: dict[str, Any]) -> list[str]:
    command: list[str] = container["command"]
    return command


def flag_values(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


# --- models -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("wan", [
    {"listen": "0.0.0.0:70000"},
    {"listen": "0.0.0.0"},
    {"listen": "host name:9000"},
    {"uplinks": [{"address": "a.example:9000", "service": "b-gateway"}]},
    {"uplinks": [{}]},
    {"uplinks": [{"address": "a.example:9000", "port": 9000}]},
    {"uplinks": [{"service": "Upper"}]},
    {"authorizedHives": ["has.dots"]},
    {"authorizedHives": ["a", "a"]},
    {"certificate": {"secretName": "Not_A_Name"}},
    {"serviceType": "ExternalName"},
])
def test_a_bad_spec_wan_is_refused_with_the_field_named(wan: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as err:
        hive(wan=wan)
    assert "wan" in str(err.value)


def test_good_addresses_include_ipv6_and_dns_names_and_services_resolve_in_the_cluster() -> None:
    h = hive(wan={"listen": "[::]:9000", "uplinks": [{"address": "[2001:db8::1]:9000"},
                                                       {"address": "mother.example.com:1"},
                                                       {"service": "mother-gateway"},
                                                       {"service": "x-gateway", "namespace": "other", "port": 9443}]})
    assert h.spec.wan is not None
    assert [u.target("ns") for u in h.spec.wan.uplinks] == [
        "[2001:db8::1]:9000", "mother.example.com:1", "mother-gateway.ns.svc:9000", "x-gateway.other.svc:9443"]


def test_identity_url_mode_needs_its_secret_and_bundled_refuses_one() -> None:
    with pytest.raises(ValidationError, match="urlSecret"):
        hive(identity={"database": {"mode": "url"}})
    with pytest.raises(ValidationError, match="urlSecret"):
        hive(identity={"database": {"urlSecret": {"name": "pg"}}})
    with pytest.raises(ValidationError, match="storage"):
        hive(identity={"database": {"storage": "lots"}})


def test_operator_settings_name_the_bad_ca_variable() -> None:
    with pytest.raises(SettingsError, match="FLUXBEE_WAN_CA_SECRET"):
        OperatorSettings.from_env({"FLUXBEE_WAN_CA_SECRET": "Bad Name"})
    s = OperatorSettings.from_env({"FLUXBEE_WAN_CA_NAMESPACE": "ops"})
    assert s.ca_namespace("hive-ns") == "ops"
    assert OperatorSettings(namespace="watched").ca_namespace("hive-ns") == "watched"
    assert OperatorSettings().ca_namespace("hive-ns") == "hive-ns"


def test_wan_problems_the_schema_cannot_see() -> None:
    assert wan_problem(hive(), "ns") is None
    assert wan_problem(hive(wan={"uplinks": [{"service": "h-gateway"}]}), "ns") == (
        "WanUplinkToSelf", "spec.wan.uplinks[0] is this hive's own gateway Service h-gateway")
    assert wan_problem(hive(wan={"uplinks": [{"service": "h-gateway", "namespace": "other"}]}), "ns") is None
    assert wan_problem(hive(wan={"authorizedHives": ["h"]}), "ns") is not None
    assert wan_problem(hive(wan={"uplinks": [{"service": "m-gateway"}, {"address": "m-gateway.ns.svc:9000"}]}),
                       "ns") == ("WanUplinkTwice", "spec.wan.uplinks names one address twice")


# --- objects ----------------------------------------------------------------------------------------


def test_every_router_meshes_through_the_headless_service_and_presents_the_hive_certificate() -> None:
    h = hive(meshPort=9101)
    ds = build_daemon_set(h, "ns", SETTINGS)
    template = ds["spec"]["template"]
    router = template["spec"]["containers"][0]
    args = args_of(router)
    assert flag_values(args, "--mesh-listen") == ["0.0.0.0:9101"]
    assert flag_values(args, "--mesh-dns") == ["h-mesh.ns.svc:9101"]
    assert flag_values(args, "--wan-cert") == ["/etc/fluxbee/link/tls.crt"]
    assert "--wan-listen" not in args  # only the gateway holds WAN links
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    assert volumes["link-tls"]["secret"]["secretName"] == "h-wan-tls"
    mesh = build_mesh_service(h, "ns")
    assert mesh["spec"]["clusterIP"] == "None" and mesh["spec"]["publishNotReadyAddresses"] is True
    assert mesh["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    assert mesh["spec"]["ports"][0]["port"] == 9101


def test_the_gateway_runs_one_router_with_the_wan_flags_and_the_users_certificate() -> None:
    h = hive(wan={"listen": "0.0.0.0:9443", "uplinks": [{"service": "m-gateway"}, {"address": "10.0.0.1:9000"}],
                  "authorizedHives": ["m", "w2"], "certificate": {"secretName": "mine"},
                  "serviceType": "LoadBalancer"}, gatewayPort=19000)
    deployment = build_gateway_deployment(h, "ns", SETTINGS)
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    pod = deployment["spec"]["template"]
    (router,) = pod["spec"]["containers"]
    args = args_of(router)
    assert flag_values(args, "--wan-listen") == ["0.0.0.0:9443"]
    assert flag_values(args, "--uplink") == ["m-gateway.ns.svc:9000", "10.0.0.1:9000"]
    assert flag_values(args, "--authorized-hive") == ["m", "w2"]
    assert flag_values(args, "--mesh-dns") == ["h-mesh.ns.svc:9001"]
    assert {p["name"]: p["containerPort"] for p in router["ports"]}["wan"] == 9443
    assert "hostIPC" not in pod["spec"]  # no node connects to it
    assert {v["name"]: v for v in pod["spec"]["volumes"]}["link-tls"]["secret"]["secretName"] == "mine"
    service = build_gateway_service(h, "ns")
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["ports"][0] == {"name": "wan", "port": 19000, "targetPort": "wan", "protocol": "TCP"}
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert build_mesh_service(h, "ns")["spec"]["selector"].items() <= pod["metadata"]["labels"].items()


def test_a_motherbee_runs_the_identity_primary_and_replicas_a_worker_only_replicas() -> None:
    mother = hive("m")
    assert system_nodes(mother) == ["SY.admin", "SY.identity", "SY.identity.replica"]
    replica = build_daemon_set(mother, "ns", SETTINGS)["spec"]["template"]["spec"]["containers"][1]
    assert flag_values(args_of(replica), "--primary") == ["SY.identity@m"]
    assert flag_values(args_of(replica), "--node-name") == ["SY.identity.replica"]
    worker = hive("w", role="worker", identity={"primaryHive": "m"})
    assert system_nodes(worker) == ["SY.admin", "SY.identity"]
    replica = build_daemon_set(worker, "ns", SETTINGS)["spec"]["template"]["spec"]["containers"][1]
    assert flag_values(args_of(replica), "--primary") == ["SY.identity@m"]
    assert flag_values(args_of(replica), "--node-name") == ["SY.identity"]
    orphan = hive("o", role="worker")
    assert system_nodes(orphan) == ["SY.admin"]
    assert len(build_daemon_set(orphan, "ns", SETTINGS)["spec"]["template"]["spec"]["containers"]) == 1


def test_the_identity_deployment_reads_its_database_url_from_the_bundled_or_the_users_secret() -> None:
    bundled = build_identity_deployment(hive("m"), "ns", SETTINGS)
    containers = {c["name"]: c for c in bundled["spec"]["template"]["spec"]["containers"]}
    assert set(containers) == {"router", "identity"}
    env = {e["name"]: e for e in containers["identity"]["env"]}
    assert env["FLUXBEE_IDENTITY_DB_URL"]["valueFrom"]["secretKeyRef"] == {"name": "m-postgres", "key": "url"}
    assert "--mesh-dns" in args_of(containers["router"])
    url = build_identity_deployment(hive("m", identity={"database": {"mode": "url",
                                                                     "urlSecret": {"name": "pg", "key": "dsn"}}}),
                                    "ns", SETTINGS)
    env = {e["name"]: e for e in url["spec"]["template"]["spec"]["containers"][1]["env"]}
    assert env["FLUXBEE_IDENTITY_DB_URL"]["valueFrom"]["secretKeyRef"] == {"name": "pg", "key": "dsn"}
    sts = build_postgres_stateful_set(hive("m", identity={"database": {"storage": "5Gi", "storageClassName": "ssd",
                                                                       "image": "pg:16"}}), "ns", SETTINGS)
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi" and claim["spec"]["storageClassName"] == "ssd"
    assert sts["spec"]["template"]["spec"]["containers"][0]["image"] == "pg:16"
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"


# --- certificates -----------------------------------------------------------------------------------


def secret(data: dict[str, str]) -> dict[str, Any]:
    return {"data": data}


def test_a_users_secret_must_name_this_hive_and_hold_all_three_keys() -> None:
    ca, ca_key = make_ca("test")
    cert, key = issue_hive_cert(ca, ca_key, "h")
    assert check_user_secret(secret(tls_data(cert, key, ca)), "mine", "h").hive_id == "h"
    problems = {
        "CertificateSecretNotFound": None,
        "CertificateSecretIncomplete": secret(tls_data(cert, key)),
        "CertificateHiveMismatch": secret(tls_data(*issue_hive_cert(ca, ca_key, "other"), ca)),
        "CertificateNotFromCa": secret(tls_data(cert, key, make_ca("another")[0])),
        "CertificateInvalid": secret({**tls_data(cert, key, ca), "tls.crt": base64.b64encode(b"junk").decode()}),
    }
    for reason, bad in problems.items():
        with pytest.raises(SecretProblem) as err:
            check_user_secret(bad, "mine", "h")
        assert err.value.reason == reason, err.value


def test_a_generated_certificate_is_renewed_near_expiry_or_when_the_ca_or_hive_changed() -> None:
    ca, ca_key = make_ca("test")
    cert, key = issue_hive_cert(ca, ca_key, "h", days=365)
    good = secret(tls_data(cert, key, ca))
    kept = generated_still_good(good, ca, "h")
    assert kept is not None and hive_id_of(cert) == "h"
    late = kept.not_after - RENEW_BEFORE + datetime.timedelta(hours=1)
    assert generated_still_good(good, ca, "h", now=late) is None
    assert generated_still_good(good, make_ca("new")[0], "h") is None
    assert generated_still_good(good, ca, "other") is None
    assert generated_still_good(None, ca, "h") is None


def test_a_damaged_ca_is_reported_not_replaced() -> None:
    ca, ca_key = make_ca("test")
    assert check_ca_secret(secret(tls_data(ca, ca_key)), "ca") == (ca, ca_key)
    cert, key = issue_hive_cert(ca, ca_key, "h")
    for bad in (secret(tls_data(cert, key)), secret(tls_data(ca, make_ca("x")[1])), secret({})):
        with pytest.raises(SecretProblem):
            check_ca_secret(bad, "ca")


def test_every_command_the_operator_writes_parses_with_the_real_cli() -> None:
    from fluxbee.cli import build_parser

    parser = build_parser()
    mother = hive("m", wan={"uplinks": [{"service": "w-gateway"}], "authorizedHives": ["w"]})
    worker = hive("w", role="worker", identity={"primaryHive": "m"})
    manifests = [build_daemon_set(mother, "ns", SETTINGS), build_daemon_set(worker, "ns", SETTINGS),
                 build_gateway_deployment(mother, "ns", SETTINGS), build_identity_deployment(mother, "ns", SETTINGS)]
    seen = set()
    for manifest in manifests:
        for container in manifest["spec"]["template"]["spec"]["containers"]:
            command = args_of(container)
            assert command[0] == "fluxbee"
            parsed = parser.parse_args(command[1:])  # argparse exits (SystemExit) on an unknown flag
            seen.add(tuple(command[1:3]))
            if command[1] == "identity":
                assert parsed.hive_id in ("m", "w")
    assert seen == {("router", "--hive-id"), ("identity", "serve")}


@pytest.mark.parametrize("value", ["0", "-5", "soon", "inf", "nan"])
def test_a_bad_resync_interval_is_refused_by_name(value: str) -> None:
    with pytest.raises(SettingsError, match="FLUXBEE_OPERATOR_RESYNC_INTERVAL"):
        OperatorSettings.from_env({"FLUXBEE_OPERATOR_RESYNC_INTERVAL": value})
    assert OperatorSettings.from_env({"FLUXBEE_OPERATOR_RESYNC_INTERVAL": "2.5"}).resync_interval == 2.5
    assert OperatorSettings.from_env({}).resync_interval == 600.0


def test_the_operator_cli_refuses_a_bad_resync_interval() -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "fluxbee", "operator", "--resync-interval", "0"],
                          capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and "--resync-interval: must be a positive number of seconds" in done.stderr
