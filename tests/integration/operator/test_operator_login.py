"""``fluxbee operator`` and ``fluxbee admin --backend kubernetes`` log in as users start them.

Each test starts the real entry point as a subprocess whose environment holds nothing but the
way to the API server (``KUBECONFIG``, or a service-account directory and
``KUBERNETES_SERVICE_HOST``/``PORT``), against the emulated API server behind HTTPS with a CA of
the test's own that answers 401 without the kubeconfig's token or client certificate.  Nothing is
injected: the subprocess must find the server, trust its CA and log in by itself, and then do
something observable (a Hive becomes a DaemonSet; the admin API lists nodes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from operator_kmock_support import NS, eventually
from secure_api import Pki, SecureApi, secure_api

from fluxbee.kube import KubeClient, KubeConfig

HIVE: dict[str, Any] = {"apiVersion": "fluxbee.io/v1alpha1", "kind": "Hive",
                        "metadata": {"name": "demo", "namespace": NS}, "spec": {}}
RUNTIME: dict[str, Any] = {"apiVersion": "fluxbee.io/v1alpha1", "kind": "Runtime",
                           "metadata": {"name": "fluxbee.echo", "namespace": NS},
                           "spec": {"version": "0.1.0", "command": ["fluxbee", "node", "echo"]}}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[SecureApi]:
    async with secure_api(tmp_path / "pki") as server:
        yield server


@contextlib.asynccontextmanager
async def kubectl(api: SecureApi) -> AsyncIterator[KubeClient]:
    """The test's own client, logged in with the client certificate."""
    config = KubeConfig(server=api.url, ca_file=str(api.pki.ca_cert), cert_file=str(api.pki.client_cert),
                        key_file=str(api.pki.client_key))
    async with KubeClient(config) as client:
        yield client


