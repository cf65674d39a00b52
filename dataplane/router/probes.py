"""HTTP probes and scraping: ``/healthz``, ``/readyz``, ``/metrics`` and ``/status`` (GET only), on aiohttp.

Any other path is 404 ``not found``; any other method, on any path, is 405 ``GET only``. The query string
is ignored. The server is one more task of the router's: :func:`start` returns the runner that
:meth:`Router.stop <fluxbee.dataplane.router.server.Router.stop>` cleans up.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from aiohttp import web

from fluxbee.dataplane.router import status

if TYPE_CHECKING:
    from fluxbee.dataplane.router.server import Router

_TEXT = "text/plain"


def _respond(code: int, body: bytes, ctype: str = _TEXT) -> web.Response:
    response = web.Response(status=code, body=body, headers={"Content-Type": ctype})
    response.force_close()  # one request per connection, as probes and scrapers use it
    return response


def app(router: Router) -> web.Application:
    """The probe application of one router."""

    async def handle(request: web.Request) -> web.Response:
        if request.method != "GET":
            return _respond(405, b"GET only\n")
        path = request.path
        if path == "/healthz":
            return _respond(200, b"ok\n")
        if path == "/readyz":
            if router.ready.is_set() and not router.stopped.is_set():
                return _respond(200, b"ready\n")
            return _respond(503, b"not ready\n")
        if path == "/metrics":
            return _respond(200, status.prometheus(router).encode(), "text/plain; version=0.0.4")
        if path == "/status":
            return _respond(200, json.dumps(status.snapshot(router)).encode(), "application/json")
        return _respond(404, b"not found\n")

    application = web.Application()
    application.router.add_route("*", "/{tail:.*}", handle)
    return application


async def start(router: Router, host: str, port: int) -> web.AppRunner:
    """Serve the probes on ``host:port``; OSError if the address cannot be bound (nothing is left running)."""
    runner = web.AppRunner(app(router), handle_signals=False, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
