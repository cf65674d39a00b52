"""The router's config state: load at start, apply, persist, and poll the config file and claims.

The rules themselves are pure (:mod:`fluxbee.dataplane.router.config`, :mod:`fluxbee.dataplane.router.trust`);
this module holds what the router does with them: which config wins at start (the most recent of the
file and the last applied state), installing a version atomically and re-VPNing connected nodes, writing
the applied config to ``state/`` so a restart keeps it, and reloading the file and the claims directory
when they change (a bad one keeps what is in force).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fluxbee.dataplane import wire
from fluxbee.dataplane.router import handshake, trust
from fluxbee.dataplane.router.config import (
    ConfigError,
    HiveConfigDoc,
    RouteTable,
    load_config_file,
    parse_routes,
    parse_vpns,
)
from fluxbee.dataplane.router.settings import RouterError
from fluxbee.models.routing import RouteSpec, VpnSpec

if TYPE_CHECKING:
    from fluxbee.dataplane.router.server import Router

log = logging.getLogger(__name__)


@dataclass(slots=True)
class SectionVersions:
    """Last applied version of each section a CONFIG_CHANGED may replace."""

    routes: int = 0
    vpns: int = 0


def apply_config(router: Router, routes: list[RouteSpec], vpns: list[VpnSpec], *, source: str) -> None:
    """Install a new config version atomically and re-VPN connected nodes live."""
    router.config_version += 1
    for moved in router.registry.install(RouteTable.build(router.config_version, routes, vpns)):
        router.shm_put(moved)
    router.publish_config()
    router.counters.config_applied[source] += 1
    persist(router)
    log.info("config version %d applied from %s: %d routes, %d vpn rules",
             router.config_version, source, len(routes), len(vpns))

def state_path(router: Router) -> Path:
    return router.settings.run_dir / "state" / f"{router.name}.config.json"

def persist(router: Router) -> None:
    doc = {
        "saved_at": time.time(),
        "config_version": router.config_version,
        "section_versions": {"routes": router.section_versions.routes, "vpns": router.section_versions.vpns},
        "routes": [r.model_dump(mode="json") for r in router.registry.table.route_specs],
        "vpns": [v.model_dump(mode="json") for v in router.registry.table.vpn_specs],
    }
    path = state_path(router)
    tmp = path.with_suffix(".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # also if it was removed under a running router
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, path)
    except OSError as err:
        log.error("cannot persist the applied config to %s: %s; it is lost on restart", path, err)

def load_initial_config(router: Router) -> None:
    """Config at start: the most recent of the config file and the last applied state."""
    routes: list[RouteSpec] = []
    vpns: list[VpnSpec] = []
    source = "default"
    file_mtime = -1.0
    path = router.settings.config_path
    if path is not None:
        try:
            doc = load_config_file(path)
        except ConfigError as err:
            raise RouterError(str(err)) from err
        check_hive(router, doc, path)
        routes, vpns, source = list(doc.routes), list(doc.vpns), "file"
        st = path.stat()
        file_mtime = st.st_mtime
        router.config_sig = (st.st_mtime_ns, st.st_size, st.st_ino)
    state = state_path(router)
    if state.exists():
        try:
            saved = json.loads(state.read_text())
            # the version only grows, across restarts too, whichever config wins below
            router.config_version = max(router.config_version, int(saved.get("config_version", 0)))
            if float(saved.get("saved_at", 0)) >= file_mtime:
                routes = parse_routes(saved.get("routes", []))
                vpns = parse_vpns(saved.get("vpns", []))
                versions = saved.get("section_versions", {})
                router.section_versions = SectionVersions(int(versions.get("routes", 0)),
                                                          int(versions.get("vpns", 0)))
                source = "state"
        except (OSError, ValueError, ConfigError, TypeError, AttributeError) as err:
            log.error("ignoring unreadable saved config %s: %s", state, err)
    apply_config(router, routes, vpns, source=source)

def check_hive(router: Router, doc: HiveConfigDoc, path: Path) -> None:
    if doc.hive_id is not None and doc.hive_id != router.hive_id:
        raise ConfigError(f"{path}: hive_id {doc.hive_id!r} does not match this router's {router.hive_id!r}")

def poll_config(router: Router) -> None:
    path = router.settings.config_path
    if path is None:
        return
    try:
        st = path.stat()
    except OSError:
        return  # a ConfigMap swap in progress, or removed: keep the current config
    sig = (st.st_mtime_ns, st.st_size, st.st_ino)
    if sig == router.config_sig:
        return
    router.config_sig = sig
    try:
        doc = load_config_file(path)
        check_hive(router, doc, path)
    except ConfigError as err:
        router.counters.config_errors["file"] += 1
        log.error("config file change refused; keeping version %d: %s", router.config_version, err)
        return
    router.section_versions = SectionVersions()
    apply_config(router, list(doc.routes), list(doc.vpns), source="file")



def poll_claims(router: Router) -> None:
    """Reload the claims directory when it changes; a bad one keeps the claims in force."""
    directory = router.settings.claims_dir
    if directory is None:
        return
    sig = trust.dir_signature(directory)
    if sig == router.claims_sig:
        return
    try:
        claims = trust.Claims(trust.load_claims_dir(directory))
    except trust.ClaimsError as err:
        router.counters.config_errors["claims"] += 1
        log.error("claims change refused; keeping the %d claims in force: %s", len(router.claims.by_name), err)
        router.claims_sig = sig
        return
    router.claims_sig = sig
    router.claims = claims
    router.counters.config_applied["claims"] += 1
    log.info("claims reloaded from %s: %d names", directory, len(claims.by_name))
    for conn in list(router.registry.nodes()):
        verdict = claims.check(conn.base, conn.cred, conn.proof)
        if not verdict.ok:  # e.g. an undeclared node squatting a name the hive now declares
            router.counters.hello_refused[trust.NAME_CLAIMED] += 1
            conn.fail(wire.INVALID_HELLO, verdict.detail)
            continue
        if verdict.claimed != conn.claimed:
            handshake.tally(router, conn, -1)
            conn.claimed = verdict.claimed
            handshake.tally(router, conn, +1)
        conn.grants = verdict.grants
