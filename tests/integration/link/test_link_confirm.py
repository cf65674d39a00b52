"""Receipt confirmation on a link: a pong confirms every frame written before its ping (what a dying
session refuses instead of losing), a ping out of turn confirms at once, and a peer cannot confirm
ahead of our own clock."""

from __future__ import annotations

from collections.abc import Callable

from test_link_sessions import free_port, make, pki, until  # noqa: F401  (make and pki are fixtures)

from fluxbee.dataplane.link import protocol as p


async def test_pongs_confirm_what_was_written_before_their_ping(make: Callable[..., object]) -> None:  # noqa: F811
    port = free_port()
    a, _ = await make("A", wan_listen=("127.0.0.1", port))  # type: ignore[operator,misc]
    b, _ = await make("B", uplinks=(("127.0.0.1", port),))  # type: ignore[operator,misc]
    await until(lambda: a.session_for_hive("B") is not None and b.session_for_hive("A") is not None)
    sa, sb = a.session_for_hive("B"), b.session_for_hive("A")
    assert sa is not None and sb is not None
    await until(lambda: sa.confirmed_ms > 0)  # the regular hello's pong
    before = sa.clock() * 1000
    sa.probe()  # a ping out of turn, pending until its pong; a second probe meanwhile sends nothing more
    pending = sa._probe_ms
    assert pending is not None and pending >= before
    sa.probe()
    assert sa._probe_ms == pending
    await until(lambda: sa._probe_ms is None)
    assert sa.confirmed_ms >= pending
    # a pong from the peer carrying a time ahead of ours confirms nothing beyond the moment it arrives
    sb._send_control(p.LINK_PONG, p.Ping(sent_ms=sa.clock() * 1000 + 1e9))
    await until(lambda: sa.rtt_ms == 0.0)
    assert before <= sa.confirmed_ms <= sa.clock() * 1000
