"""Links and identity on the real control plane: ``Hive.spec.wan``, the mesh, certificates, SY.identity.

The operator runs as a user runs it (``fluxbee operator --namespace NS`` with a token of the chart's
ServiceAccount only), so each object it makes here is one the chart's Role lets it make.  The
garbage collector, the StatefulSet controller (which makes the PersistentVolumeClaim), the API
server's validation and kwok's kubelets are the real ones; the routers' own link behaviour is not
exercised here (kwok runs no containers).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from cluster_support import ControlPlane
from cryptography import x509
from operator_support import (
    FluxbeeProcess,
    Release,
    apply,
    condition,
    get,
    objects,
    reconciled,
    running_pods,
    start_operator,
)

from fluxbee.dataplane.link.certs import hive_id_of, issue_hive_cert, make_ca

CA_SECRET = "fluxbee-wan-ca"


def hive(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "fluxbee.io/v1alpha1", "kind": "Hive", "metadata": {"name": name},
            "spec": {"nodeSelector": {"type": "kwok"}, **spec}}


def tls_secret(name: str, cert: bytes, key: bytes, ca: bytes | None) -> dict[str, Any]:
    data = {"tls.crt": cert, "tls.key": key, **({"ca.crt": ca} if ca is not None else {})}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque",
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}


def secret_data(cp: ControlPlane, ns: str, name: str) -> dict[str, bytes]:
    found = get(cp, ns, "secret", name)
    assert found is not None, f"Secret {name} missing"
    return {k: base64.b64decode(v) for k, v in (found.get("data") or {}).items()}


def flags(container: dict[str, Any], flag: str) -> list[str]:
    args: list[str] = container["command"]
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


def containers(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in manifest["spec"]["template"]["spec"]["containers"]}


def owner_uids(obj: dict[str, Any] | None) -> set[str]:
    return {r["uid"] for r in ((obj or {}).get("metadata") or {}).get("ownerReferences") or []}


def verifies(cert_pem: bytes, ca_pem: bytes) -> bool:
    x509.load_pem_x509_certificate(cert_pem).verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
    return True


def degraded(cp: ControlPlane, ns: str, name: str, reason: str) -> Any:
    def probe() -> dict[str, Any] | None:
        obj = get(cp, ns, "hive", name)
        conds = ((obj or {}).get("status") or {}).get("conditions") or []
        return obj if any(c["type"] == "Degraded" and c["reason"] == reason for c in conds) else None

    return probe


def test_a_mother_hive_with_wan_gets_mesh_gateway_certificate_and_identity_all_gone_with_it(
        control_plane: ControlPlane, namespace: str, operator: FluxbeeProcess) -> None:
    cp, ns = control_plane, namespace
    apply(cp, ns, hive("mother", wan={"listen": "0.0.0.0:9000", "authorizedHives": ["worker"],
                                      "uplinks": [{"service": "other-gateway"}, {"address": "203.0.113.5:9000"}]}))
    mother = operator.wait_for("the mother hive Ready", reconciled(cp, ns, "hive", "mother", "Ready"), timeout=90)
    uid = mother["metadata"]["uid"]
    assert mother["status"]["linkCertificate"] == "mother-wan-tls" and mother["status"]["gateway"] == "mother-gateway"

    # The certificate: issued from the operator's CA, naming the hive.
    ca = secret_data(cp, ns, CA_SECRET)
    tls = secret_data(cp, ns, "mother-wan-tls")
    assert hive_id_of(tls["tls.crt"]) == "mother" and verifies(tls["tls.crt"], ca["tls.crt"])
    assert tls["ca.crt"] == ca["tls.crt"] and "tls.key" in tls
    assert not owner_uids(get(cp, ns, "secret", CA_SECRET))  # the CA belongs to no hive

    # Every router meshes: the DaemonSet's, the gateway's, the identity pod's.
    ds = get(cp, ns, "daemonset", "mother-hive")
    assert ds is not None
    hive_pod = containers(ds)
    assert flags(hive_pod["router"], "--mesh-listen") == ["0.0.0.0:9001"]
    assert flags(hive_pod["router"], "--mesh-dns") == [f"mother-mesh.{ns}.svc:9001"]
    assert flags(hive_pod["router"], "--wan-cert") == ["/etc/fluxbee/link/tls.crt"]
    assert flags(hive_pod["router"], "--wan-ca-cert") == ["/etc/fluxbee/link/ca.crt"]
    assert not flags(hive_pod["router"], "--wan-listen")
    volumes = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    assert volumes["link-tls"]["secret"]["secretName"] == "mother-wan-tls"
    mesh = get(cp, ns, "service", "mother-mesh")
    assert mesh is not None and mesh["spec"]["clusterIP"] == "None" and mesh["spec"]["publishNotReadyAddresses"]

    gateway = get(cp, ns, "deployment", "mother-gateway")
    assert gateway is not None and gateway["spec"]["replicas"] == 1
    router = containers(gateway)["router"]
    assert flags(router, "--wan-listen") == ["0.0.0.0:9000"]
    assert flags(router, "--uplink") == [f"other-gateway.{ns}.svc:9000", "203.0.113.5:9000"]
    assert flags(router, "--authorized-hive") == ["worker"]
    assert flags(router, "--mesh-dns") == [f"mother-mesh.{ns}.svc:9001"]
    service = get(cp, ns, "service", "mother-gateway")
    assert service is not None and service["spec"]["ports"][0]["port"] == 9000
    assert service["spec"]["ports"][0]["targetPort"] == "wan"

    # SY.identity: primary Deployment (its own router in the mesh), bundled PostgreSQL with a claim,
    # a replica in every hive pod; their tokens and claims.
    identity = get(cp, ns, "deployment", "mother-identity")
    assert identity is not None
    pod = containers(identity)
    assert set(pod) == {"router", "identity"} and flags(pod["router"], "--mesh-dns")
    env = {e["name"]: e for e in pod["identity"]["env"]}
    assert env["FLUXBEE_IDENTITY_DB_URL"]["valueFrom"]["secretKeyRef"] == {"name": "mother-postgres", "key": "url"}
    url = secret_data(cp, ns, "mother-postgres")["url"].decode()
    assert url.startswith("postgresql://fluxbee:") and f"@mother-postgres.{ns}.svc:5432/fluxbee_identity" in url
    assert get(cp, ns, "statefulset", "mother-postgres") is not None
    assert get(cp, ns, "service", "mother-postgres") is not None
    operator.wait_for("the PostgreSQL claim made by the StatefulSet controller",
                      lambda: get(cp, ns, "persistentvolumeclaim", "data-mother-postgres-0"))
    key = secret_data(cp, ns, "mother-identity-key")
    assert key["signing.key"].startswith(b"-----BEGIN PRIVATE KEY") and key["signing.key.pub"]
    published = get(cp, ns, "configmap", "fluxbee-identity-key")
    assert published is not None and published["data"]["ed25519.pub"].encode() == key["signing.key.pub"]
    replica = hive_pod["identity-replica"]
    assert flags(replica, "--primary") == ["SY.identity@mother"]
    assert flags(replica, "--node-name") == ["SY.identity.replica"]
    claims = get(cp, ns, "configmap", "mother-claims")
    assert claims is not None and {"SY.admin", "SY.identity", "SY.identity.replica"} <= set(claims["data"])
    assert {"SY.identity", "SY.identity.replica"} <= set(secret_data(cp, ns, "mother-system-credentials"))

    # kwok runs every router pod; the mesh Service resolves to all of them (3 hosts, gateway, identity).
    operator.wait_for("gateway and identity pods Running", lambda: len(running_pods(
        cp, ns, "fluxbee.io/mesh=mother")) == 5 or None, timeout=90)

    def mesh_addresses() -> int | None:
        slices = objects(cp, ns, "endpointslices", "kubernetes.io/service-name=mother-mesh")
        n = sum(len(e.get("addresses") or []) for s in slices for e in s.get("endpoints") or [])
        return n if n == 5 else None

    operator.wait_for("the mesh Service's endpoints: every router", mesh_addresses, timeout=90)

    # A new storage size cannot change an existing StatefulSet's claim template (the API server
    # refuses it): the hive stays Ready at its new generation and the claim keeps its size.
    cp.kubectl("-n", ns, "patch", "hive", "mother", "--type=merge",
               "-p", '{"spec": {"identity": {"database": {"storage": "2Gi"}}}}')
    operator.wait_for("mother Ready at generation 2", lambda: (h := reconciled(cp, ns, "hive", "mother", "Ready")())
                      and h["metadata"]["generation"] == 2 and h, timeout=90)
    sts = get(cp, ns, "statefulset", "mother-postgres") or {}
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "1Gi"

    # All of it is the Hive's and goes with it; what keeps data stays (documented).
    owned = [("deployment", "mother-gateway"), ("service", "mother-gateway"), ("service", "mother-mesh"),
             ("deployment", "mother-identity"), ("statefulset", "mother-postgres"), ("service", "mother-postgres"),
             ("secret", "mother-wan-tls"), ("daemonset", "mother-hive")]
    for kind, name in owned:
        assert uid in owner_uids(get(cp, ns, kind, name)), f"{kind}/{name} is not owned by the Hive"
    cp.kubectl("-n", ns, "delete", "hive", "mother", "--wait=false")

    def gone() -> bool:
        return all(get(cp, ns, kind, name) is None for kind, name in owned)

    operator.wait_for("everything the Hive owned gone", gone, timeout=90)
    for kept in (("secret", CA_SECRET), ("secret", "mother-postgres"), ("secret", "mother-identity-key"),
                 ("persistentvolumeclaim", "data-mother-postgres-0")):
        assert get(cp, ns, *kept) is not None, f"{kept} should outlive the Hive"


def test_the_ca_is_made_once_and_reused_by_a_second_hive_and_after_an_operator_restart(
        control_plane: ControlPlane, release: Release, namespace: str, tmp_path: Path) -> None:
    cp, ns = control_plane, namespace
    first = start_operator(cp, release, tmp_path, label="first")
    try:
        apply(cp, ns, hive("alpha"))
        first.wait_for("alpha Ready", reconciled(cp, ns, "hive", "alpha", "Ready"), timeout=90)
    finally:
        first.stop()
    ca_before = get(cp, ns, "secret", CA_SECRET)
    alpha_before = get(cp, ns, "secret", "alpha-wan-tls")
    assert ca_before is not None and alpha_before is not None

    second = start_operator(cp, release, tmp_path, label="second")
    try:
        apply(cp, ns, hive("beta", role="worker", identity={"primaryHive": "alpha"}))
        beta = second.wait_for("beta Ready", reconciled(cp, ns, "hive", "beta", "Ready"), timeout=90)
        # a Hive event after the restart: alpha is reconciled again and keeps its certificate
        cp.kubectl("-n", ns, "annotate", "hive", "alpha", "touched=1")
        second.wait_for("beta's certificate", lambda: get(cp, ns, "secret", "beta-wan-tls"))
    finally:
        second.stop()
    ca_after = get(cp, ns, "secret", CA_SECRET)
    assert ca_after is not None
    assert (ca_after["metadata"]["uid"], ca_after["data"]) == (ca_before["metadata"]["uid"], ca_before["data"])
    alpha_after = get(cp, ns, "secret", "alpha-wan-tls")
    assert alpha_after is not None and alpha_after["data"] == alpha_before["data"]
    ca = base64.b64decode(ca_after["data"]["tls.crt"])
    for name, hive_id in (("alpha-wan-tls", "alpha"), ("beta-wan-tls", "beta")):
        cert = secret_data(cp, ns, name)["tls.crt"]
        assert hive_id_of(cert) == hive_id and verifies(cert, ca)

    # A worker gets neither SY.identity's Deployment nor PostgreSQL; its replicas follow alpha.
    assert beta["status"]["identity"] == "a replica of SY.identity@alpha in every hive pod"
    for kind, name in (("deployment", "beta-identity"), ("statefulset", "beta-postgres"),
                       ("secret", "beta-postgres"), ("secret", "beta-identity-key"), ("deployment", "beta-gateway")):
        assert get(cp, ns, kind, name) is None, f"a worker without spec.wan got {kind}/{name}"
    replica = containers(get(cp, ns, "daemonset", "beta-hive") or {})["identity-replica"]
    assert flags(replica, "--primary") == ["SY.identity@alpha"] and flags(replica, "--node-name") == ["SY.identity"]


def test_a_users_certificate_is_checked_used_and_never_written(
        control_plane: ControlPlane, namespace: str, operator: FluxbeeProcess) -> None:
    cp, ns = control_plane, namespace
    ca, ca_key = make_ca("the user's CA")
    wrong_cert, wrong_key = issue_hive_cert(ca, ca_key, "somebody-else")
    spec = {"wan": {"certificate": {"secretName": "mine"}}}

    # Missing, then naming another hive: Degraded with the reason, and nothing made for the hive.
    apply(cp, ns, hive("own", **spec))
    missing = operator.wait_for("own Degraded: no Secret", degraded(cp, ns, "own", "CertificateSecretNotFound"))
    assert "mine" in condition(missing, "Degraded")["message"]
    apply(cp, ns, tls_secret("mine", wrong_cert, wrong_key, ca))
    mismatch = operator.wait_for("own Degraded: another hive's certificate",
                                 degraded(cp, ns, "own", "CertificateHiveMismatch"), timeout=90)
    assert "somebody-else" in condition(mismatch, "Degraded")["message"]
    for kind in ("daemonset", "deployment", "service", "configmap"):
        assert objects(cp, ns, kind, "fluxbee.io/hive=own") == [], f"a {kind} was made for a refused hive"
    assert get(cp, ns, "secret", "own-wan-tls") is None and get(cp, ns, "secret", CA_SECRET) is None

    # Fixed by the user (no edit of the Hive): picked up, mounted, and never written by the operator.
    cert, key = issue_hive_cert(ca, ca_key, "own")
    apply(cp, ns, tls_secret("mine", cert, key, ca))
    written = (get(cp, ns, "secret", "mine") or {})["metadata"]["resourceVersion"]
    own = operator.wait_for("own Ready with the user's certificate", reconciled(cp, ns, "hive", "own", "Ready"),
                            timeout=90)
    assert own["status"]["linkCertificate"] == "mine"
    for name in ("own-hive", "own-gateway"):
        kind = "daemonset" if name == "own-hive" else "deployment"
        template = (get(cp, ns, kind, name) or {})["spec"]["template"]["spec"]
        assert {v["name"]: v for v in template["volumes"]}["link-tls"]["secret"]["secretName"] == "mine"
    assert (get(cp, ns, "secret", "mine") or {})["metadata"]["resourceVersion"] == written
    assert secret_data(cp, ns, "mine")["tls.crt"] == cert
    assert get(cp, ns, "secret", "own-wan-tls") is None


def test_a_bad_spec_wan_is_refused_by_the_api_server_or_ends_degraded_with_nothing_made(
        control_plane: ControlPlane, namespace: str, operator: FluxbeeProcess) -> None:
    cp, ns = control_plane, namespace
    for wan, says in (({"listen": "0.0.0.0:70000"}, "spec.wan.listen"),
                      ({"uplinks": [{"address": "a.example:9000", "service": "b-gateway"}]},
                       "an uplink names exactly one of address or service"),
                      ({"authorizedHives": ["has.dots"]}, "spec.wan.authorizedHives[0]")):
        refused = apply(cp, ns, hive("bad", wan=wan), check=False)
        assert refused.returncode != 0 and says in refused.stderr, (wan, refused.stderr)
    assert get(cp, ns, "hive", "bad") is None

    # Valid field by field, but it dials itself: a condition, and no object at all.
    apply(cp, ns, hive("loop", wan={"uplinks": [{"service": "loop-gateway"}]}))
    loop = operator.wait_for("loop Degraded", degraded(cp, ns, "loop", "WanUplinkToSelf"))
    assert "loop-gateway" in condition(loop, "Degraded")["message"]
    assert condition(loop, "Ready")["status"] == "False"
    for kind in ("daemonset", "deployment", "statefulset", "service", "configmap", "secret"):
        assert objects(cp, ns, kind, "fluxbee.io/hive=loop") == [], f"a {kind} was made for a refused hive"

    # An edit that breaks a running hive leaves what runs as it was.
    apply(cp, ns, hive("steady"))
    operator.wait_for("steady Ready", reconciled(cp, ns, "hive", "steady", "Ready"), timeout=90)
    ds = get(cp, ns, "daemonset", "steady-hive")
    assert ds is not None
    cp.kubectl("-n", ns, "patch", "hive", "steady", "--type=merge",
               "-p", '{"spec": {"wan": {"uplinks": [{"service": "steady-gateway"}]}}}')
    operator.wait_for("steady Degraded", degraded(cp, ns, "steady", "WanUplinkToSelf"))
    assert (get(cp, ns, "daemonset", "steady-hive") or {})["metadata"]["uid"] == ds["metadata"]["uid"]
    assert get(cp, ns, "deployment", "steady-gateway") is None


def test_url_mode_uses_the_users_database_secret_and_bundles_no_postgres(
        control_plane: ControlPlane, namespace: str, operator: FluxbeeProcess) -> None:
    cp, ns = control_plane, namespace
    apply(cp, ns, hive("mother", identity={"database": {"mode": "url", "urlSecret": {"name": "pg", "key": "dsn"}}}))
    waiting = operator.wait_for("Degraded until the Secret exists",
                                degraded(cp, ns, "mother", "DatabaseSecretNotFound"))
    assert "pg" in condition(waiting, "Degraded")["message"]
    assert get(cp, ns, "deployment", "mother-identity") is None
    apply(cp, ns, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pg"},
                   "stringData": {"dsn": "postgresql://id:secret@db.example:5432/any"}})
    operator.wait_for("mother Ready", reconciled(cp, ns, "hive", "mother", "Ready"), timeout=90)
    identity = get(cp, ns, "deployment", "mother-identity")
    assert identity is not None
    env = {e["name"]: e for e in containers(identity)["identity"]["env"]}
    assert env["FLUXBEE_IDENTITY_DB_URL"]["valueFrom"]["secretKeyRef"] == {"name": "pg", "key": "dsn"}
    for kind in ("statefulset", "service", "secret"):
        assert get(cp, ns, kind, "mother-postgres") is None, f"url mode made {kind}/mother-postgres"
    assert objects(cp, ns, "persistentvolumeclaims") == []


def test_a_generated_certificate_close_to_expiry_or_naming_another_hive_is_reissued(
        control_plane: ControlPlane, release: Release, namespace: str, tmp_path: Path) -> None:
    """The operator watches no Secret: the periodic reconcile (``--resync-interval``) finds them."""
    cp, ns = control_plane, namespace
    operator = start_operator(cp, release, tmp_path, "--resync-interval", "2")
    try:
        _reissued(cp, ns, operator)
    finally:
        operator.stop()


def _reissued(cp: ControlPlane, ns: str, operator: FluxbeeProcess) -> None:
    apply(cp, ns, hive("renewed", identity={"enabled": False}))
    operator.wait_for("renewed Ready", reconciled(cp, ns, "hive", "renewed", "Ready"), timeout=90)
    ca = secret_data(cp, ns, CA_SECRET)
    for hive_id, days in (("renewed", 10), ("intruder", 365)):
        cert, key = issue_hive_cert(ca["tls.crt"], ca["tls.key"], hive_id, days=days)
        patch = {"data": {"tls.crt": base64.b64encode(cert).decode(), "tls.key": base64.b64encode(key).decode()}}
        cp.kubectl("-n", ns, "patch", "secret", "renewed-wan-tls", "--type=merge", "-p", json.dumps(patch))

        def reissued(cert: bytes = cert) -> bytes | None:
            now = secret_data(cp, ns, "renewed-wan-tls")["tls.crt"]
            return now if now != cert else None

        fresh = operator.wait_for(f"a certificate replacing the one for {hive_id} valid {days} days", reissued)
        parsed = x509.load_pem_x509_certificate(fresh)
        assert hive_id_of(fresh) == "renewed" and verifies(fresh, ca["tls.crt"])
        assert (parsed.not_valid_after_utc - parsed.not_valid_before_utc).days >= 364
    cp.kubectl("-n", ns, "delete", "secret", "renewed-wan-tls")
    back = operator.wait_for("a deleted certificate Secret put back", lambda: get(cp, ns, "secret", "renewed-wan-tls"))
    cert = base64.b64decode(back["data"]["tls.crt"])
    assert hive_id_of(cert) == "renewed" and verifies(cert, ca["tls.crt"])
    renewed = operator.wait_for("the status names the new expiry", lambda: (h := get(cp, ns, "hive", "renewed")) and (
        h["status"].get("linkCertificateNotAfter") == x509.load_pem_x509_certificate(cert).not_valid_after_utc
        .strftime("%Y-%m-%dT%H:%M:%SZ")) and h)
    assert renewed["status"]["linkCertificate"] == "renewed-wan-tls"
