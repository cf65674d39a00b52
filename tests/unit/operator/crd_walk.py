"""Helpers shared by the CRD tests: load CRDs, validate documents, evaluate CEL rules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[3]
CRD_DIR = ROOT / "crds"
EXAMPLES = ROOT / "examples"


def load_crds() -> dict[str, dict[str, Any]]:
    """Kind → CRD manifest, from the committed ``crds/`` folder."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        out[doc["spec"]["names"]["kind"]] = doc
    return out


def schema_of(crd: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _nullable_to_jsonschema(node: Any) -> Any:
    """OpenAPI's ``nullable: true`` is JSON Schema's ``type: [T, "null"]``."""
    if isinstance(node, list):
        return [_nullable_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable_to_jsonschema(v) for k, v in node.items()}
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def schema_errors(crd: dict[str, Any], doc: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(_nullable_to_jsonschema(schema_of(crd)))
    return [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]


def _rules(
    schema: dict[str, Any], value: Any, old: Any
) -> Iterator[tuple[dict[str, str], Any, Any]]:
    for rule in schema.get("x-kubernetes-validations", []):
        yield rule, value, old
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                sub_old = old.get(name) if isinstance(old, dict) else None
                yield from _rules(sub, value[name], sub_old)
    if isinstance(value, list) and "items" in schema:
        for item in value:
            yield from _rules(schema["items"], item, None)


def cel_failures(crd: dict[str, Any], doc: dict[str, Any], old: Any = None) -> list[str]:
    """Messages of the CEL rules ``doc`` violates (transition rules only when ``old`` given)."""
    env = celpy.Environment()
    failures: list[str] = []
    for rule, value, old_value in _rules(schema_of(crd), doc, old):
        transition = "oldSelf" in rule["rule"]
        if transition and old_value is None:
            continue
        activation: dict[str, Any] = {"self": celpy.json_to_cel(value)}
        if transition:
            activation["oldSelf"] = celpy.json_to_cel(old_value)
        try:
            result = env.program(env.compile(rule["rule"])).evaluate(activation)
        except celpy.CELEvalError as err:  # the API server rejects the object too
            failures.append(f"{rule['message']} (evaluation error: {err.args[0]})")
            continue
        if not bool(result):
            failures.append(rule["message"])
    return failures


def example_documents() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((f"{path.name}:{doc['metadata']['name']}", doc))
    return out
