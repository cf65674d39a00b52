"""The global config's ConfigMap store against a fake API server that keeps resourceVersions."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from fluxbee.admin import kube_global as kg
from fluxbee.admin.errors import AdminError
from fluxbee.admin.global_config import GlobalDoc
from fluxbee.admin.kube_history import ConfigMapHistory
from fluxbee.kube import ApiError


class FakeApi:
    """One ConfigMap; a merge patch with a stale resourceVersion is a 409, as on the API server.
    ``interfere`` runs once before the next patch lands (another replica writing first)."""

    def __init__(self, data: dict[str, str] | None = None) -> None:
        self.cm: dict[str, Any] | None = {"metadata": {"name": "h-admin-history", "resourceVersion": "1",
                                                       "annotations": {}}, "data": dict(data or {})}
        self.patches = 0
        self.interfere: list[dict[str, Any]] = []

    async def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.cm)

    def _merge(self, patch: dict[str, Any]) -> None:
        assert self.cm is not None
        meta = patch.get("metadata") or {}
        for key, value in (meta.get("annotations") or {}).items():
            if value is None:
                self.cm["metadata"]["annotations"].pop(key, None)
            else:
                self.cm["metadata"]["annotations"][key] = value
        self.cm["data"].update(patch.get("data") or {})
        self.cm["metadata"]["resourceVersion"] = str(int(self.cm["metadata"]["resourceVersion"]) + 1)

    async def patch(self, plural: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        assert self.cm is not None
        while self.interfere:
            self._merge(self.interfere.pop(0))
        expected = (patch.get("metadata") or {}).get("resourceVersion")
        if expected is not None and expected != self.cm["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", "the object has been modified", method="PATCH", path=name)
        self.patches += 1
        self._merge(patch)
        return copy.deepcopy(self.cm)


def store(api: FakeApi, holder: str = "pod-a") -> kg.ConfigMapGlobalStore:
    return kg.ConfigMapGlobalStore(ConfigMapHistory(api, "ns", "h"), holder)  # type: ignore[arg-type]


async def test_a_missing_key_is_version_0_and_a_saved_document_reads_back() -> None:
    api = FakeApi()
    s = store(api)
    assert await s.load() == GlobalDoc()
    async with s.locked():
        await s.save(GlobalDoc(1, [{"prefix": "WF.a"}], None), 0)
    assert await s.load() == GlobalDoc(1, [{"prefix": "WF.a"}], None)
    assert kg.WRITER_ANNOTATION not in api.cm["metadata"]["annotations"]  # type: ignore[index]  # given back


@pytest.mark.parametrize("raw", ["{", "[]", json.dumps({"version": "7"}), json.dumps({"version": 3, "vpns": {}})])
async def test_a_damaged_document_is_an_error_naming_the_config_map_never_version_0(raw: str) -> None:
    api = FakeApi({kg.GLOBAL_KEY: raw})
    s = store(api)
    with pytest.raises(AdminError) as err:
        await s.load()
    assert err.value.code == "STATE_READ_FAILED" and "h-admin-history" in err.value.detail
    with pytest.raises(AdminError):
        await s.save(GlobalDoc(1, [], None), 0)
    assert api.cm["data"][kg.GLOBAL_KEY] == raw  # type: ignore[index]


async def test_another_write_to_the_config_map_only_makes_the_save_read_again() -> None:
    api = FakeApi()
    s = store(api)
    api.interfere.append({"data": {"deployments.jsonl": "{}\n"}})  # a history append lands first
    await s.save(GlobalDoc(1, [], []), 0)
    assert (await s.load()).version == 1 and api.cm["data"]["deployments.jsonl"] == "{}\n"  # type: ignore[index]


async def test_a_save_over_a_version_someone_else_recorded_is_refused() -> None:
    api = FakeApi({kg.GLOBAL_KEY: json.dumps({"version": 4, "routes": [], "vpns": None})})
    s = store(api)
    api.interfere.append({"data": {kg.GLOBAL_KEY: json.dumps({"version": 5, "routes": [{"p": 1}], "vpns": None})}})
    with pytest.raises(AdminError) as err:  # computed from 4; 5 was recorded meanwhile
        await s.save(GlobalDoc(5, [], None), 4)
    assert err.value.code == "BUSY"
    assert (await s.load()) == GlobalDoc(5, [{"p": 1}], None)


async def test_the_writer_lease_of_another_live_replica_makes_a_change_wait_and_then_say_busy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeApi()
    monkeypatch.setattr(kg, "WRITER_WAIT", 0.3)
    other = store(api, "pod-b")
    assert await other._lead(kg.WRITER_ANNOTATION, "writes", 60.0, 60.0)
    with pytest.raises(AdminError) as err:
        async with store(api).locked():
            pytest.fail("ran without the lease")
    assert err.value.code == "BUSY" and "pod-b" in err.value.detail
    await other.history.release("pod-b", kg.WRITER_ANNOTATION)
    async with store(api).locked():
        pass


async def test_one_replica_at_a_time_follows_the_mother() -> None:
    api = FakeApi()
    a, b = store(api, "pod-a"), store(api, "pod-b")
    assert await a.lead_follower() is True
    assert await b.lead_follower() is False
    assert await a.lead_follower() is True
