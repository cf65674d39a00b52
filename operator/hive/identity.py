"""Hive → SY.identity's primary on a mother hive: a Deployment and its PostgreSQL (pure builders).

The primary runs in ``<hive>-identity`` (one replica) beside a router of its own that meshes with
the hive's other routers, so every node of the hive (and of linked hives) reaches it as
``SY.identity@<hive>``.  The pod has its own IPC namespace and socket directory: the identity
region of each host is written by the replica in that host's hive pod, not by the primary.

Its database (``spec.identity.database``):

* ``bundled`` (the default): a PostgreSQL StatefulSet ``<hive>-postgres`` with a PersistentVolumeClaim
  from ``storage``/``storageClassName`` and a Service of the same name; the operator makes the Secret
  ``<hive>-postgres`` (``password`` and the ``url`` SY.identity reads) once.
* ``url``: the PostgreSQL URL in the Secret key ``urlSecret`` (a server you run); nothing else is made.

What must outlive the Hive is not owned by it, so deleting a Hive does not lose it: the claim of the
data volume (the StatefulSet keeps its PersistentVolumeClaims), the ``<hive>-postgres`` Secret that
opens it, and the signing key ``<hive>-identity-key`` (graduations already issued were signed with
it).  A Hive created again under the same name finds and uses all three.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

from fluxbee.dataplane.names import IDENTITY_NODE
from fluxbee.models import Hive
from fluxbee.operator import labels as L
from fluxbee.operator.hive.build import (
    CREDENTIAL_DIR,
    CREDENTIAL_ENV,
    CREDENTIAL_FILE,
    RUN_DIR,
    credential_volume,
    labels,
    placement,
    router_container,
    system_credential_volume,
)
from fluxbee.operator.hive.gateway import one_router_pod_deployment, private_run_volumes
from fluxbee.operator.settings import OperatorSettings

IDENTITY_COMPONENT = "identity"
POSTGRES_COMPONENT = "postgres"
POSTGRES_PORT = 5432
POSTGRES_USER = "fluxbee"
DATABASE = "fluxbee_identity"
"""SY.identity's database name (fixed, as in the original)."""
DB_URL_ENV = "FLUXBEE_IDENTITY_DB_URL"
KEY_MOUNT = "/etc/fluxbee/identity-key"
KEY_FILE = "signing.key"
PUBLIC_KEY_FILE = "signing.key.pub"
"""SY.identity writes the public key next to the private one unless it is there and equal; the
Secret carries both, so the read-only mount is never written to."""
URL_KEY = "url"
PASSWORD_KEY = "password"


def identity_name(hive: Hive) -> str:
    return f"{hive.metadata.name}-identity"


def signing_key_secret(hive: Hive) -> str:
    return f"{hive.metadata.name}-identity-key"


def postgres_name(hive: Hive) -> str:
    """The StatefulSet, its Service and its Secret share this name."""
    return f"{hive.metadata.name}-postgres"


def identity_selector(hive: Hive) -> dict[str, str]:
    return {L.HIVE: hive.metadata.name, L.COMPONENT: IDENTITY_COMPONENT}


def postgres_selector(hive: Hive) -> dict[str, str]:
    return {L.HIVE: hive.metadata.name, L.COMPONENT: POSTGRES_COMPONENT}


def database_url_ref(hive: Hive) -> tuple[str, str]:
    """(Secret, key) holding the URL SY.identity connects to."""
    db = hive.spec.identity.database
    if db.mode == "url" and db.url_secret is not None:
        return db.url_secret.name, db.url_secret.key
    return postgres_name(hive), URL_KEY


