"""Reading a kubeconfig and the in-cluster service account: what the operator and admin log in with."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from fluxbee.kube import KubeConfig, KubeConfigError

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def doc(user: dict[str, Any] | None = None, cluster: dict[str, Any] | None = None,
        context: dict[str, Any] | None = None, current: str | None = "c") -> dict[str, Any]:
    out: dict[str, Any] = {
        "clusters": [{"name": "k", "cluster": cluster if cluster is not None else {"server": "https://api:6443"}}],
        "users": [{"name": "u", "user": user if user is not None else {"token": "t0k"}}],
        "contexts": [{"name": "c", "context": context or {"cluster": "k", "user": "u"}}],
    }
    if current:
        out["current-context"] = current
    return out


def load(*docs: dict[str, Any], context: str | None = None) -> KubeConfig:
    return KubeConfig.from_kubeconfig([(Path(f"/home/me/.kube/f{i}"), d) for i, d in enumerate(docs)], context)


def test_a_token_user_with_inline_ca_and_the_contexts_namespace() -> None:
    config = load(doc(cluster={"server": "https://api:6443/", "certificate-authority-data": b64(PEM)},
                      context={"cluster": "k", "user": "u", "namespace": "hives"}))
    assert (config.server, config.token, config.ca_data, config.namespace) == ("https://api:6443", "t0k", PEM,
                                                                              "hives")
    assert config.ca_file is None and not config.insecure and "context 'c'" in config.source


def test_relative_certificate_paths_are_relative_to_their_kubeconfig() -> None:
    config = load(doc(user={"client-certificate": "certs/me.crt", "client-key": "/abs/me.key"},
                      cluster={"server": "https://api", "certificate-authority": "ca.crt",
                               "insecure-skip-tls-verify": True}))
    assert config.cert_file == "/home/me/.kube/certs/me.crt" and config.key_file == "/abs/me.key"
    assert config.ca_file == "/home/me/.kube/ca.crt" and config.insecure and config.token is None


def test_merged_kubeconfigs_take_the_first_current_context_and_the_first_definition() -> None:
    first = {"current-context": "c", "users": [{"name": "u", "user": {"token": "first"}}]}
    second = doc(user={"token": "second"}, current="other")
    assert load(first, second).token == "first"


def test_a_named_context_wins_over_the_current_one() -> None:
    d = doc()
    d["contexts"].append({"name": "x", "context": {"cluster": "k", "user": "nobody"}})
    with pytest.raises(KubeConfigError, match="context 'x' names user 'nobody', which is not defined"):
        load(d, context="x")


def test_a_token_file_is_read(tmp_path: Path) -> None:
    (tmp_path / "tok").write_text("from-file\n")
    config = KubeConfig.from_kubeconfig([(tmp_path / "config", doc(user={"tokenFile": "tok"}))])
    assert config.token == "from-file"


@pytest.mark.parametrize(("document", "message"), [
    (doc(current=None), "sets no current-context"),
    (doc(context={"cluster": "gone", "user": "u"}), "context 'c' names no defined cluster"),
    (doc(cluster={"certificate-authority": "x"}), "cluster 'k' has no server"),
    (doc(user={}), "user 'u' has no credentials: give it a token"),
    (doc(user={"client-key-data": b64("-----BEGIN KEY-----\n")}), "has a client key but no client-certificate"),
    (doc(cluster={"server": "https://a", "certificate-authority-data": "not base64!"}),
     "certificate-authority-data is not base64 of PEM text"),
])
def test_an_unusable_kubeconfig_is_refused_naming_what_is_missing(document: dict[str, Any], message: str) -> None:
    with pytest.raises(KubeConfigError, match=message):
        load(document)


def test_a_plain_http_server_needs_no_user_and_a_plugin_user_is_marked() -> None:
    assert load(doc(user={}, cluster={"server": "http://127.0.0.1:8001"})).token is None
    plugin = load(doc(user={"exec": {"command": "aws", "apiVersion": "client.authentication.k8s.io/v1"}}))
    assert plugin.needs_plugin and plugin.plugin == "exec"


def test_in_cluster_wins_and_the_service_account_directory_can_be_moved(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("sa-token\n")
    (tmp_path / "ca.crt").write_text(PEM)
    (tmp_path / "namespace").write_text("fluxbee\n")
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443",
           "FLUXBEE_SERVICE_ACCOUNT_DIR": str(tmp_path), "KUBECONFIG": str(tmp_path / "absent")}
    config = KubeConfig.from_environment(env=env)
    assert (config.server, config.token, config.namespace) == ("https://[fd00::1]:6443", "sa-token", "fluxbee")
    assert config.ca_file == str(tmp_path / "ca.crt")


def test_no_cluster_and_no_kubeconfig_names_both(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "FLUXBEE_SERVICE_ACCOUNT_DIR": str(tmp_path)}
    with pytest.raises(KubeConfigError, match="KUBERNETES_SERVICE_HOST is not set.*KUBECONFIG is not set"):
        KubeConfig.from_environment(env=env)
    with pytest.raises(KubeConfigError, match="cannot read the kubeconfig"):
        KubeConfig.from_environment(env={**env, "KUBECONFIG": str(tmp_path / "missing")})
