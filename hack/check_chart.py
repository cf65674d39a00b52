#!/usr/bin/env python3
"""Lint, render and validate charts/fluxbee with the real Helm library (helm-sdkpy).

Runs in .venv-helm (Python >= 3.12, see hack/check-chart.sh).  For every value set:

1. `helm lint` (helm-sdkpy's ``Lint``) on a copy of the chart whose values.yaml is replaced:
   renders every template and checks values.schema.json.
2. **Render**: helm-sdkpy has no ``helm template`` and its install options carry no dry-run
   (its Go shim's ``releaseOptions`` JSON has create_namespace, wait, timeout_seconds,
   skip_schema_validation, take_ownership, … but no dry_run/client_only), so the chart is
   really installed -- Helm's own engine, hooks order, CRD install -- into kmock's Kubernetes
   emulator (``tests/integration/operator/fluxbee_emulator.py``, started with the main
   venv's Python, one fresh emulator per value set) with ``HELM_DRIVER=memory`` (the release
   record stays in memory: the default Secret driver speaks protobuf, which the emulator
   does not).  The release's ``manifest`` is the rendered text.
3. **Validate** every rendered object with kubernetes-validate (strict: unknown fields are
   errors) against the Kubernetes schemas, and objects of our own kinds (``fluxbee.io``)
   against the openAPIV3Schema of the CRDs the chart ships (jsonschema; the CEL rules are
   checked by tests/unit/operator).  The chart's CRDs themselves are validated as
   ``apiextensions.k8s.io/v1`` objects and must equal crds/ (the generated ones).

Value sets that must be rejected (MUST_FAIL) must fail lint.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if os.environ.get("HELM_DRIVER") != "memory":
    # The Go runtime inside helm-sdkpy's shared library copies the environment the process
    # *started* with (putenv afterwards is invisible to it), so re-run with the variable set.
    os.execve(sys.executable, [sys.executable, "-I", *sys.argv],
              {**os.environ, "HELM_DRIVER": "memory"})

import helm_sdkpy  # noqa: E402
import jsonschema  # noqa: E402
import kubernetes_validate  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "fluxbee"
EMULATOR = ROOT / "tests" / "integration" / "operator" / "fluxbee_emulator.py"
MAIN_PYTHON = os.environ.get("FLUXBEE_PYTHON", str(ROOT / ".venv" / "bin" / "python"))
K8S_VERSION = "1.33.0"

CASES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "hive": {"hive": {"enabled": True, "nodeSelector": {"fluxbee.io/hive": "true"},
                      "routes": [{"prefix": "AI.sales.", "action": "FORWARD",
                                  "nextHopHive": "sales"}],
                      "vpns": [{"pattern": "WF.", "vpnId": 2}]}},
    "ha-namespaced": {"operator": {"replicas": 2, "watchReleaseNamespaceOnly": True},
                      "hive": {"enabled": True, "admin": {"existingTokenSecret": "my-token"}}},
    "hive-only": {"operator": {"enabled": False}, "hive": {"enabled": True,
                                                           "admin": {"enabled": False}}},
    "wan-gateway": {"hive": {"enabled": True, "meshPort": 9101,
                             "wan": {"enabled": True, "listen": "0.0.0.0:9000", "serviceType": "LoadBalancer",
                                     "uplinks": [{"address": "mother.example.com:9000"},
                                                 {"service": "other-gateway", "namespace": "other", "port": 9000}],
                                     "authorizedHives": ["mother", "worker-2"],
                                     "certificateSecret": "my-hive-tls"}}},
    "worker-url-identity": {"hive": {"enabled": True, "role": "worker",
                                     "identity": {"primaryHive": "mother",
                                                  "database": {"mode": "url",
                                                               "urlSecret": {"name": "pg", "key": "url"}}}}},
}
MUST_FAIL: dict[str, dict[str, Any]] = {
    "bad-pull-policy": {"image": {"pullPolicy": "Sometimes"}},
    "bad-hive-id": {"hive": {"enabled": True, "hiveId": "has.dots"}},
    "unknown-key": {"hive": {"enabeld": True}},
    "bad-wan-listen": {"hive": {"enabled": True, "wan": {"enabled": True, "listen": "0.0.0.0:70000"}}},
    "uplink-address-and-service": {"hive": {"enabled": True, "wan": {
        "enabled": True, "uplinks": [{"address": "a.example:9000", "service": "b-gateway"}]}}},
    "bad-authorized-hive": {"hive": {"enabled": True, "wan": {"enabled": True, "authorizedHives": ["has.dots"]}}},
    "url-mode-without-secret": {"hive": {"enabled": True, "identity": {"database": {"mode": "url"}}}},
}


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


async def lint(values: dict[str, Any]) -> tuple[bool, str]:
    with tempfile.TemporaryDirectory() as tmp:
        chart = Path(tmp) / "fluxbee"
        shutil.copytree(CHART, chart)
        (chart / "values.yaml").write_text(yaml.safe_dump(values))
        config = helm_sdkpy.Configuration(namespace="fluxbee")
        try:
            result = await helm_sdkpy.Lint(config).run(str(chart))
        except helm_sdkpy.HelmError as err:
            return False, str(err)
    messages = result.get("Messages") or []
    errors = [m for m in messages if int(m.get("Severity", 0)) >= 3]  # 3 = error
    warnings = [m for m in messages if int(m.get("Severity", 0)) == 2]
    text = "; ".join(f"{m.get('Path')}: {m.get('Err')}" for m in errors + warnings)
    return not errors and not result.get("Errors"), text


@contextlib.contextmanager
def emulator() -> Iterator[str]:
    """A fresh Kubernetes emulator (main venv: kmock needs it); yields its URL."""
    proc = subprocess.Popen([MAIN_PYTHON, str(EMULATOR)], stdout=subprocess.PIPE, text=True,
                            cwd=str(EMULATOR.parent))
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"emulator did not start (exit {proc.poll()})")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def kubeconfig(url: str, namespace: str) -> str:
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": url}}],
        "users": [{"name": "check-chart", "user": {"token": "unused"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator",
                                                      "user": "check-chart",
                                                      "namespace": namespace}}],
    })


async def render(values: dict[str, Any], namespace: str = "fluxbee") -> list[dict[str, Any]]:
    """The chart's objects as Helm renders them for ``values`` (a real install, see above)."""
    with emulator() as url:
        config = helm_sdkpy.Configuration(namespace=namespace, kubeconfig=kubeconfig(url, namespace))
        release = await helm_sdkpy.Install(config).run(
            "check", str(CHART), values=values, wait=False, timeout=60
        )
    manifest = release.get("manifest") if isinstance(release, dict) else None
    if not isinstance(manifest, str) or not manifest.strip():
        raise RuntimeError(f"the release carries no rendered manifest: {sorted(release)}")
    return [doc for doc in yaml.safe_load_all(manifest) if doc]


