"""What a hive's routers need to link: object names, router flags and the certificate mount (pure).

Every router of a hive — one per host in the DaemonSet, the gateway, the identity pod's — meshes
with the others: it listens on ``spec.meshPort`` and finds its peers by resolving the headless
Service ``<hive>-mesh`` (``publishNotReadyAddresses``, so a router that is still starting is found
too).  All of them present the hive's certificate: the user's TLS Secret (``spec.wan.certificate``)
or ``<hive>-wan-tls``, which the operator issues from its CA.  The gateway adds the WAN flags.
"""

from __future__ import annotations

from fluxbee.models import Hive
from fluxbee.models.links import port_of

MESH_LABEL = "fluxbee.io/mesh"
"""Label on every router pod of a hive (value: the Hive's name); the mesh Service selects it."""
LINK_MOUNT = "/etc/fluxbee/link"
LINK_VOLUME = "link-tls"
TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"
CA_CERT = "ca.crt"
WAN_PORT_NAME = "wan"
MESH_PORT_NAME = "mesh"


def mesh_service_name(hive: Hive) -> str:
    return f"{hive.metadata.name}-mesh"


def gateway_name(hive: Hive) -> str:
    """The gateway Deployment and its Service share this name."""
    return f"{hive.metadata.name}-gateway"


def generated_certificate_name(hive: Hive) -> str:
    return f"{hive.metadata.name}-wan-tls"


def certificate_secret(hive: Hive) -> str:
    """The TLS Secret the hive's routers present: the user's, else the generated one."""
    wan = hive.spec.wan
    if wan is not None and wan.certificate is not None:
        return wan.certificate.secret_name
    return generated_certificate_name(hive)


def user_certificate(hive: Hive) -> bool:
    return hive.spec.wan is not None and hive.spec.wan.certificate is not None


def mesh_dns(hive: Hive, namespace: str) -> str:
    return f"{mesh_service_name(hive)}.{namespace}.svc:{hive.spec.mesh_port}"


def certificate_dns_names(hive: Hive, namespace: str) -> list[str]:
    """Names a peer may dial this hive's routers by (for peers that also check the host name)."""
    out = []
    for service in (gateway_name(hive), mesh_service_name(hive)):
        out += [service, f"{service}.{namespace}", f"{service}.{namespace}.svc"]
    return out


def mesh_args(hive: Hive, namespace: str) -> list[str]:
    """Router flags of every router of the hive: mesh listener, peer discovery, certificate."""
    return [
        "--mesh-listen", f"0.0.0.0:{hive.spec.mesh_port}",
        "--mesh-dns", mesh_dns(hive, namespace),
        "--wan-cert", f"{LINK_MOUNT}/{TLS_CERT}",
        "--wan-key", f"{LINK_MOUNT}/{TLS_KEY}",
        "--wan-ca-cert", f"{LINK_MOUNT}/{CA_CERT}",
    ]


def wan_args(hive: Hive, namespace: str) -> list[str]:
    """The gateway's extra flags: listener, uplinks (Services by cluster DNS name), authorised hives."""
    wan = hive.spec.wan
    if wan is None:
        return []
    out = ["--wan-listen", wan.listen]
    for uplink in wan.uplinks:
        out += ["--uplink", uplink.target(namespace)]
    for peer in wan.authorized_hives:
        out += ["--authorized-hive", peer]
    return out


def wan_port(hive: Hive) -> int:
    return port_of(hive.spec.wan.listen) if hive.spec.wan is not None else 0


def link_volume(hive: Hive) -> dict[str, object]:
    """The certificate Secret as a volume (only the three keys, whatever else it holds)."""
    return {
        "name": LINK_VOLUME,
        "secret": {
            "secretName": certificate_secret(hive),
            "items": [{"key": k, "path": k} for k in (TLS_CERT, TLS_KEY, CA_CERT)],
        },
    }


LINK_VOLUME_MOUNT = {"name": LINK_VOLUME, "mountPath": LINK_MOUNT, "readOnly": True}


def wan_problem(hive: Hive, namespace: str) -> tuple[str, str] | None:
    """(reason, message) when ``spec.wan`` cannot work as written although each field is valid."""
    wan = hive.spec.wan
    if wan is None:
        return None
    own = f"{gateway_name(hive)}.{namespace}.svc"
    for index, uplink in enumerate(wan.uplinks):
        if uplink.service is not None and uplink.target(namespace).rsplit(":", 1)[0] == own:
            return ("WanUplinkToSelf",
                    f"spec.wan.uplinks[{index}] is this hive's own gateway Service {gateway_name(hive)}")
    if hive.hive_id in wan.authorized_hives:
        return ("WanAuthorizesSelf", f"spec.wan.authorizedHives lists this hive ({hive.hive_id}) itself")
    targets = [u.target(namespace) for u in wan.uplinks]
    if len(set(targets)) != len(targets):
        return ("WanUplinkTwice", "spec.wan.uplinks names one address twice")
    return None
