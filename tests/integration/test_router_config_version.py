"""The router's global config version is monotonic across restarts (kill -9 and clean stops)."""

from __future__ import annotations

from collections.abc import Callable

from hive_harness import RouterProc, wait_until

ROUTES = [{"prefix": "WF.legacy", "action": "DROP"}]


def _version(router: RouterProc) -> int:
    return int(router.status()["config_version"])


def _bump(router: RouterProc, n: int) -> int:
    """Apply ``n`` config changes through the config file the router watches; the last version."""
    for i in range(n):
        before = _version(router)
        router.write_config({"routes": ROUTES, "vpns": [{"pattern": "WF.red", "vpn_id": i + 1}]})
        wait_until(lambda before=before: _version(router) > before, 10, "the config change to be applied")
    return _version(router)


def test_the_config_version_never_goes_down_when_the_router_restarts(
        router_factory: Callable[..., RouterProc]) -> None:
    router = router_factory()
    seen = _bump(router, 4)
    assert seen >= 5
    # kill -9: the saved state is all the next router has
    assert router.proc is not None
    router.proc.kill()
    router.proc.wait()
    router.start()
    after_kill = _version(router)
    assert after_kill > seen
    # a clean stop, and the config file edited while the router is down (the file wins over the state)
    assert router.stop() == 0
    router.write_config({"routes": [], "vpns": []})
    router.start()
    status = router.status()
    assert status["config_version"] > after_kill
    assert status["routes"] == [] and status["vpns"] == []
    assert _bump(router, 2) > status["config_version"]
