"""Hold every packet of one netfilter queue for a fixed time, then let it go: a wire delay for kernels
built without ``netem``.

Run inside a host's namespace (``ip netns exec NS python nfqueue_delay.py --queue N --delay-ms D``)
after an ``iptables … -j NFQUEUE --queue-num N --queue-bypass`` rule sends the wire's outgoing packets
to queue N.  It speaks nfnetlink's queue protocol directly over an ``AF_NETLINK`` socket (no library):
bind the queue, ask for metadata only, and answer each queued packet with an ``NF_ACCEPT`` verdict
``D`` milliseconds after it arrived, in arrival order, so the wire keeps its order and only gains
latency.  It prints ``ready`` once the queue is bound, and stops on SIGTERM; with ``--queue-bypass``
packets flow undelayed again as soon as it is gone.

The layouts (``linux/netlink.h``, ``linux/netfilter/nfnetlink.h``, ``nfnetlink_queue.h``): a netlink
header (length u32, type u16, flags u16, seq u32, port u32, host order), an nfgenmsg (family u8,
version u8, queue number be16), then attributes (length u16, type u16, host order, padded to 4).
"""

from __future__ import annotations

import argparse
import collections
import os
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NF_ACCEPT = 1
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NLMSG_ERROR = 2

_NLMSG = struct.Struct("=IHHII")
_NFGEN = struct.Struct("!BBH")
_ATTR = struct.Struct("=HH")


def _attr(kind: int, body: bytes) -> bytes:
    raw = _ATTR.pack(_ATTR.size + len(body), kind) + body
    return raw + b"\0" * (-len(raw) % 4)


def _message(msg: int, queue: int, attrs: bytes, seq: int, flags: int = NLM_F_REQUEST) -> bytes:
    body = _NFGEN.pack(socket.AF_UNSPEC, 0, queue) + attrs
    return _NLMSG.pack(_NLMSG.size + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg, flags, seq, 0) + body


def _check_ack(sock: socket.socket, what: str) -> None:
    data = sock.recv(65536)
    length, kind, _, _, _ = _NLMSG.unpack_from(data)
    if kind == NLMSG_ERROR:
        (errno,) = struct.unpack_from("=i", data, _NLMSG.size)
        if errno != 0:
            raise OSError(-errno, f"nfnetlink refused {what}: {os.strerror(-errno)}")


def packet_ids(data: bytes) -> list[int]:
    """The packet ids of the NFQNL_MSG_PACKET messages in one read."""
    ids = []
    at = 0
    while at + _NLMSG.size <= len(data):
        length, kind, _, _, _ = _NLMSG.unpack_from(data, at)
        if length < _NLMSG.size:
            break
        if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            pos = at + _NLMSG.size + _NFGEN.size
            end = at + length
            while pos + _ATTR.size <= end:
                alen, akind = _ATTR.unpack_from(data, pos)
                if alen < _ATTR.size:
                    break
                if akind & 0x3FFF == NFQA_PACKET_HDR:
                    ids.append(struct.unpack_from("!I", data, pos + _ATTR.size)[0])
                pos += (alen + 3) & ~3
        at += (length + 3) & ~3
    return ids


def run(queue: int, delay: float) -> None:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((0, 0))
    sock.send(_message(NFQNL_MSG_CONFIG, queue, _attr(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0, 0)),
                       1, NLM_F_REQUEST | NLM_F_ACK))
    _check_ack(sock, f"binding queue {queue}")
    sock.send(_message(NFQNL_MSG_CONFIG, queue, _attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META)),
                       2, NLM_F_REQUEST | NLM_F_ACK))
    _check_ack(sock, "metadata-only copy mode")
    print("ready", flush=True)
    held: collections.deque[tuple[float, int]] = collections.deque()
    seq = 3
    while True:
        wait = max(0.0, held[0][0] - time.monotonic()) if held else None
        readable, _, _ = select.select([sock], [], [], wait)
        if readable:
            now = time.monotonic()
            held.extend((now + delay, pid) for pid in packet_ids(sock.recv(1 << 20)))
        now = time.monotonic()
        while held and held[0][0] <= now:
            _, pid = held.popleft()
            sock.send(_message(NFQNL_MSG_VERDICT, queue,
                               _attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, pid)), seq))
            seq += 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queue", type=int, required=True)
    p.add_argument("--delay-ms", type=float, required=True)
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        run(args.queue, args.delay_ms / 1000.0)
    except OSError as err:
        print(f"nfqueue_delay: {err}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
