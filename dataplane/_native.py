"""The optional C extension (``_speedups.c``), or None.

Built when the package is installed, if a C compiler is present; the modules
that use it fall back to pure Python without it.  ``FLUXBEE_PURE_PYTHON=1``
ignores it (tests run both ways).  A leaf: imports nothing else of ours.
"""

from __future__ import annotations

import os
from types import ModuleType

FUNCTIONS = ("scan", "extend", "split", "frame", "trace_seed", "trace_id")
"""What the Python side calls; a build from older sources that lacks one is not used."""


def _load() -> tuple[ModuleType | None, str]:
    if os.environ.get("FLUXBEE_PURE_PYTHON"):
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
