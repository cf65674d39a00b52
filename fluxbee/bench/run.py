"""``fluxbee bench``: run every section in turn and print the JSON or the text report.

Every Python process of the bench, for every transport, runs with the allocator settings of
:mod:`fluxbee.dataplane.alloc`, as the router and ``fluxbee node`` do.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import uvloop

from fluxbee.bench.crosshive import CrossHive
from fluxbee.bench.memory import RouterMemory
from fluxbee.bench.policy import PolicyDecisions
from fluxbee.bench.report import Section, format_table
from fluxbee.bench.results import Plan
from fluxbee.bench.transports import Transports

SECTIONS: tuple[Section, ...] = (Transports(), RouterMemory(), PolicyDecisions(), CrossHive())
"""Measured in this order; each adds keys to the JSON output and lines to the report (:mod:`.report`)."""


async def run_all(plan: Plan, sections: tuple[Section, ...] = SECTIONS) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="fxb-"))
    out: dict[str, Any] = {}
    try:
        for section in sections:
            out |= await section.measure(plan, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def report(result: dict[str, Any], sections: tuple[Section, ...] = SECTIONS) -> str:
    return format_table([section.lines(result) for section in sections])


def run_bench(*, quick: bool, as_json: bool, round_trips: int | None = None, messages: int | None = None,
              idle_nodes: int | None = None) -> int:
    plan = Plan.chosen(quick=quick, round_trips=round_trips, messages=messages, idle_nodes=idle_nodes)

    async def main() -> dict[str, Any]:
        # SIGTERM stops the bench like Ctrl-C: its processes are stopped and its files removed.
        task = asyncio.current_task()
        if task is not None:
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await run_all(plan)

    from fluxbee.dataplane import alloc

    alloc.tune()  # the client of every transport, like the bench's workers (workers.main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        try:
            result = runner.run(main())
        except asyncio.CancelledError:
            print("fluxbee bench: stopped by SIGTERM", file=sys.stderr)
            return 128 + signal.SIGTERM
    print(json.dumps(result) if as_json else report(result))
    return 0
