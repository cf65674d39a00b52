"""`fluxbee status`'s table: the router line says how the router runs."""

from __future__ import annotations

from fluxbee.cli import format_status


def test_the_router_line_names_fast_path_scheduling_and_allocator() -> None:
    status = {
        "router": {"name": "RT.gateway@h", "uuid": "u", "pid": 7, "socket": "/run/r.sock", "fast_path": "c",
                   "scheduling": "batch", "allocator": "tuned"},
        "config_version": 3, "nodes": [{"name": "WF.echo@h", "uuid": "n", "vpn_id": 0}], "routes": [], "vpns": [],
        "counters": {},
    }
    lines = format_status(status).splitlines()
    assert lines[1] == "socket  /run/r.sock  fast path c  scheduling batch  allocator tuned"
    assert any(line.startswith("WF.echo@h") for line in lines)
