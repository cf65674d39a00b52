"""The optional C extension (``_speedups.c``), or None.

Built when the package is installed, if a C compiler is present; the modules
that use it fall back to pure Python without it.  ``FLUXBEE_PURE_PYTHON=1``
ignores it (tests run both ways).  A leaf: imports nothing else of ours.
"""

from __future__ import annotations

import os
from types import ModuleType


def _load() -> tuple[ModuleType | None, str]:
    if os.environ.get("FLUXBEE_PURE_PYTHON"):
        return None, "python (FLUXBEE_PURE_PYTHON is set)"
    try:
        from fluxbee.dataplane import _speedups  # type: ignore[attr-defined]
    except ImportError as err:
        return None, f"python (C extension not built: {err})"
    return _speedups, "c"


speedups, IMPLEMENTATION = _load()
"""The extension module or None, and a word on which is in use (``"c"`` or why Python)."""
