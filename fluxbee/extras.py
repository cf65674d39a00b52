"""The optional parts of the install (``pip install 'fluxbee[operator]'`` …) and the error a command gives without one.

The base install is what a node needs: the SDK, the wire protocol, the router and the one-shot
commands (``fluxbee node``, ``router``, ``send``, ``status``, ``ctl``).  The operator, the admin API,
the identity service, the local hive and the benchmark each need an extra.  Which distributions an
extra brings is read from the installed package's own metadata (the ``Requires-Dist`` lines that
``pyproject.toml`` produced), so the list exists once; a command calls :func:`require` before it
imports anything from an extra and the user reads which extra to install instead of a traceback.

This module imports nothing of ours: the CLI uses it before it knows which command will run.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable
from importlib import metadata

DISTRIBUTION = "fluxbee"

_REQUIREMENT = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")
_EXTRA_MARKER = re.compile(r"""\bextra\s*==\s*["']([^"']+)["']""")


class MissingExtraError(Exception):
    """A command needs an extra that is not installed (``missing``: the distributions not found)."""

    def __init__(self, extra: str, missing: tuple[str, ...]) -> None:
        super().__init__(f"this command needs `pip install '{DISTRIBUTION}[{extra}]'` "
                         f"(not installed: {', '.join(missing)})")
        self.extra = extra
        self.missing = missing


def normalise(name: str) -> str:
    """A distribution name as package indexes compare them (``Posix_IPC`` and ``posix-ipc`` are one)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_requirements(lines: Iterable[str]) -> dict[str, list[tuple[str, tuple[str, ...]]]]:
    """``Requires-Dist`` lines grouped by extra (``""``: the base): ``(distribution, its extras)``.

    Only the forms ``pyproject.toml`` uses are understood: a name, optional ``[extras]``, a version
    range, and an ``extra == "…"`` marker.  A line this cannot read raises ``ValueError``.
    """
    grouped: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
    for line in lines:
        spec, _, marker = line.partition(";")
        match = _REQUIREMENT.match(spec)
        if match is None:
            raise ValueError(f"cannot read the requirement {line!r}")
        name, extras = match.group(1), match.group(2) or ""
        extra = _EXTRA_MARKER.search(marker)
        key = normalise(extra.group(1)) if extra else ""
        grouped.setdefault(key, []).append(
            (normalise(name), tuple(normalise(e) for e in extras.split(",") if e.strip())))
    return grouped


def _installed(name: str) -> bool:
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def missing(extra: str, *, requirements: Iterable[str] | None = None,
            installed: Callable[[str], bool] | None = None) -> tuple[str, ...]:
    """The distributions of ``extra`` (and of the extras it names) that are not installed.

    ``requirements`` defaults to this installation's metadata.  Without metadata (a source tree
    that was never installed) or when the metadata does not declare ``extra`` (an install older
    than the extras), nothing can be checked and nothing is reported: the imports decide.
    """
    if requirements is None:
        try:
            requirements = metadata.requires(DISTRIBUTION) or []
        except metadata.PackageNotFoundError:
            return ()
    grouped = parse_requirements(requirements)
    is_installed = installed or _installed
    found: list[str] = []
    seen: set[str] = set()
    pending = [normalise(extra)]
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        for name, extras in grouped.get(current, []):
            if name == DISTRIBUTION:
                pending.extend(extras)
            elif name not in found and not is_installed(name):
                found.append(name)
    return tuple(found)


def require(extra: str) -> None:
    """Raise :class:`MissingExtraError` naming ``extra`` when any of its distributions is missing."""
    absent = missing(extra)
    if absent:
        raise MissingExtraError(extra, absent)


def exit_unless_installed(extra: str | None, command: str) -> None:
    """For a command line: print which extra ``fluxbee {command}`` needs and exit 2 when it is missing."""
    if extra is None:
        return
    try:
        require(extra)
    except MissingExtraError as err:
        print(f"fluxbee {command}: {err}", file=sys.stderr)
        raise SystemExit(2) from None
