"""The admin node's router connection (``SY.admin`` over the SDK), as a :class:`RouterLink`.

The router's status snapshot is coalesced: concurrent readers share one in-flight request and its
answer for :data:`STATUS_TTL` seconds, so 50 clients reading node status cost one round trip to the
router, not 50, and no reader waits behind a lock held by another kind of request.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

from fluxbee.admin.backend import RouterLink
from fluxbee.admin.errors import AdminError
from fluxbee.dataplane import wire
from fluxbee.dataplane.sdk import (
    NodeSender,
    NotConnectedError,
    RequestTimeoutError,
    SdkError,
    UnreachableError,
)
from fluxbee.dataplane.wire import Meta

STATUS_TTL = 0.1


def _transport(err: Exception) -> AdminError:
    if isinstance(err, RequestTimeoutError):
        return AdminError("TIMEOUT", str(err))
    if isinstance(err, UnreachableError):
        code = "NODE_NOT_FOUND" if err.code == wire.NODE_NOT_FOUND else "UNREACHABLE"
        return AdminError(code, str(err), payload={"reason": err.code, "original_dst": err.original_dst})
    if isinstance(err, NotConnectedError):
        return AdminError("ROUTER_UNAVAILABLE", f"not connected to the router: {err}")
    return AdminError("TRANSPORT_ERROR", str(err))


class SdkRouterLink:
    def __init__(self, sender: NodeSender, *, timeout: float = 5.0) -> None:
        self.sender = sender
        self.timeout = timeout
        self._status: tuple[float, dict[str, Any]] | None = None
        self._inflight: asyncio.Future[dict[str, Any]] | None = None

    def invalidate(self) -> None:
        self._status = None

    async def router_status(self) -> dict[str, Any]:
        cached = self._status
        if cached is not None and time.monotonic() - cached[0] < STATUS_TTL:
            return cached[1]
        if self._inflight is None:
            self._inflight = asyncio.get_running_loop().create_task(self._fetch_status(), name="admin-router-status")
        future = self._inflight
        try:
            return await asyncio.shield(future)
        finally:
            if future.done() and self._inflight is future:
                self._inflight = None

    async def close(self) -> None:
        """Stop the shared status request, if one is in flight (its waiters get CancelledError)."""
        inflight, self._inflight = self._inflight, None
        if inflight is not None and not inflight.done():
            inflight.cancel()
            await asyncio.gather(inflight, return_exceptions=True)

    async def _fetch_status(self) -> dict[str, Any]:
        try:
            status = await self.sender.router_status(timeout=self.timeout)
        except SdkError as err:
            raise _transport(err) from err
        self._status = (time.monotonic(), status)
        return status

    async def node_status(self, name: str, timeout: float) -> dict[str, Any] | None:
        try:
            reply = await self.sender.request(name, None, msg_type=wire.TYPE_SYSTEM, msg=wire.NODE_STATUS_GET,
                                              timeout=timeout)
        except SdkError:
            return None
        return cast(dict[str, Any], reply.payload) if isinstance(reply.payload, dict) else None

    async def config_changed(self, subsystem: str, config: dict[str, Any], version: int) -> dict[str, Any]:
        try:
            reply = await self.sender.request(self.sender.router_uuid,
                                              {"subsystem": subsystem, "version": version, "config": config},
                                              msg_type=wire.TYPE_SYSTEM, msg=wire.CONFIG_CHANGED, timeout=self.timeout)
        except SdkError as err:
            raise _transport(err) from err
        finally:
            self.invalidate()
        return cast(dict[str, Any], reply.payload) if isinstance(reply.payload, dict) else {}

    async def router_request(self, msg: str, payload: dict[str, Any], *, timeout: float) -> tuple[str | None, Any]:
        try:
            reply = await self.sender.request(self.sender.router_uuid, payload, msg_type=wire.TYPE_SYSTEM, msg=msg,
                                              timeout=timeout)
        except SdkError as err:
            raise _transport(err) from err
        finally:
            self.invalidate()
        return reply.meta.msg, reply.payload

    async def send(self, dst: str, payload: Any, *, msg_type: str, msg: str | None, meta: dict[str, Any],
                   ttl: int) -> str:
        try:
            return await asyncio.wait_for(
                self.sender.send(dst, payload, msg_type=msg_type, meta=Meta(type=msg_type, msg=msg, **meta), ttl=ttl),
                self.timeout)
        except TimeoutError as err:
            raise AdminError("TIMEOUT", f"the router did not take the message within {self.timeout:g} s") from err
        except SdkError as err:
            raise _transport(err) from err

    async def request(self, dst: str, payload: Any, *, msg_type: str, msg: str, meta: dict[str, Any], ttl: int,
                      timeout: float) -> tuple[str | None, Any]:
        try:
            reply = await self.sender.request(dst, payload, msg_type=msg_type, msg=msg, ttl=ttl, timeout=timeout,
                                              meta=Meta(type=msg_type, msg=msg, **meta))
        except SdkError as err:
            raise _transport(err) from err
        return reply.meta.msg, reply.payload


class RouterRoutes:
    """:class:`~fluxbee.admin.backend.RouteConfig` of a local hive: the router's live config,
    read from its status and replaced with ``CONFIG_CHANGED``."""

    def __init__(self, link: RouterLink) -> None:
        self.link = link

    async def lists(self) -> dict[str, Any]:
        status = await self.link.router_status()
        return {"config_version": status.get("config_version"), "routes": status.get("routes", []),
                "vpns": status.get("vpns", [])}

    async def apply(self, subsystem: str, items: list[dict[str, Any]], version: int,
                    base: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """``base`` is not checked: a local hive has one admin process, whose route lock orders its edits."""
        key = "routes" if subsystem == "routes" else "vpns"
        return await self.link.config_changed(subsystem, {key: items}, version)


def router_unreachable(detail: str) -> AdminError:
    return AdminError("ROUTER_UNREACHABLE", detail)


class UnreachableRouterLink:
    """The link of an admin server that has no router socket in reach (an admin process run away
    from the hive's hosts, or before the router has started).  Everything that
    needs the router refuses with ``ROUTER_UNREACHABLE`` (503); nothing is guessed."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def _fail(self) -> AdminError:
        return router_unreachable(self.reason)

    async def router_status(self) -> dict[str, Any]:
        raise self._fail()

    async def node_status(self, name: str, timeout: float) -> dict[str, Any] | None:
        raise self._fail()

    async def config_changed(self, subsystem: str, config: dict[str, Any], version: int) -> dict[str, Any]:
        raise self._fail()

    async def router_request(self, msg: str, payload: dict[str, Any], *, timeout: float) -> tuple[str | None, Any]:
        raise self._fail()

    async def send(self, dst: str, payload: Any, *, msg_type: str, msg: str | None, meta: dict[str, Any],
                   ttl: int) -> str:
        raise self._fail()

    async def request(self, dst: str, payload: Any, *, msg_type: str, msg: str, meta: dict[str, Any], ttl: int,
                      timeout: float) -> tuple[str | None, Any]:
        raise self._fail()


class SwitchableRouterLink:
    """A link whose router connection comes and goes: calls go to ``current``, which the admin
    server's connector task swaps between an :class:`SdkRouterLink` and an :class:`UnreachableRouterLink`."""

    def __init__(self, current: RouterLink) -> None:
        self.current = current

    async def router_status(self) -> dict[str, Any]:
        return await self.current.router_status()

    async def node_status(self, name: str, timeout: float) -> dict[str, Any] | None:
        return await self.current.node_status(name, timeout)

    async def config_changed(self, subsystem: str, config: dict[str, Any], version: int) -> dict[str, Any]:
        return await self.current.config_changed(subsystem, config, version)

    async def router_request(self, msg: str, payload: dict[str, Any], *, timeout: float) -> tuple[str | None, Any]:
        return await self.current.router_request(msg, payload, timeout=timeout)

    async def send(self, dst: str, payload: Any, *, msg_type: str, msg: str | None, meta: dict[str, Any],
                   ttl: int) -> str:
        return await self.current.send(dst, payload, msg_type=msg_type, msg=msg, meta=meta, ttl=ttl)

    async def request(self, dst: str, payload: Any, *, msg_type: str, msg: str, meta: dict[str, Any], ttl: int,
                      timeout: float) -> tuple[str | None, Any]:
        return await self.current.request(dst, payload, msg_type=msg_type, msg=msg, meta=meta, ttl=ttl,
                                          timeout=timeout)
