"""What the kind e2e needs from the machine (a uniquely named module, not `conftest`)."""

from __future__ import annotations

import shutil
import subprocess


def missing_tools() -> str | None:
    """None when docker (with an engine), kind and kubectl are usable; else why not."""
    for tool in ("docker", "kind", "kubectl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False,
                           timeout=30)
    if probe.returncode != 0:
        return "docker is installed but no docker engine answers"
    return None
