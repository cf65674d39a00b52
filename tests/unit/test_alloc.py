"""The allocator settings of fluxbee.dataplane.alloc, checked by what they change: page faults per burst."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from fluxbee.dataplane import alloc

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings apply to glibc malloc only")

# Three 300 KB blocks at a time, then freed: the shape of a read, its partial frame and a joined write.
BURSTS = """
import json, resource, sys
from fluxbee.dataplane import alloc
state = alloc.tune() if sys.argv[1] == "tune" else alloc.state()
def burst():
    a = b"x" * 300_000; b = b"y" * 300_000; c = b"z" * 300_000
    del a, b, c
for _ in range(5):
    burst()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(100):
    burst()
print(json.dumps({"state": state, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def bursts(mode: str, **env: str) -> dict[str, object]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    done = subprocess.run([sys.executable, "-c", BURSTS, mode], env={**clean, **env}, capture_output=True,
                          text=True, timeout=60, check=True)
    result: dict[str, object] = json.loads(done.stdout)
    return result


@glibc
def test_tuned_processes_keep_freed_memory_instead_of_faulting_it_back_in() -> None:
    default, tuned = bursts("default"), bursts("tune")
    assert default["state"] == "default" and tuned["state"] == "tuned"
    assert isinstance(default["faults"], int) and isinstance(tuned["faults"], int)
    assert default["faults"] > 5_000, default  # ~73 pages per burst, every burst
    assert tuned["faults"] < 200, tuned


@glibc
def test_malloc_variables_in_the_environment_win() -> None:
    got = bursts("tune", MALLOC_TRIM_THRESHOLD_="131072")
    assert got["state"] == "environment (MALLOC_TRIM_THRESHOLD_)"
    assert isinstance(got["faults"], int) and got["faults"] > 5_000  # nothing was changed behind its back
    tunables = bursts("tune", GLIBC_TUNABLES="glibc.malloc.trim_threshold=131072")
    assert tunables["state"] == "environment (GLIBC_TUNABLES)"


def test_tune_is_idempotent_and_reports_what_it_did() -> None:
    first = alloc.tune()
    assert alloc.tune() == first == alloc.state()
    assert first in ("tuned", "default (not glibc)") or first.startswith("environment (")


def test_what_leaves_a_process_alone() -> None:
    on_glibc = platform.libc_ver()[0] == "glibc"
    assert alloc.left_alone({}) == (None if on_glibc else "default (not glibc)")
    assert alloc.left_alone({"PATH": "/bin", "MALLOC_CHECK_": "3"}) == (None if on_glibc else "default (not glibc)")
    assert alloc.left_alone({"MALLOC_ARENA_MAX": "2", "GLIBC_TUNABLES": "x"}) == (
        "environment (MALLOC_ARENA_MAX, GLIBC_TUNABLES)")


def test_fluxbee_node_processes_run_tuned() -> None:
    """run_node (what `fluxbee node` runs) tunes the allocator before the node starts."""
    code = ("from fluxbee.dataplane import alloc\n"
            "from fluxbee.dataplane.nodes.common import run_node\n"
            "async def main(stop):\n    print(alloc.state())\n"
            "run_node(main)\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    done = subprocess.run([sys.executable, "-c", code], env=clean, capture_output=True, text=True, timeout=60,
                          check=True)
    assert done.stdout.strip() == (alloc.left_alone(clean) or "tuned")
