"""Idempotent create-or-repair of owned children.

Children carry an ownerReference to their parent (garbage collection in a real cluster) and
the common labels.  :func:`ensure` creates a missing child, patches one whose fields drifted
from the desired manifest (a hand edit), and treats a 409 on create as "someone else, e.g. a
previous operator instance, created it": the next pass compares it like any other child.
Pods cannot be patched in place, so drifted Pods are deleted and come back on the next pass.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final, Literal

from fluxbee.operator.kube import ApiError, Kube
from fluxbee.operator.labels import SPEC_DIGEST

Action = Literal["created", "patched", "unchanged", "deleted"]


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    meta = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def owned(manifest: dict[str, Any], owner: Mapping[str, Any]) -> dict[str, Any]:
    """``manifest`` with ``owner`` as its controller (a new dict; the input is not touched)."""
    meta = dict(manifest["metadata"])
    meta["ownerReferences"] = [owner_reference(owner)]
    return {**manifest, "metadata": meta}


def is_subset(desired: Any, actual: Any) -> bool:
    """Every field of ``desired`` is present and equal in ``actual`` (server defaults ignored).

    An empty map or list in ``desired`` also matches an absent field: the API server does not
    store empty ``annotations``, ``labels``, ``data``…, so a child built with ``annotations: {}``
    would otherwise look drifted on every pass and be patched for nothing.
    """
    if isinstance(desired, Mapping):
        if not isinstance(actual, Mapping):
            return False
        return all(
            is_subset(v, actual[k]) if k in actual else (isinstance(v, Mapping | list) and not v)
            for k, v in desired.items()
        )
    if isinstance(desired, list):
        if not isinstance(actual, list) or len(actual) != len(desired):
            return False
        return all(is_subset(d, a) for d, a in zip(desired, actual, strict=True))
    return bool(desired == actual)


def digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def with_spec_digest(manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` annotated with the digest of its spec, labels and annotations.

    That is how Pod drift is detected: e.g. a new config digest annotation replaces the Pod.
    """
    meta = dict(manifest["metadata"])
    annotations = {k: v for k, v in meta.get("annotations", {}).items() if k != SPEC_DIGEST}
    basis = {"spec": manifest["spec"], "labels": meta.get("labels", {}), "annotations": annotations}
    meta["annotations"] = {**annotations, SPEC_DIGEST: digest(basis)}
    return {**manifest, "metadata": meta}


def _drift_view(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a manifest the operator owns and compares."""
    meta = manifest.get("metadata", {})
    view: dict[str, Any] = {
        "metadata": {
            "labels": meta.get("labels", {}),
            "annotations": meta.get("annotations", {}),
            "ownerReferences": meta.get("ownerReferences", []),
        }
    }
    for key in ("spec", "data", "stringData"):
        if key in manifest:
            view[key] = manifest[key]
    return view


class _Unknown:
    """Marker: the caller has not read the child; :func:`ensure` GETs it."""


UNKNOWN: Final = _Unknown()


async def ensure(
    kube: Kube,
    plural: str,
    namespace: str,
    desired: dict[str, Any],
    *,
    recreate: bool = False,
    actual: Mapping[str, Any] | None | _Unknown = UNKNOWN,
) -> Action:
    """Make the child named in ``desired`` exist with the desired fields.

    ``recreate`` (Pods): a drifted child is deleted instead of patched; the caller's next
    reconcile creates it again.  ``actual``: the child as the caller just read it (``None``:
    absent), which saves a GET per child per reconcile (two of a FluxNode's eleven calls).
    """
    name = desired["metadata"]["name"]
    read_here = isinstance(actual, _Unknown)
    if isinstance(actual, _Unknown):
        actual = await kube.get(plural, namespace, name)
    if actual is None:
        try:
            await kube.create(plural, namespace, desired)
        except ApiError as err:
            if not err.conflict:
                raise
            if read_here:
                return "unchanged"  # created concurrently (another pass, a previous instance)
            # The caller's read missed it (e.g. a label selector no longer matches a child
            # whose labels were edited by hand): compare it as found.
            actual = await kube.get(plural, namespace, name)
            if actual is None:
                return "unchanged"
        else:
            return "created"
    if actual.get("metadata", {}).get("deletionTimestamp"):
        return "unchanged"  # terminating: recreated once it is gone
    if recreate:
        # Pods: the API server adds tolerations, volume mounts…, so fields are not compared;
        # the spec digest annotation written at creation (see ``with_spec_digest``) is.
        want = desired["metadata"].get("annotations", {}).get(SPEC_DIGEST)
        have = (actual["metadata"].get("annotations") or {}).get(SPEC_DIGEST)
        if want == have:
            return "unchanged"
        await kube.delete(plural, namespace, name)
        return "deleted"
    wanted = _drift_view(desired)
    if is_subset(wanted, actual):
        return "unchanged"
    await kube.patch(plural, namespace, name, wanted)
    return "patched"


async def ensure_absent(kube: Kube, plural: str, namespace: str, name: str) -> Action:
    return "deleted" if await kube.delete(plural, namespace, name) else "unchanged"
