"""What can go wrong with a policy, as typed errors carrying the wire reason and their fields.

One family (:class:`PolicyError`), one wire ``code`` per kind, so that the router, the admin API and
the CLI answer with the same reason whichever engine was involved:

- :class:`CompileError` (``COMPILE_ERROR``): the Rego does not parse or type-check, or the compiler
  refused it. ``line``/``column`` are 1-based positions in the policy source when the compiler gave
  them (``None`` otherwise); ``message`` is the compiler's own text without positions or backtraces.
- :class:`PolicyLoadError` (``POLICY_LOAD_ERROR``): an artefact that cannot be run here: a
  WebAssembly ABI this host does not speak, builtins the host does not provide (all listed),
  data that is not a JSON object, a hash that does not match.
- :class:`EvaluationError` (``OPA_ERROR``): the policy failed while deciding one input (a rule with
  conflicting values, a builtin that raised, a result of the wrong type). ``detail`` says which.
"""

from __future__ import annotations

from typing import ClassVar

COMPILE_ERROR = "COMPILE_ERROR"
POLICY_LOAD_ERROR = "POLICY_LOAD_ERROR"
OPA_ERROR = "OPA_ERROR"


class PolicyError(Exception):
    """Base of every policy failure; ``code`` is the reason the wire and the admin API carry."""

    code: ClassVar[str] = "POLICY_ERROR"


class CompileError(PolicyError):
    code = COMPILE_ERROR

    def __init__(self, message: str, *, line: int | None = None, column: int | None = None,
                 file: str | None = None, compiler: str = "") -> None:
        where = f"{file or 'policy'}:{line}:{column}: " if line is not None and column is not None else (
            f"{file or 'policy'}:{line}: " if line is not None else "")
        super().__init__(f"{where}{message}")
        self.message = message
        self.line = line
        self.column = column
        self.file = file
        self.compiler = compiler  # "opa" or "regorus": which one refused the source


class PolicyLoadError(PolicyError):
    code = POLICY_LOAD_ERROR

    def __init__(self, message: str, *, unsupported_builtins: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.unsupported_builtins = unsupported_builtins


class EvaluationError(PolicyError):
    code = OPA_ERROR

    def __init__(self, detail: str, *, engine: str) -> None:
        super().__init__(f"{engine}: {detail}")
        self.detail = detail
        self.engine = engine
