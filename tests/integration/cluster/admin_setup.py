"""One hive in a namespace of its own, with the real operator and the cluster admin API, for the admin tests.

The chart is installed as a user installs it (one Hive ``demo``), the ``fluxbee.echo`` Runtime is applied,
``fluxbee operator`` runs as a subprocess and ``fluxbee admin --backend kubernetes`` as another, logged
in with the hive's admin ServiceAccount token.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster_support import ControlPlane
from operator_support import (
    AdminApi,
    FluxbeeProcess,
    Release,
    apply,
    get,
    install_chart,
    running_pods,
    start_admin,
    start_operator,
)

ECHO_RUNTIME: dict[str, Any] = {
    "apiVersion": "fluxbee.io/v1alpha1", "kind": "Runtime", "metadata": {"name": "fluxbee.echo"},
    "spec": {"version": "0.1.0", "command": ["fluxbee", "node", "echo"], "configTemplate": {"reply_prefix": "echo: "}},
}


@dataclass
class Setup:
    cp: ControlPlane
    ns: str
    release: Release
    operator: FluxbeeProcess
    admin: AdminApi

    def wait_for(self, what: str, probe: Any, timeout: float = 90.0) -> Any:
        """``probe()`` until truthy, failing at once if the operator or the admin API dies."""
        def both_alive() -> Any:
            self.admin.process.check_alive()
            return probe()

        return self.operator.wait_for(what, both_alive, timeout)

    def ok(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        code, doc = self.admin.call(method, path, body)
        assert code == 200 and doc["status"] == "ok", (method, path, code, doc)
        return dict(doc["payload"])

    def error(self, method: str, path: str, body: Any = None) -> tuple[int, str]:
        code, doc = self.admin.call(method, path, body)
        assert doc["status"] == "error", (method, path, code, doc)
        return code, str(doc["error_code"])

    def pods(self, resource: str) -> list[dict[str, Any]]:
        return running_pods(self.cp, self.ns, f"fluxbee.io/fluxnode={resource}")

    def scale(self, resource: str, replicas: int) -> None:
        self.cp.kubectl("-n", self.ns, "patch", "fluxnode", resource, "--type", "merge", "-p",
                        json.dumps({"spec": {"replicas": replicas}}))


@contextlib.contextmanager
def admin_setup(cp: ControlPlane, work: Path) -> Iterator[Setup]:
    """The namespace, chart, Runtime, operator and admin API; all stopped and the namespace deleted after."""
    ns = f"t-{uuid.uuid4().hex[:10]}"
    cp.kubectl("create", "namespace", ns)
    operator = admin = None
    try:
        release = install_chart(cp, ns, hive="demo")
        apply(cp, ns, ECHO_RUNTIME)
        operator = start_operator(cp, release, work)
        # The admin API keeps its history in a ConfigMap the operator makes for the Hive: changes
        # are refused (STATE_WRITE_FAILED) until it exists.
        operator.wait_for("the hive's admin history ConfigMap", lambda: get(cp, ns, "configmap", "demo-admin-history"))
        admin = start_admin(cp, release, "demo", work)
        yield Setup(cp, ns, release, operator, admin)
    finally:
        try:
            if admin is not None:
                admin.process.stop()
        finally:
            if operator is not None:
                operator.stop()
            cp.kubectl("delete", "namespace", ns, "--wait=false", check=False)
