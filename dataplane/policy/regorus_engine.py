"""The regorus engine: evaluates the Rego source directly (no compiler needed), and validates it.

regorus (a Rego interpreter in Rust, Python module ``regorus``) is the engine for artefacts built
without ``opa`` and the validator that gives line/column errors on any machine. Its errors are Rust
``anyhow`` texts::

    \\n--> policy.rego:5:1\\n  |\\n5 | }\\n  | ^\\nerror: expecting expression\\n\\nStack backtrace: ...

:func:`parse_regorus_error` keeps the position and the message and drops the rest.

Data is added once per engine (regorus shares it between clones); each evaluation sets the input
and asks for the target rule, then the allow rule. ``eval_rule`` answers ``None`` both for an
undefined rule and for a rule whose value is ``null``; only then is the JSON form asked for, which
tells the two apart.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any, Final

import msgspec
import regorus  # type: ignore[import-untyped]

from fluxbee.dataplane.policy.artefact import Artefact, Decision, canonical_json, entrypoint_rule
from fluxbee.dataplane.policy.errors import CompileError, EvaluationError, PolicyLoadError
from fluxbee.dataplane.policy.results import decision_from

log = logging.getLogger(__name__)

POLICY_FILE: Final = "policy.rego"
_LOCATION = re.compile(r"-->\s*(?P<file>[^\s:]+):(?P<line>\d+):(?P<col>\d+)")
_ERROR = re.compile(r"^error:\s*(?P<message>.+)$", re.MULTILINE)
_UNDEFINED_JSON: Final = '"<undefined>"'
_encode = msgspec.json.Encoder().encode


def parse_regorus_error(err: BaseException) -> tuple[str, str | None, int | None, int | None]:
    """``(message, file, line, column)`` from a regorus exception (position ``None`` if absent)."""
    text = str(err).split("\nStack backtrace:", 1)[0].strip()
    location = _LOCATION.search(text)
    message_match = _ERROR.search(text)
    message = message_match.group("message").strip() if message_match else (text or type(err).__name__)
    if location is None:
        return message, None, None, None
    return message, location.group("file"), int(location.group("line")), int(location.group("col"))


def parse_policy(source: str) -> Any:
    """A regorus engine holding ``source``; :class:`CompileError` with line/column if it does not parse."""
    engine = regorus.Engine()
    try:
        engine.add_policy(POLICY_FILE, source)
    except (RuntimeError, ValueError) as err:
        message, file, line, column = parse_regorus_error(err)
    else:
        return engine
    # The error's traceback keeps this frame alive, perhaps in a reference cycle that the collector
    # frees on another thread; a regorus engine may only be dropped by the thread that made it.
    del engine
    raise CompileError(message, line=line, column=column, file=file, compiler="regorus") from None


def _root_name(ref: Any) -> str | None:
    """The first name of a rule reference in regorus's AST (``a`` for ``a``, ``a.b``, ``a[x]``)."""
    while isinstance(ref, dict):
        if "Var" in ref:
            value = ref["Var"].get("value")
            return value if isinstance(value, str) else None
        inner = next(iter(ref.values()), None)
        ref = inner.get("refr") if isinstance(inner, dict) else None
    return None


def rule_names(engine: Any) -> dict[str, set[str]]:
    """``{package path: {rule names}}`` of the policies an engine holds (``router`` → ``{target, allow}``)."""
    out: dict[str, set[str]] = {}
    for module in msgspec.json.decode(engine.get_ast_as_json()):
        ast = module.get("ast", {})
        package = ast.get("package", {}).get("refr")
        parts: list[str] = []
        while isinstance(package, dict):
            if "Var" in package:
                parts.insert(0, package["Var"]["value"])
                break
            dot = package.get("RefDot")
            if not isinstance(dot, dict):
                break
            field = dot.get("field")
            if isinstance(field, list) and len(field) == 2:
                parts.insert(0, str(field[1]))
            package = dot.get("refr")
        names = out.setdefault("/".join(parts), set())
        for rule in ast.get("rules", []):
            body: dict[str, Any] = next(iter(rule.values()), {}) if isinstance(rule, dict) else {}
            ref = body.get("refr")
            head = body.get("head")
            if ref is None and isinstance(head, dict):
                kind: Any = next(iter(head.values()), None)
                ref = kind.get("refr") if isinstance(kind, dict) else None
            name = _root_name(ref)
            if name is not None:
                names.add(name)
    return out


class RegorusEngine:
    """Evaluates an artefact's Rego with regorus; one instance per thread."""

    name: Final = "regorus"

    def __init__(self, artefact: Artefact, data: Mapping[str, Any]) -> None:
        artefact.verify()
        self.artefact = artefact
        try:
            self._engine = parse_policy(artefact.source)
        except CompileError as err:
            raise PolicyLoadError(f"the artefact's Rego does not parse: {err}") from err
        # print() output is kept and logged, never written to the process's stdout (opa build
        # leaves print() out of WebAssembly modules altogether).
        self._engine.set_gather_prints(True)
        try:
            self._engine.add_data_json(canonical_json(dict(data)).decode("utf-8"))
        except (RuntimeError, ValueError) as err:
            raise PolicyLoadError(f"regorus refused the policy data: {parse_regorus_error(err)[0]}") from err
        self._target = entrypoint_rule(artefact.target_entrypoint)
        self._allow = entrypoint_rule(artefact.allow_entrypoint) if artefact.allow_entrypoint else None

    def _rule(self, rule: str) -> tuple[bool, Any]:
        value = self._engine.eval_rule(rule)
        if value is None:
            return self._engine.eval_rule_as_json(rule) != _UNDEFINED_JSON, None
        return True, value

    def evaluate(self, input_doc: Mapping[str, Any]) -> Decision:
        """Decide one input. Raises :class:`EvaluationError` (``OPA_ERROR``) with the detail."""
        try:
            self._engine.set_input_json(_encode(input_doc).decode("utf-8"))
        except (msgspec.EncodeError, TypeError, RuntimeError, ValueError) as err:
            raise EvaluationError(f"input is not JSON: {err}", engine="regorus") from err
        try:
            target = self._rule(self._target)
            allow = self._rule(self._allow) if self._allow is not None else None
        except (RuntimeError, ValueError) as err:
            message, file, line, column = parse_regorus_error(err)
            where = f"{file}:{line}:{column}: " if line is not None else ""
            raise EvaluationError(f"{where}{message}", engine="regorus") from None
        finally:
            prints = self._engine.take_prints()
            if prints:
                log.debug("policy print: %s", "; ".join(prints))
        return decision_from(target, allow, engine="regorus")
