"""What a bench run measures (its :class:`Plan`) and what one transport's measurement gives (:class:`Result`)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Plan:
    warmup: int
    round_trips: int
    messages: int
    idle_nodes: int

    @classmethod
    def for_mode(cls, quick: bool) -> Plan:
        if quick:
            return cls(warmup=500, round_trips=3_000, messages=30_000, idle_nodes=1_000)
        return cls(warmup=3_000, round_trips=20_000, messages=200_000, idle_nodes=1_000)

    @classmethod
    def chosen(cls, *, quick: bool, round_trips: int | None, messages: int | None, idle_nodes: int | None) -> Plan:
        """The mode's sizes with the ones given on the command line instead (warm-up never longer than the run)."""
        plan = cls.for_mode(quick)
        return cls(
            warmup=min(plan.warmup, round_trips) if round_trips is not None else plan.warmup,
            round_trips=round_trips if round_trips is not None else plan.round_trips,
            messages=messages if messages is not None else plan.messages,
            idle_nodes=idle_nodes if idle_nodes is not None else plan.idle_nodes,
        )


@dataclass(slots=True)
class Result:
    rtt_us: list[float]
    msgs_per_s: float
    notes: dict[str, str] = field(default_factory=dict)
    sustained_rtt_us: list[float] = field(default_factory=list)
    migrations_per_rtt: float = float("nan")

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.rtt_us)
        sustained = sorted(self.sustained_rtt_us)
        return {
            "rtt_us": {"p50": round(percentile(ordered, 50), 1), "p99": round(percentile(ordered, 99), 1),
                       "mean": round(statistics.fmean(ordered), 1), "samples": len(ordered)},
            "msgs_per_s": round(self.msgs_per_s),
            "sustained_rtt_us": {"p50": round(percentile(sustained, 50), 1),
                                 "p99": round(percentile(sustained, 99), 1), "samples": len(sustained)},
            "cpu_migrations_per_rtt": round(self.migrations_per_rtt, 3),
        }


def percentile(ordered: list[float], p: float) -> float:
    """The nearest-rank percentile of already sorted samples (NaN when there are none)."""
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]
