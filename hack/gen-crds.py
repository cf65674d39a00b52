#!/usr/bin/env python3
"""Write crds/*.yaml (and the chart's copy) from the pydantic models: `hack/gen-crds.py`."""

from __future__ import annotations

import sys
from pathlib import Path

from fluxbee.models.crd import all_crds

ROOT = Path(__file__).resolve().parent.parent
TARGETS = (ROOT / "crds", ROOT / "charts" / "fluxbee" / "crds")


def main() -> int:
    files = all_crds()
    for target in TARGETS:
        target.mkdir(parents=True, exist_ok=True)
        for stale in target.glob("fluxbee.io_*.yaml"):
            if stale.name not in files:
                stale.unlink()
        for name, text in files.items():
            (target / name).write_text(text, encoding="utf-8")
    print(f"wrote {len(files)} CRDs to " + ", ".join(str(t.relative_to(ROOT)) for t in TARGETS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
