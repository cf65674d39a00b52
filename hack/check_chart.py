#!/usr/bin/env python3
"""Lint charts/fluxbee with the real Helm library (helm-sdkpy) under several value sets.

Runs in .venv-helm (Python >= 3.12, see hack/check-chart.sh).  `helm lint` renders every
template with the given values and validates them against values.schema.json, so a template
error or a schema violation fails here.  helm-sdkpy exposes no `helm template`, so the values
are applied by linting a temporary copy of the chart whose values.yaml is replaced.

Not done (honestly): validating the *rendered* manifests with kubernetes-validate needs the
rendered text, which this wheel does not return without installing into a real API server.
"""

from __future__ import annotations

import asyncio
import copy
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import helm_sdkpy
import yaml

CHART = Path(__file__).resolve().parent.parent / "charts" / "fluxbee"

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
}
MUST_FAIL: dict[str, dict[str, Any]] = {
    "bad-pull-policy": {"image": {"pullPolicy": "Sometimes"}},
    "bad-hive-id": {"hive": {"enabled": True, "hiveId": "has.dots"}},
    "unknown-key": {"hive": {"enabeld": True}},
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


async def main() -> int:
    base = yaml.safe_load((CHART / "values.yaml").read_text())
    failed = 0
    for name, extra in CASES.items():
        ok, text = await lint(merged(base, extra))
        print(f"helm lint [{name}]: {'ok' if ok else 'FAILED'} {text}")
        failed += not ok
    for name, extra in MUST_FAIL.items():
        ok, text = await lint(merged(base, extra))
        print(f"helm lint [{name}] (must be rejected): {'rejected' if not ok else 'ACCEPTED'}")
        failed += ok
    print("rendered-manifest validation with kubernetes-validate: NOT RUN "
          "(helm-sdkpy returns no rendered manifests offline)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