def user_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """What a user's shell would give: PATH, a HOME without ~/.kube, and ``extra``."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), **extra}


@contextlib.asynccontextmanager
async def fluxbee(tmp_path: Path, env: dict[str, str], *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    log = (tmp_path / "fluxbee.log").open("wb")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "fluxbee", *args, cwd=tmp_path, env=env,
                                                stdout=log, stderr=asyncio.subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()


def output(tmp_path: Path) -> str:
    return (tmp_path / "fluxbee.log").read_text(errors="replace")


async def operator_reconciles_a_hive(api: SecureApi, tmp_path: Path, env: dict[str, str]) -> None:
    """Start ``fluxbee operator``; a Hive created afterwards must become its DaemonSet."""
    async with kubectl(api) as client, fluxbee(tmp_path, env, "operator") as proc:
        await client.create("hives", NS, HIVE)

        async def daemon_set() -> dict[str, Any] | None:
            if proc.returncode is not None:
                raise AssertionError(f"fluxbee operator exited {proc.returncode}:\n{output(tmp_path)}")
            return await client.get("daemonsets", NS, "demo-hive")

        try:
            ds = await eventually(daemon_set, 30, "the operator to create the Hive's DaemonSet")
        except AssertionError as err:
            raise AssertionError(f"{err}\n--- operator output:\n{output(tmp_path)}") from None
        assert ds["metadata"]["ownerReferences"][0]["name"] == "demo"
    assert "Ran out of valid credentials" not in output(tmp_path)


async def refuses_anonymous(api: SecureApi) -> None:
    """The server really requires the login (so reconciling proves it was used)."""
    async with aiohttp.ClientSession() as http, http.get(
            f"{api.url}/apis/fluxbee.io/v1alpha1/namespaces/{NS}/hives",
            ssl=__import__("ssl").create_default_context(cafile=str(api.pki.ca_cert))) as resp:
        assert resp.status == 401


async def test_operator_logs_in_with_a_kubeconfig_token_and_ca_file(api: SecureApi, tmp_path: Path) -> None:
    kubeconfig = api.kubeconfig(tmp_path / "kubeconfig", user={"token": api.token})
    await refuses_anonymous(api)
    await operator_reconciles_a_hive(api, tmp_path, user_env(tmp_path, KUBECONFIG=str(kubeconfig)))
    assert api.logins.get("token", 0) > 0


async def test_operator_logs_in_with_an_inline_client_certificate_and_ca(api: SecureApi, tmp_path: Path) -> None:
    kubeconfig = api.kubeconfig(
        tmp_path / "kubeconfig",
        user={"client-certificate-data": Pki.b64(api.pki.client_cert),
              "client-key-data": Pki.b64(api.pki.client_key)},
        cluster={"server": api.url, "certificate-authority-data": Pki.b64(api.pki.ca_cert)})
    await operator_reconciles_a_hive(api, tmp_path, user_env(tmp_path, KUBECONFIG=str(kubeconfig)))
    assert api.logins.get("token", 0) == 0  # the certificate alone logged the operator in
    assert not api.refused


async def test_operator_logs_in_with_an_in_cluster_service_account(api: SecureApi, tmp_path: Path) -> None:
    sa_dir = tmp_path / "serviceaccount"
    sa_dir.mkdir()
    (sa_dir / "token").write_text(api.token + "\n")
    (sa_dir / "ca.crt").write_bytes(api.pki.ca_cert.read_bytes())
    (sa_dir / "namespace").write_text(NS)
    env = user_env(tmp_path, KUBERNETES_SERVICE_HOST="127.0.0.1", KUBERNETES_SERVICE_PORT=str(api.port),
                   FLUXBEE_SERVICE_ACCOUNT_DIR=str(sa_dir))
    await operator_reconciles_a_hive(api, tmp_path, env)
    assert api.logins.get("token", 0) > 0 and not api.refused


async def test_operator_with_a_kubeconfig_user_without_credentials_says_what_is_missing(
        api: SecureApi, tmp_path: Path) -> None:
    kubeconfig = api.kubeconfig(tmp_path / "kubeconfig", user={"client-certificate": str(api.pki.client_cert)})
    async with fluxbee(tmp_path, user_env(tmp_path, KUBECONFIG=str(kubeconfig)), "operator") as proc:
        code = await asyncio.wait_for(proc.wait(), 30)
    assert code == 2
    assert "user 'tester' has a client certificate but no client-key" in output(tmp_path)


async def test_admin_on_kubernetes_logs_in_with_a_kubeconfig_client_certificate(
        api: SecureApi, tmp_path: Path) -> None:
    """``fluxbee admin --backend kubernetes`` with certificate files and the context's namespace."""
    kubeconfig = api.kubeconfig(
        tmp_path / "kubeconfig", namespace=NS,
        user={"client-certificate": str(api.pki.client_cert), "client-key": str(api.pki.client_key)})
    async with kubectl(api) as client:
        await client.create("hives", NS, HIVE)
        await client.create("runtimes", NS, RUNTIME)
        await client.create("fluxnodes", NS, {
            "apiVersion": "fluxbee.io/v1alpha1", "kind": "FluxNode",
            "metadata": {"name": "echo", "namespace": NS},
            "spec": {"hive": "demo", "nodeName": "WF.echo", "runtime": "fluxbee.echo"}})
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = user_env(tmp_path, KUBECONFIG=str(kubeconfig))
    args = ("admin", "--backend", "kubernetes", "--hive", "demo", "--listen", f"127.0.0.1:{port}",
            "--run-dir", str(run_dir))
    async with fluxbee(tmp_path, env, *args) as proc, aiohttp.ClientSession() as http:
        async def listing() -> dict[str, Any] | None:
            if proc.returncode is not None:
                raise AssertionError(f"fluxbee admin exited {proc.returncode}:\n{output(tmp_path)}")
            try:
                async with http.get(f"http://127.0.0.1:{port}/hives/demo/nodes") as resp:
                    doc = json.loads(await resp.read())
                    return doc if resp.status == 200 else None
            except aiohttp.ClientConnectionError:
                return None

        doc = await eventually(listing, 30, "the admin API to list the hive's nodes")
    names = [n.get("node_name") for n in doc["payload"]["nodes"]]
    assert names == ["WF.echo@demo"], doc
    assert api.logins.get("certificate", 0) > 0 and api.logins.get("token", 0) == 0
