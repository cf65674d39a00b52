"""The echo node: answers every user message with the same payload (and ECHO with ECHO_REPLY).

It uses the SDK's ``on_message`` callback mode: each reply is written from
the read callback, with no task switch per message.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from fluxbee.dataplane import wire
from fluxbee.dataplane.sdk import NodeConfig, NodeSender, NotConnectedError, connect
from fluxbee.dataplane.wire import Message

log = logging.getLogger(__name__)


def answer(sender: NodeSender, message: Message) -> None:
    meta = message.meta
    try:
        if meta.type == wire.TYPE_SYSTEM:
            if meta.msg == wire.ECHO:
                sender.reply_nowait(message, message.payload, msg=wire.ECHO_REPLY)
            return  # other system traffic (UNREACHABLE, CONFIG_CHANGED …) needs no answer
        sender.reply_nowait(message, message.payload)
    except NotConnectedError:
        log.warning("reply to %s lost: the router connection is down", message.routing.trace_id)


async def serve(config: NodeConfig, stop: asyncio.Event) -> None:
    holder: list[NodeSender] = []
    sender, _ = await connect(dataclasses.replace(config, on_message=lambda m: answer(holder[0], m)))
    holder.append(sender)
    log.info("echo node %s (%s) ready", sender.name, sender.uuid)
    try:
        await stop.wait()
    finally:
        await sender.close()
