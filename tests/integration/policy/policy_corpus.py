"""Test policies and a seeded generator of inputs for them (shared by the engine tests)."""

from __future__ import annotations

import random
from typing import Any

from fluxbee.bench.policy import POLICY as SEED_POLICY

# The seed's two example rules: (a) a message naming a required capability goes to the first agent
# holding it, found through the index; (b) system_status only from internal humans. The policy bench
# measures the same policy (SEED_POLICY, imported above).

# Aliases, roles, else-chains, sprintf, membership; allow without a default.
ROLES_POLICY = """package router

canonical := c if {
	c := data.identity_aliases[input.src_ilk]
} else := input.src_ilk

target := sprintf("%s@*", [input.meta.target]) if {
	is_string(input.meta.target)
	not contains(input.meta.target, "@")
} else := input.meta.target if {
	is_string(input.meta.target)
} else := data.identity[holders[0]].handler_node if {
	holders := data.by_role[input.meta.context.role]
	count(holders) > 0
} else := sprintf("AI.tenant.%v", [data.identity[canonical].tenant]) if {
	data.identity[canonical]
}

allow if data.identity[canonical].tenant == input.meta.context.tenant

allow if "ops" in data.identity[canonical].roles
"""

# Errors at evaluation for some inputs: two values for one complete rule, a number as target,
# a string as allow.
ERROR_POLICY = """package router

target := "AI.urgent@*" if input.meta.context.priority == "high"

target := "AI.vip@*" if input.meta.context.vip == true

target := count(input.meta.context.items) if input.meta.context.count_target == true

allow := input.meta.context.level if input.meta.context.level
"""

# Host builtins in the WebAssembly engine (sprintf, time.*, strings.count, regex.split) against
# regorus's own.
BUILTINS_POLICY = """package router

target := sprintf("WF.shift.%s.%d@*", [time.weekday(ns), time.clock([ns, "UTC"])[0]]) if {
	ns := time.parse_rfc3339_ns(input.meta.context.sent_at)
}

allow if strings.count(input.meta.action, ".") < 2

allow if count(regex.split("[:]", input.meta.action)) == 3
"""

POLICIES = {"seed": SEED_POLICY, "roles": ROLES_POLICY, "errors": ERROR_POLICY, "builtins": BUILTINS_POLICY}


def _timestamp(rng: random.Random) -> str:
    if rng.random() < 0.15:
        return rng.choice(["yesterday", "2026-13-01T00:00:00Z", "", "2026-01-01 10:00:00"])
    day = rng.randint(1, 28)
    frac = f".{rng.randint(0, 999_999_999):09d}" if rng.random() < 0.5 else ""
    return f"2026-{rng.randint(1, 12):02d}-{day:02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00{frac}Z"


def generate_inputs(rng: random.Random, data: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """Inputs shaped like the router's: known, aliased, unknown or missing ILKs; capabilities that
    exist, do not, or are not strings; actions; targets; the fields the error policy reacts to."""
    ilks = sorted(data["identity"])
    aliases = sorted(data["identity_aliases"])
    caps = sorted(data["by_capability"])
    roles = sorted(data["by_role"])
    out: list[dict[str, Any]] = []
    for _ in range(count):
        context: dict[str, Any] = {}
        pick = rng.random()
        if pick < 0.5:
            context["required_capability"] = rng.choice(caps)
        elif pick < 0.6:
            context["required_capability"] = rng.choice(["cap.none", 7, None, ["cap.0001"]])
        if rng.random() < 0.4:
            context["role"] = rng.choice([*roles, "nobody"])
        if rng.random() < 0.3:
            context["tenant"] = f"tnt:{rng.randint(0, 6)}"
        if rng.random() < 0.2:
            context["priority"] = rng.choice(["high", "low"])
        if rng.random() < 0.2:
            context["vip"] = rng.choice([True, False, "yes"])
        if rng.random() < 0.1:
            context["count_target"] = True
            context["items"] = list(range(rng.randint(0, 3)))
        if rng.random() < 0.1:
            context["level"] = rng.choice([1, "x", True, False])
        if rng.random() < 0.4:
            context["sent_at"] = _timestamp(rng)
        meta: dict[str, Any] = {"context": context}
        if rng.random() < 0.7:
            meta["action"] = rng.choice(["system_status", "chat", "a.b.c", "x:y:z", "ticket.open", ""])
        if rng.random() < 0.3:
            meta["target"] = rng.choice(["AI.support.l1", "AI.sales@hive1", "WF.x@*", 42])
        source = rng.random()
        if source < 0.7:
            src_ilk: str | None = rng.choice(ilks)
        elif source < 0.8 and aliases:
            src_ilk = rng.choice(aliases)
        elif source < 0.9:
            src_ilk = "ilk:00000000-0000-4000-8000-00000000dead"
        else:
            src_ilk = None
        out.append({"meta": meta, "routing": {"src": f"{rng.getrandbits(128):032x}", "src_l2_name": "IO.wa@hive0"},
                    "src_ilk": src_ilk})
    return out
