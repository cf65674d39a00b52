"""ensure(): creates, repairs and reuses what the caller already read (fake Kube, no I/O)."""

from __future__ import annotations

from typing import Any

from fluxbee.operator.children import ensure, with_spec_digest
from fluxbee.operator.kube import ApiError


class FakeKube:
    def __init__(self, objects: dict[str, dict[str, Any]]) -> None:
        self.objects = objects
        self.calls: list[tuple[str, str]] = []

    async def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append(("get", name))
        return self.objects.get(name)

    async def create(self, plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("create", body["metadata"]["name"]))
        if body["metadata"]["name"] in self.objects:
            raise ApiError(409, "AlreadyExists", "exists", method="POST", path="/")
        self.objects[body["metadata"]["name"]] = body
        return body

    async def delete(self, plural: str, namespace: str, name: str) -> bool:
        self.calls.append(("delete", name))
        return self.objects.pop(name, None) is not None


def pod(name: str, image: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return with_spec_digest({"apiVersion": "v1", "kind": "Pod",
                             "metadata": {"name": name, "labels": labels or {"app": "x"}},
                             "spec": {"containers": [{"name": "c", "image": image}]}})


async def test_a_child_the_caller_saw_absent_is_created_without_a_get() -> None:
    kube = FakeKube({})
    assert await ensure(kube, "pods", "ns", pod("p", "a"), recreate=True, actual=None) == "created"
    assert kube.calls == [("create", "p")]


async def test_a_child_the_callers_selector_missed_is_still_compared_and_replaced() -> None:
    # e.g. its labels were edited by hand, so a label-selected list did not return it
    kube = FakeKube({"p": pod("p", "a", labels={"app": "edited"})})
    assert await ensure(kube, "pods", "ns", pod("p", "a"), recreate=True, actual=None) == "deleted"
    assert kube.calls == [("create", "p"), ("get", "p"), ("delete", "p")]


async def test_an_unchanged_child_costs_no_call_when_already_read() -> None:
    current = pod("p", "a")
    kube = FakeKube({"p": current})
    assert await ensure(kube, "pods", "ns", pod("p", "a"), recreate=True, actual=current) == (
        "unchanged")
    assert kube.calls == []
