"""One hive-id rule and one set of shared names, applied the same way by every layer."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from fluxbee.cli import _hive_id
from fluxbee.dataplane import names
from fluxbee.dataplane.router.server import Router
from fluxbee.dataplane.router.settings import RouterError, RouterSettings
from fluxbee.models import Hive, RouteSpec

ROOT = Path(__file__).resolve().parents[2]

# Ids the admin API used to accept (its own rule was [A-Za-z0-9_-]{1,64}) and the router and CRD refuse.
ONCE_ADMIN_ONLY = ["_lead", "-lead", "x" * 64, "_", "-"]
REFUSED = [*ONCE_ADMIN_ONLY, "", "a.b", "bad id", "é", "a/b", "a@b", "x" * 200]
ACCEPTED = ["h", "local", "worker-1", "Worker_2", "0", "x" * 63]


def _models_accept(hive_id: str) -> bool:
    try:
        Hive.model_validate({"metadata": {"name": "h"}, "spec": {"hiveId": hive_id}})
    except ValidationError:
        return False
    return True


def _cli_accepts(hive_id: str) -> bool:
    try:
        _hive_id(hive_id)
    except argparse.ArgumentTypeError:
        return False
    return True


def _router_accepts(hive_id: str, tmp_path: Path) -> bool:
    try:
        Router(RouterSettings(hive_id=hive_id, run_dir=tmp_path), router_uuid="6f1c0e7e-0000-4000-8000-000000000001")
    except RouterError:
        return False
    return True


@pytest.mark.parametrize("hive_id", REFUSED)
def test_every_layer_refuses_the_same_hive_ids(hive_id: str, tmp_path: Path) -> None:
    with pytest.raises(names.InvalidName, match="must match"):
        names.check_hive_id(hive_id)
    assert not _cli_accepts(hive_id)
    assert not _models_accept(hive_id)
    assert not _router_accepts(hive_id, tmp_path)
    with pytest.raises(ValidationError, match="next_hop_hive"):
        RouteSpec(prefix="WF.x", next_hop_hive=hive_id)


@pytest.mark.parametrize("hive_id", ACCEPTED)
def test_every_layer_accepts_the_same_hive_ids(hive_id: str, tmp_path: Path) -> None:
    assert names.check_hive_id(hive_id) == hive_id
    assert _cli_accepts(hive_id) and _models_accept(hive_id) and _router_accepts(hive_id, tmp_path)


@given(st.text(alphabet="aZ09_-.@ é", max_size=70))
def test_the_cli_and_the_models_agree_with_the_rule_on_any_text(hive_id: str) -> None:
    ok = names.hive_id_problem(hive_id) is None
    assert _cli_accepts(hive_id) == ok
    assert _models_accept(hive_id) == ok


def test_a_refused_hive_id_is_explained_and_a_long_one_is_not_printed_whole() -> None:
    problem = names.hive_id_problem("_lead")
    assert problem is not None and "'_lead'" in problem and names.HIVE_ID_PATTERN in problem
    long = names.hive_id_problem("y" * 5000)
    assert long is not None and "5000 characters" in long and len(long) < 300


def test_the_crds_carry_the_same_hive_id_rule() -> None:
    """The CRD files are generated from the models; the pattern they carry is the names module's."""
    for crds in (ROOT / "crds", ROOT / "charts" / "fluxbee" / "crds"):
        text = (crds / "fluxbee.io_hives.yaml").read_text()
        doc = yaml.safe_load(text)
        spec = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        assert spec["hiveId"]["pattern"] == names.HIVE_ID_PATTERN
        assert spec["routes"]["items"]["properties"]["nextHopHive"]["pattern"] == names.HIVE_ID_PATTERN


def test_the_node_name_grammar_takes_the_hive_id_rule_for_its_hive_part() -> None:
    assert names.validate_node_name("WF.echo@worker-1") == "WF.echo@worker-1"
    for bad in ("WF.echo@_lead", "WF.echo@a.b", "XX.echo", "WF", "WF." + ".".join("f" * 10)):
        with pytest.raises(names.InvalidName):
            names.validate_node_name(bad)
    with pytest.raises(ValueError, match="longer than 256 bytes"):
        names.validate_node_name("WF." + "a" * 300)


def test_reserved_names_and_qualification() -> None:
    assert names.is_reserved(names.IDENTITY_NODE) and names.is_reserved("RT.gateway@h")
    assert not names.is_reserved("WF.SY") and not names.is_reserved("SYX.a")
    assert names.qualify("WF.a", "h") == "WF.a@h" and names.qualify("WF.a@g", "h") == "WF.a@g"
    assert names.split_hive("WF.a@h") == ("WF.a", "h") and names.split_hive("WF.a") == ("WF.a", None)
    for name in (names.IDENTITY_NODE, names.ADMIN_NODE, names.FRONTDESK_NODE, names.ORCHESTRATOR_NODE,
                 names.DEFAULT_ROUTER_NAME):
        assert names.validate_node_name(name) == name


def test_no_module_retypes_a_shared_name() -> None:
    """System node names and fluxbee.io/ keys are spelled once, in the names module (log text and
    docstrings may mention them)."""
    literals = ['"SY.identity"', '"SY.admin"', '"SY.frontdesk.gov"', '"SY.orchestrator"', '"RT.gateway"',
                '("SY.", "RT.")', '"fluxbee.io/']
    offenders = []
    for folder in ("dataplane", "fluxbee", "operator"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "names.py" and path.parent.name == "dataplane":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                if any(lit in code for lit in literals) and "/apis/fluxbee.io/" not in code \
                        and 'Literal["fluxbee.io/v1alpha1"]' not in code:
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_charts_values_schema_carries_the_same_hive_id_rule() -> None:
    """JSON cannot import the rule, so this copy is checked (empty allowed: the Hive's name is its id)."""
    import json

    schema = json.loads((ROOT / "charts" / "fluxbee" / "values.schema.json").read_text())
    pattern = schema["properties"]["hive"]["properties"]["hiveId"]["pattern"]
    assert pattern == f"^({names.HIVE_ID_PATTERN[1:-1]})?$"
