"""What every example node shares: config from the environment, signals, the event loop."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fluxbee.dataplane import env
from fluxbee.dataplane.sdk import NodeConfig, default_run_dir

log = logging.getLogger(__name__)

CONFIG_ENV = env.NODE_CONFIG.name


class NodeConfigError(Exception):
    """The effective config named by FLUXBEE_NODE_CONFIG is missing or invalid."""


def load_effective_config() -> dict[str, Any]:
    """The node's effective config (template + overrides + ``_system``), or {} if none is given."""
    path = env.NODE_CONFIG.read()
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise NodeConfigError(f"{CONFIG_ENV}={path}: cannot read: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise NodeConfigError(f"{CONFIG_ENV}={path}: not UTF-8: {err}") from err
    except json.JSONDecodeError as err:
        raise NodeConfigError(f"{CONFIG_ENV}={path}: invalid JSON: {err}") from err
    if not isinstance(data, dict):
        raise NodeConfigError(f"{CONFIG_ENV}={path}: expected a JSON object")
    return data


def node_config(
    default_name: str, name: str | None, run_dir: str | None, persistent: bool
) -> tuple[NodeConfig, dict[str, Any]]:
    """SDK config from flags, then the effective config's ``_system`` block, then defaults."""
    effective = load_effective_config()
    system = effective.get("_system")
    if not isinstance(system, dict):
        system = {}
    node_name = name or system.get("node_name") or default_name
    directory = Path(run_dir) if run_dir else default_run_dir()
    config = NodeConfig(name=str(node_name), run_dir=directory, persistent=persistent, config=effective)
    return config, effective


def run_node(main: Callable[[asyncio.Event], Awaitable[None]]) -> int:
    """Run ``main(stop)`` on uvloop until SIGINT/SIGTERM sets ``stop`` (allocator tuned: :mod:`..alloc`)."""
    import uvloop

    from fluxbee.dataplane import alloc

    alloc.tune()

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner_:
        runner_.run(runner())
    return 0
