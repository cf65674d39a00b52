"""The broadcast listener: prints every message it receives as one JSON line."""

from __future__ import annotations

import asyncio
import sys

import msgspec

from fluxbee.dataplane.sdk import NodeConfig, NodeSender, run_until_stopped
from fluxbee.dataplane.wire import Message

_encoder = msgspec.json.Encoder()


def handle(sender: NodeSender, message: Message) -> None:
    sys.stdout.buffer.write(_encoder.encode(message) + b"\n")
    sys.stdout.flush()


async def serve(config: NodeConfig, stop: asyncio.Event) -> None:
    await run_until_stopped(handle, config, stop)
