"""From hive files to processes (pure): what `fluxbee up` accepts and what it refuses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fluxbee.models import ResourceError, load_documents
from fluxbee.supervisor.plan import PlanError, plan_hive

HIVE = """
apiVersion: fluxbee.io/v1alpha1
kind: Hive
metadata: {name: local}
spec:
  vpns: [{pattern: WF.red, vpnId: 10}]
  routes: [{prefix: WF.old, action: DROP}]
"""


def node(name: str, runtime: str = "fluxbee.echo", hive: str = "local", replicas: int = 1, extra: str = "") -> str:
    return f"""
---
apiVersion: fluxbee.io/v1alpha1
kind: FluxNode
metadata: {{name: n{abs(hash(name)) % 10_000}}}
spec: {{hive: {hive}, nodeName: {name}, runtime: {runtime}, replicas: {replicas}{extra}}}
"""


def plan(text: str, **kw: object):  # type: ignore[no-untyped-def]
    return plan_hive(load_documents("hive.yaml", text), run_dir=Path("/run/x"), now_ms=1, **kw)  # type: ignore[arg-type]


def test_nodes_become_one_process_per_replica_with_the_effective_config() -> None:
    p = plan(HIVE + node("WF.echo", replicas=2, extra=", config: {temperature: 0.2}"))
    assert p.hive_id == "local"
    assert [s.key for s in p.nodes if s.node_name == "WF.echo@local"] == ["WF.echo@local#0", "WF.echo@local#1"]
    spec = next(s for s in p.nodes if s.node_name == "WF.echo@local")
    assert spec.argv[-3:] == ("fluxbee", "node", "echo")[-3:] or spec.argv[-2:] == ("node", "echo")
    assert spec.config is not None and spec.config["temperature"] == 0.2
    assert spec.config["_system"]["node_name"] == "WF.echo@local"
    assert spec.config["_system"]["runtime"] == "fluxbee.echo"
    assert dict(spec.env)["FLUXBEE_NODE_CONFIG"] == "/run/x/nodes/WF.echo@local/config.json"
    assert dict(spec.env)["FLUXBEE_NODE_CREDENTIAL_FILE"] == "/run/x/credentials/WF.echo"  # proves its claim
    assert p.router.argv[p.router.argv.index("--claims-dir") + 1] == "/run/x/claims"
    assert p.router_config["vpns"][0]["vpn_id"] == 10
    assert p.router_config["routes"][0]["action"] == "DROP"


def test_a_config_change_changes_the_digest_but_a_replica_count_does_not() -> None:
    def echo(text: str):  # type: ignore[no-untyped-def]
        return next(s for s in plan(text).nodes if s.node_name == "WF.echo@local")

    a = echo(HIVE + node("WF.echo"))
    b = echo(HIVE + node("WF.echo", extra=", config: {k: 1}"))
    c = echo(HIVE + node("WF.echo", replicas=3))
    assert a.digest != b.digest
    assert a.digest == c.digest


def test_the_router_runs_in_the_hives_scheduling_class_and_restarts_when_it_changes() -> None:
    default = plan(HIVE + node("WF.echo")).router
    assert default.argv[default.argv.index("--scheduling") + 1] == "batch"
    inherit = plan(HIVE.replace("spec:\n", "spec:\n  routerScheduling: inherit\n") + node("WF.echo")).router
    assert inherit.argv[inherit.argv.index("--scheduling") + 1] == "inherit"
    assert inherit.digest != default.digest  # the supervisor restarts the router with the new class


def test_busy_polling_is_passed_to_the_router_only_when_the_hive_asks_for_it() -> None:
    default = plan(HIVE + node("WF.echo")).router
    assert "--busy-poll-us" not in default.argv
    polling = plan(HIVE.replace("spec:\n", "spec:\n  routerBusyPollUs: 100\n") + node("WF.echo")).router
    assert polling.argv[polling.argv.index("--busy-poll-us") + 1] == "100"
    assert polling.digest != default.digest
    with pytest.raises(Exception, match="routerBusyPollUs"):
        plan(HIVE.replace("spec:\n", "spec:\n  routerBusyPollUs: 20000\n") + node("WF.echo"))


def test_the_hive_id_can_be_overridden() -> None:
    assert plan(HIVE + node("WF.echo"), hive_id="other").hive_id == "other"


@pytest.mark.parametrize("text, reason", [
    (node("WF.echo"), "exactly one Hive"),
    (HIVE + "---" + HIVE, "exactly one Hive"),
    (HIVE + node("WF.echo", runtime="no.such"), "'no.such'"),
    (HIVE + node("WF.echo", hive="elsewhere"), "names hive 'elsewhere'"),
    (HIVE + node("WF.echo") + node("WF.echo"), "two FluxNodes declare the node name WF.echo@local"),
    (HIVE + node("WF.echo", extra=", runtimeVersion: '9.9'"), "not '9.9'"),
])
def test_hive_files_that_cannot_run_are_refused_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(PlanError) as err:
        plan(text)
    assert reason in str(err.value)


@pytest.mark.parametrize("text, reason", [
    (HIVE + node("bad name"), "node name"),
    (HIVE + node("WF.x", extra=", config: {_system: {}}"), "_system"),
    ("kind: Gadget\nmetadata: {name: x}", "unknown kind"),
    ("- a list", "expected a mapping"),
    ("{unclosed", "invalid YAML"),
    (HIVE.replace("spec:\n", "spec:\n  routerScheduling: fifo\n"), "spec.routerScheduling"),
])
def test_invalid_documents_name_the_document_and_the_field(text: str, reason: str) -> None:
    with pytest.raises(ResourceError) as err:
        load_documents("hive.yaml", text)
    assert reason in str(err.value) and "hive.yaml" in str(err.value)


def test_fluxbee_up_with_a_bad_file_exits_2_with_the_reason(tmp_path: Path) -> None:
    bad = tmp_path / "hive.yaml"
    bad.write_text(HIVE + node("WF.echo", runtime="no.such"))
    done = subprocess.run([sys.executable, "-m", "fluxbee", "up", "-f", str(bad), "--run-dir", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "no.such" in done.stderr and "fluxbee.echo" in done.stderr  # names what is available
    missing = subprocess.run([sys.executable, "-m", "fluxbee", "up", "-f", str(tmp_path / "nope.yaml")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no such file" in missing.stderr
