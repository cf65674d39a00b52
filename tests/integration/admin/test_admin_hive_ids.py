"""The admin API applies the router's hive-id rule: ids the router and the Hive CRD refuse are refused
here too, with 400 INVALID_HIVE_ID and the rule in the detail (the API once had a looser rule of its own)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import AdminHive, running_hive

from fluxbee.dataplane.names import HIVE_ID_PATTERN

# [A-Za-z0-9_-]{1,64} (the admin API's old rule) accepts these; the router and the CRD never did.
ONCE_ACCEPTED = ["_lead", "-lead", "x" * 64]


@pytest.fixture(scope="module")
def hive() -> Iterator[AdminHive]:
    with running_hive(identity=False) as h:
        yield h


@pytest.mark.parametrize("hive_id", ONCE_ACCEPTED)
def test_the_router_refuses_these_ids(hive_id: str, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "fluxbee", "router", f"--hive-id={hive_id}", "--run-dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "must match" in done.stderr


@pytest.mark.parametrize("hive_id", ONCE_ACCEPTED)
def test_adding_a_hive_the_router_would_refuse_is_400_invalid_hive_id(hive: AdminHive, hive_id: str) -> None:
    code, doc = hive.call("POST", "/hives", {"hive_id": hive_id, "address": "192.168.8.9"})
    assert code == 400, doc
    assert doc["error_code"] == "INVALID_HIVE_ID"
    assert HIVE_ID_PATTERN in doc["error_detail"]
    code, doc = hive.call("GET", "/hives")
    assert hive_id not in {row["hive_id"] for row in doc["payload"]["hives"]}, "a refused hive was kept"


def test_removing_a_hive_with_a_refused_id_is_400_invalid_hive_id(hive: AdminHive) -> None:
    code, doc = hive.call("DELETE", "/hives/_lead")
    assert (code, doc["error_code"]) == (400, "INVALID_HIVE_ID")


def test_a_route_to_a_hive_the_router_would_refuse_is_400(hive: AdminHive) -> None:
    code, doc = hive.call("POST", "/hives/local/routes", {"prefix": "WF.far", "action": "FORWARD",
                                                          "next_hop_hive": "_lead"})
    assert code == 400, doc
    assert "next_hop_hive" in doc["error_detail"]
    code, doc = hive.call("GET", "/hives/local/routes")
    assert "WF.far" not in {r["prefix"] for r in doc["payload"]["routes"]}


def test_the_longest_valid_id_passes_the_id_rule(hive: AdminHive) -> None:
    """This hive has no WAN gateway, so linking is refused — but for that reason, not the id."""
    hive_id = "w" * 63
    code, doc = hive.call("POST", "/hives", {"hive_id": hive_id, "address": "192.168.8.10"})
    assert (code, doc["error_code"]) == (503, "MISSING_WAN_LISTEN"), doc
    code, doc = hive.call("POST", "/hives", {"hive_id": hive_id + "w", "address": "192.168.8.10"})
    assert (code, doc["error_code"]) == (400, "INVALID_HIVE_ID"), doc


def test_a_hive_recorded_under_the_old_looser_rule_can_still_be_removed(hive: AdminHive) -> None:
    """Records written before the rule was unified stay listed, so they must stay removable."""
    hives = hive.run_dir / "admin" / "hives"
    hives.mkdir(parents=True, exist_ok=True)
    (hives / "_legacy.json").write_text(json.dumps({"hive_id": "_legacy", "address": "192.168.8.11",
                                                    "status": "registered", "role": "worker"}))
    assert "_legacy" in {row["hive_id"] for row in hive.call("GET", "/hives")[1]["payload"]["hives"]}
    code, doc = hive.call("DELETE", "/hives/_legacy")
    assert code == 200, doc
    assert not (hives / "_legacy.json").exists()
    code, doc = hive.call("DELETE", "/hives/_legacy")
    assert (code, doc["error_code"]) == (400, "INVALID_HIVE_ID"), "once gone, the id is judged by the rule again"
