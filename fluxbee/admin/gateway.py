"""``ADMIN_COMMAND`` over the router: the same actions, answered as ``ADMIN_COMMAND_RESPONSE``.

Request payload ``{action, target?, params?, request_id?}``; response payload
``{status, action, payload, error_code, error_detail, request_id?}`` with the same ``trace_id``.
Each command runs in its own task (at most :data:`MAX_CONCURRENT` at once; more wait their turn).
A command from another hive (over the links) is authorised first
(:func:`fluxbee.admin.remote.authorise`: only the mother hive's ``SY.admin``, on this hive only).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fluxbee.admin import remote
from fluxbee.admin.actions import Call, Context, dispatch
from fluxbee.admin.actions.hives import authorise_remote
from fluxbee.admin.errors import AdminError, envelope, error_envelope
from fluxbee.dataplane import wire
from fluxbee.dataplane.sdk import NodeReceiver, NodeSender, SdkError
from fluxbee.dataplane.wire import Message

log = logging.getLogger(__name__)
MAX_CONCURRENT = 32


async def answer(ctx: Context, msg: Message) -> dict[str, Any]:
    body = msg.payload
    if not isinstance(body, dict):
        return error_envelope(None, "INVALID_REQUEST", "ADMIN_COMMAND payload must be an object")
    action = body.get("action")
    request_id = body.get("request_id")
    extra = {"request_id": request_id} if request_id is not None else {}
    if not isinstance(action, str) or not action:
        return {**error_envelope(None, "INVALID_REQUEST", "missing action"), **extra}
    target = body.get("target")
    params = body.get("params", {})
    unknown = sorted(set(body) - {"action", "target", "params", "request_id"})
    sender = msg.routing.src_l2_name
    try:
        if not sender:
            # The router stamps the authenticated sender on every frame it routes (and refuses
            # ADMIN_COMMAND from unauthenticated ones); a frame without it did not come that way.
            raise AdminError("FORBIDDEN", "ADMIN_COMMAND without a router-stamped sender")
        if unknown:
            raise AdminError("INVALID_REQUEST", f"unknown field(s): {', '.join(unknown)}")
        if target is not None and not isinstance(target, str):
            raise AdminError("INVALID_REQUEST", "target must be a string")
        if not isinstance(params, dict):
            raise AdminError("INVALID_REQUEST", "params must be an object")
        if isinstance(target, str) and "@" in target:  # `X@hive` targets the hive
            target = target.rpartition("@")[2]
        if remote.is_remote(sender, ctx.backend.hive_id):  # from another hive, over the links
            await authorise_remote(ctx, sender, action, target)
        payload = await dispatch(ctx, action, target, params,
                                 Call("admin_command", sender))
    except AdminError as err:
        return {**error_envelope(action, err.code, err.detail, err.payload), **extra}
    except Exception:
        log.exception("ADMIN_COMMAND %s failed", action)
        return {**error_envelope(action, "INTERNAL_ERROR", "the admin API failed; see its log"), **extra}
    return {**envelope(action, payload), **extra}


async def serve_admin_commands(ctx: Context, sender: NodeSender, receiver: NodeReceiver) -> None:
    """Read the admin node's inbox until cancelled; answer ADMIN_COMMANDs, drop the rest."""
    limit = asyncio.Semaphore(MAX_CONCURRENT)
    tasks: set[asyncio.Task[None]] = set()

    async def one(msg: Message) -> None:
        async with limit:
            reply = await answer(ctx, msg)
            try:
                await sender.reply(msg, reply, msg_type=wire.TYPE_ADMIN, msg=wire.ADMIN_COMMAND_RESPONSE)
            except SdkError as err:
                log.warning("ADMIN_COMMAND reply to %s lost: %s", msg.routing.src, err)

    try:
        async for msg in receiver:
            if msg.meta.msg != wire.ADMIN_COMMAND:
                continue
            task = asyncio.create_task(one(msg), name=f"admin-command-{msg.routing.trace_id}")
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