def postgres_url(hive: Hive, namespace: str, password: str) -> str:
    return (f"postgresql://{POSTGRES_USER}:{quote(password, safe='')}@{postgres_name(hive)}.{namespace}.svc:"
            f"{POSTGRES_PORT}/{DATABASE}")


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def build_postgres_secret(hive: Hive, namespace: str, password: str) -> dict[str, Any]:
    """The bundled server's password and SY.identity's URL to it (made once, never rewritten)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": postgres_name(hive), "namespace": namespace,
                     "labels": labels(hive, POSTGRES_COMPONENT)},
        "type": "Opaque",
        "data": {PASSWORD_KEY: _b64(password), URL_KEY: _b64(postgres_url(hive, namespace, password))},
    }


def build_signing_key_secret(hive: Hive, namespace: str, private_pem: bytes, public_pem: bytes) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": signing_key_secret(hive), "namespace": namespace,
                     "labels": labels(hive, IDENTITY_COMPONENT)},
        "type": "Opaque",
        "data": {KEY_FILE: _b64(private_pem), PUBLIC_KEY_FILE: _b64(public_pem)},
    }


def _identity_container(hive: Hive, settings: OperatorSettings, image: str) -> dict[str, Any]:
    secret, key = database_url_ref(hive)
    return {
        "name": "identity",
        "image": image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["fluxbee", "identity", "serve", "--hive-id", hive.hive_id, "--run-dir", RUN_DIR,
                    "--key", f"{KEY_MOUNT}/{KEY_FILE}"],
        "env": [
            {"name": "FLUXBEE_RUN_DIR", "value": RUN_DIR},
            {"name": "FLUXBEE_HIVE_ID", "value": hive.hive_id},
            {"name": CREDENTIAL_ENV, "value": CREDENTIAL_FILE},
            {"name": DB_URL_ENV, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}},
        ],
        "volumeMounts": [
            {"name": "sockets", "mountPath": RUN_DIR},
            {"name": credential_volume(IDENTITY_NODE), "mountPath": CREDENTIAL_DIR, "readOnly": True},
            {"name": "signing-key", "mountPath": KEY_MOUNT, "readOnly": True},
        ],
    }


def build_identity_deployment(hive: Hive, namespace: str, settings: OperatorSettings) -> dict[str, Any]:
    """SY.identity's primary and its router (one pod: a second primary would split the writes)."""
    image = hive.spec.image or settings.image
    return one_router_pod_deployment(
        hive, namespace, name=identity_name(hive), component=IDENTITY_COMPONENT, selector=identity_selector(hive),
        containers=[router_container(hive, namespace, settings, image), _identity_container(hive, settings, image)],
        volumes=[
            *private_run_volumes(hive),
            system_credential_volume(hive, IDENTITY_NODE),
            {"name": "signing-key", "secret": {"secretName": signing_key_secret(hive)}},
        ])


def build_postgres_service(hive: Hive, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": postgres_name(hive), "namespace": namespace,
                     "labels": labels(hive, POSTGRES_COMPONENT)},
        "spec": {
            "selector": postgres_selector(hive),
            "ports": [{"name": "postgres", "port": POSTGRES_PORT, "targetPort": "postgres", "protocol": "TCP"}],
        },
    }


def build_postgres_stateful_set(hive: Hive, namespace: str, settings: OperatorSettings) -> dict[str, Any]:
    """One PostgreSQL server on a PersistentVolumeClaim that outlives the StatefulSet (Retain)."""
    db = hive.spec.identity.database
    claim: dict[str, Any] = {
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": db.storage}}},
    }
    if db.storage_class_name:
        claim["spec"]["storageClassName"] = db.storage_class_name
    secret = postgres_name(hive)
    container = {
        "name": "postgres",
        "image": db.image or settings.postgres_image,
        "imagePullPolicy": settings.image_pull_policy,
        "env": [
            {"name": "POSTGRES_USER", "value": POSTGRES_USER},
            {"name": "POSTGRES_PASSWORD", "valueFrom": {"secretKeyRef": {"name": secret, "key": PASSWORD_KEY}}},
            {"name": "POSTGRES_DB", "value": DATABASE},
            {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
        ],
        "ports": [{"name": "postgres", "containerPort": POSTGRES_PORT, "protocol": "TCP"}],
        "readinessProbe": {"exec": {"command": ["pg_isready", "-U", POSTGRES_USER, "-d", DATABASE]},
                           "periodSeconds": 5},
        "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"}],
    }
    pod_spec: dict[str, Any] = {"containers": [container], "terminationGracePeriodSeconds": 30,
                                "automountServiceAccountToken": False}
    placement(hive, pod_spec)
    pod_labels = {**labels(hive, POSTGRES_COMPONENT), **postgres_selector(hive)}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": postgres_name(hive), "namespace": namespace,
                     "labels": labels(hive, POSTGRES_COMPONENT)},
        "spec": {
            "replicas": 1,
            "serviceName": postgres_name(hive),
            "selector": {"matchLabels": postgres_selector(hive)},
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"},
            "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
            "volumeClaimTemplates": [claim],
        },
    }
