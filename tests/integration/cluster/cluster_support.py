"""Helpers for tests against the real control plane (fixtures in this folder's conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")


@dataclass(frozen=True)
class ControlPlane:
    """A running control plane: where its admin kubeconfig and its tools are."""

    dir: Path
    bin: Path
    kubeconfig: Path

    @property
    def env(self) -> dict[str, str]:
        """The environment a user has after ``source DIR/env``: the tools on PATH, KUBECONFIG set."""
        return {"PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": os.environ.get("HOME", "/"),
                "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl as the cluster admin; ``check`` fails the test with its stderr."""
        proc = subprocess.run([str(self.bin / "kubectl"), *args], input=input, capture_output=True, text=True,
                              env=self.env, timeout=timeout)
        if check and proc.returncode != 0:
            pytest.fail(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    @property
    def server(self) -> str:
        return str(self.get_config("clusters")[0]["cluster"]["server"])

    def get_config(self, section: str) -> Any:
        return json.loads(self.kubectl("config", "view", "--raw", "-o", "json").stdout)[section]

    def token_kubeconfig(self, token: str, path: Path, namespace: str = "default") -> Path:
        """A kubeconfig that logs in with ``token`` only (no client certificate), as a ServiceAccount would."""
        ca = self.dir / "pki" / "ca.crt"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "sa",
            "clusters": [{"name": "local", "cluster": {"server": self.server, "certificate-authority": str(ca)}}],
            "users": [{"name": "sa", "user": {"token": token}}],
            "contexts": [{"name": "sa", "context": {"cluster": "local", "user": "sa", "namespace": namespace}}],
        }))
        return path

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60.0, every: float = 0.5) -> T:
    """Poll ``probe`` until it returns something other than None/False; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last is not None and last is not False:
            return last
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last probe: {last!r})")