def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) → openAPIV3Schema of every CRD the chart ships."""
    out = {}
    for path in sorted((CHART / "crds").glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                out[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return out


def validate(obj: dict[str, Any], schemas: dict[tuple[str, str], dict[str, Any]]) -> str | None:
    """None if ``obj`` is valid; else why not."""
    key = (str(obj.get("apiVersion")), str(obj.get("kind")))
    try:
        if key in schemas:
            jsonschema.validate(obj, schemas[key])
        else:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as err:
        return str(getattr(err, "message", err)).splitlines()[0]
    except kubernetes_validate.SchemaNotFoundError as err:
        return f"no schema: {err}"
    return None


def check_crds() -> int:
    failed = count = 0
    for path in sorted((CHART / "crds").glob("*.yaml")):
        generated = ROOT / "crds" / path.name
        if path.name.startswith("fluxbee.io_") and (
            not generated.exists() or generated.read_text() != path.read_text()
        ):
            print(f"chart CRD {path.name}: differs from crds/{path.name} (run hack/gen-crds.py)")
            failed += 1
        for crd in yaml.safe_load_all(path.read_text()):
            count += 1
            problem = validate(crd, {})
            if problem:
                print(f"chart CRD {path.name} {crd['metadata']['name']}: INVALID {problem}")
                failed += 1
    print(f"chart CRDs: {count} validated as apiextensions.k8s.io/v1 "
          f"({'ok' if not failed else 'FAILED'})")
    return failed


async def main() -> int:
    base = yaml.safe_load((CHART / "values.yaml").read_text())
    schemas = crd_schemas()
    failed = check_crds()
    for name, extra in CASES.items():
        values = merged(base, extra)
        ok, text = await lint(values)
        print(f"helm lint [{name}]: {'ok' if ok else 'FAILED'} {text}")
        failed += not ok
        try:
            objects = await render(values)
        except (helm_sdkpy.HelmError, RuntimeError) as err:
            print(f"helm install (render) [{name}]: FAILED {err}")
            failed += 1
            continue
        problems = [(o.get("kind"), (o.get("metadata") or {}).get("name"), validate(o, schemas))
                    for o in objects]
        bad = [p for p in problems if p[2]]
        kinds = ", ".join(sorted({f"{k}" for k, _, _ in problems}))
        print(f"rendered [{name}]: {len(objects)} objects ({kinds}); "
              f"kubernetes-validate {K8S_VERSION} strict / CRD schema: "
              f"{'ok' if not bad else 'FAILED'}")
        for kind, obj_name, why in bad:
            print(f"    {kind}/{obj_name}: {why}")
        failed += len(bad)
    for name, extra in MUST_FAIL.items():
        ok, text = await lint(merged(base, extra))
        print(f"helm lint [{name}] (must be rejected): {'rejected' if not ok else 'ACCEPTED'}")
        failed += ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
