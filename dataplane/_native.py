"""The optional C extension (``_speedups.c``), or None, and the one place that picks C or Python.

Built when the package is installed, if a C compiler is present; the modules
that use it fall back to pure Python without it.  ``FLUXBEE_PURE_PYTHON=1``
ignores it (tests run both ways).  Every module binds its fast function with
:func:`choose` at import, so :func:`python_only` can switch them all to Python
for a test.  A leaf: imports nothing of ours but the environment table.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any, TypeVar, cast

from fluxbee.dataplane import env

_T = TypeVar("_T")

FUNCTIONS = ("scan", "extend", "split", "frame", "trace_seed", "trace_id",
             "scan_null", "splice_null", "extend_null", "hop")
"""What the Python side calls; a build from older sources that lacks one is not used."""


def _load() -> tuple[ModuleType | None, str]:
    if env.PURE_PYTHON.read():
        return None, "python (FLUXBEE_PURE_PYTHON is set)"
    try:
        from fluxbee.dataplane import _speedups  # type: ignore[attr-defined]
    except ImportError as err:
        return None, f"python (C extension not built: {err})"
    missing = [name for name in FUNCTIONS if not callable(getattr(_speedups, name, None))]
    if missing:  # e.g. new sources over an editable install that was not rebuilt
        return None, f"python (C extension out of date, lacks {', '.join(missing)}: run `make setup` or reinstall)"
    return _speedups, "c"


speedups, IMPLEMENTATION = _load()
"""The extension module or None, and a word on which is in use (``"c"`` or why Python)."""


_CHOSEN: list[tuple[str, str, object]] = []
"""Every binding :func:`choose` made: (module, attribute, the Python implementation)."""


def choose(module: str, attribute: str, name: str, python: _T) -> _T:
    """The extension's function ``name`` when it is in use, else ``python``.

    ``module.attribute`` is where the caller binds the result (``choose(__name__, "scan", "scan",
    scan_py)``); it is remembered so :func:`python_only` can rebind it.
    """
    _CHOSEN.append((module, attribute, python))
    return cast(_T, getattr(speedups, name)) if speedups is not None else python


@contextlib.contextmanager
def python_only() -> Iterator[None]:
    """Run every binding made with :func:`choose` in pure Python until the block ends (for tests).

    Reaches callers that look the function up at call time (``fastpath.scan``, ``wire.new_trace_id``);
    a copy taken before the block (``f = fastpath.scan``) keeps the implementation it had.  The
    Python trace-id counter is not the C one's: ids made inside the block may repeat ids made before it.
    """
    saved: list[tuple[dict[str, Any], str, Any]] = []
    try:
        for module, attribute, python in _CHOSEN:
            namespace = vars(sys.modules[module])
            saved.append((namespace, attribute, namespace[attribute]))
            namespace[attribute] = python
        yield
    finally:
        for namespace, attribute, value in reversed(saved):
            namespace[attribute] = value
