"""What a bench section is, and the text report put together from every section's part.

A section measures one thing (the transports, the router's memory, …) and contributes keys to the
JSON output and lines to the text report.  The text is laid out as one table, a blank line, the
ratios (each with its target, or marked "for the record"), then the notes; each section adds its
lines to each part, in the order of :data:`fluxbee.bench.run.SECTIONS`.  Adding a measurement is a
new module with one :class:`Section` and one entry in that list.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fluxbee.bench.results import Plan


@dataclass(frozen=True, slots=True)
class Lines:
    """One section's part of the text report."""

    table: tuple[str, ...] = ()
    ratios: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


class Section(Protocol):
    async def measure(self, plan: Plan, tmp: Path) -> dict[str, Any]:
        """Measure, and return the keys this section adds to the JSON output (``tmp``: a private scratch dir)."""
        ...

    def lines(self, result: dict[str, Any]) -> Lines:
        """This section's lines, from the whole JSON output (a ratio may use another section's figures)."""
        ...


def format_table(parts: list[Lines]) -> str:
    rows = [line for part in parts for line in part.table]
    rows.append("")
    rows += [line for part in parts for line in part.ratios]
    rows += [line for part in parts for line in part.notes]
    return "\n".join(rows)
