"""The admin API inside ``fluxbee up``: one more root task of the supervisor.

The local-mode twin of :mod:`fluxbee.admin.main_kubernetes`: the same actions over
:class:`~fluxbee.admin.supervisor_backend.LocalBackend` and a file history.

It connects to the router as ``SY.admin`` (answering ``ADMIN_COMMAND``), runs the drift monitor, on
a worker hive follows its mother's global routes and VPN rules, and serves HTTP.  If the port cannot
be bound the hive keeps running without HTTP and says so (the socket twin still works); ``<run
dir>/state/admin.json`` records the URL when it is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from aiohttp import web

from fluxbee.admin.actions import Context
from fluxbee.admin.drift import DriftMonitor
from fluxbee.admin.gateway import serve_admin_commands
from fluxbee.admin.global_config import STATE_FILE, FileGlobalStore, GlobalConfig, follow_mother
from fluxbee.admin.history import FileHistory, History
from fluxbee.admin.http import AdminSettings, admin_site, build_app
from fluxbee.admin.link import SdkRouterLink
from fluxbee.admin.supervisor_backend import LocalBackend
from fluxbee.dataplane.names import ADMIN_NODE
from fluxbee.dataplane.sdk import NodeConfig, connect
from fluxbee.supervisor.credentials import credential_path
from fluxbee.supervisor.hive import LocalHive

log = logging.getLogger(__name__)
ADMIN_NODE_NAME = ADMIN_NODE


def local_admin(settings: AdminSettings) -> Callable[[LocalHive], AbstractAsyncContextManager[Any]]:
    @contextlib.asynccontextmanager
    async def run(hive: LocalHive) -> AsyncIterator[Any]:
        sender, receiver = await connect(NodeConfig(name=ADMIN_NODE_NAME, run_dir=hive.run_dir, connect_timeout=10.0,
                                                    credential_file=credential_path(hive.run_dir, ADMIN_NODE_NAME)))
        backend = LocalBackend(hive)
        link = SdkRouterLink(sender)
        gc = GlobalConfig(FileGlobalStore(hive.run_dir / "admin" / STATE_FILE))
        ctx = Context(backend=backend, link=link, history=History(FileHistory(
            hive.run_dir / "admin" / "history"), backend.hive_id), global_config=gc)
        tasks = [asyncio.create_task(serve_admin_commands(ctx, sender, receiver), name="admin-command-gateway"),
                 asyncio.create_task(DriftMonitor(ctx).run(), name="admin-drift-monitor")]
        mother = (await backend.hive_info()).get("mother_hive")
        if isinstance(mother, str) and mother:  # a worker follows its mother's global routes and VPNs
            tasks.append(asyncio.create_task(follow_mother(ctx, gc, mother), name="admin-global-config-follower"))
        runner = web.AppRunner(build_app(ctx, settings), handle_signals=False, access_log=None)
        await runner.setup()
        state_file = hive.run_dir / "state" / "admin.json"
        try:
            site = admin_site(runner, settings)
            try:
                await site.start()
            except OSError as err:
                print(f"fluxbee up: the admin API cannot listen on {settings.host}:{settings.port}: {err}; the hive "
                      "runs without it (ADMIN_COMMAND still works)", flush=True)
            else:
                port = runner.addresses[0][1] if runner.addresses else settings.port
                url = f"http://{settings.host}:{port}"
                state_file.parent.mkdir(parents=True, exist_ok=True)
                state_file.write_text(json.dumps({"url": url, "pid": os.getpid(), "hive_id": backend.hive_id}))
                print(f"hive {backend.hive_id!r}: admin API on {url}", flush=True)
            yield ctx
        finally:
            with contextlib.suppress(OSError):
                state_file.unlink()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.shield(runner.cleanup())
            await link.close()
            await sender.close()

    return run
