"""Router counters, rendered as Prometheus text."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

_HELP = {
    "frames_in": "Frames received from nodes.",
    "frames_out": "Frames written to nodes.",
    "delivered": "Messages delivered to a node.",
    "broadcasts": "Broadcast messages fanned out.",
    "unreachable": "UNREACHABLE replies sent, by reason.",
    "ttl_exceeded": "TTL_EXCEEDED replies sent.",
    "dropped": "Messages dropped, by reason.",
    "dropped_bytes": "Bytes of queued output discarded with a cut-off connection, by reason.",
    "rejected": "Frames or connections rejected, by reason.",
    "connections": "Connections accepted.",
    "disconnects": "Connections closed, by reason.",
    "config_applied": "Config versions applied, by source.",
    "config_errors": "Config updates refused, by source.",
    "hello_refused": "HELLOs refused by the trust model, by reason (NAME_CLAIMED, UUID_IN_USE, PEER_LIMIT, ...).",
    "forbidden": "Privileged messages (CONFIG_CHANGED, ADMIN_COMMAND) refused FORBIDDEN, by message.",
    "forwarded": "Messages forwarded to another router over a link, by link role (mesh, wan).",
    "takeovers": "Live connections replaced by a HELLO with their UUID (replaced), and takeovers refused "
                 "to keep the incumbent (refused).",
}


@dataclass(slots=True)
class Counters:
    """Monotonic counters; labelled ones keep one value per label."""

    frames_in: int = 0
    frames_out: int = 0
    delivered: int = 0
    broadcasts: int = 0
    ttl_exceeded: int = 0
    connections: int = 0
    unreachable: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    dropped_bytes: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    disconnects: Counter[str] = field(default_factory=Counter)
    config_applied: Counter[str] = field(default_factory=Counter)
    config_errors: Counter[str] = field(default_factory=Counter)
    hello_refused: Counter[str] = field(default_factory=Counter)
    forbidden: Counter[str] = field(default_factory=Counter)
    takeovers: Counter[str] = field(default_factory=Counter)
    forwarded: Counter[str] = field(default_factory=Counter)

    def snapshot(self) -> dict[str, int | dict[str, int]]:
        out: dict[str, int | dict[str, int]] = {}
        for name in _HELP:
            value = getattr(self, name)
            out[name] = dict(value) if isinstance(value, Counter) else int(value)
        return out

    def prometheus(self, gauges: dict[str, float]) -> str:
        """Counters plus the given gauges, in the Prometheus text exposition format."""
        lines: list[str] = []
        for name, help_text in _HELP.items():
            metric = f"fluxbee_router_{name}_total"
            lines.append(f"# HELP {metric} {help_text}")
            lines.append(f"# TYPE {metric} counter")
            value = getattr(self, name)
            if isinstance(value, Counter):
                for label, count in sorted(value.items()):
                    lines.append(f'{metric}{{reason="{label}"}} {count}')
            else:
                lines.append(f"{metric} {value}")
        for name, gauge in sorted(gauges.items()):
            metric = f"fluxbee_router_{name}"
            lines.append(f"# TYPE {metric} gauge")
            lines.append(f"{metric} {gauge:g}")
        return "\n".join(lines) + "\n"
