"""Rego builtins that OPA's WebAssembly modules leave to the host, for the WASM engine.

``opa build -t wasm`` compiles most builtins into the module; a few it imports, by name, through
``env.opa_builtin0..4`` (the module's ``builtins`` export lists the ones a policy uses). This module
implements the ones a routing rule plausibly needs: formatting (``sprintf``), hashing for sticky
choices (``crypto.sha256``, ``hex.encode``), time of day for business hours (``time.now_ns``,
``time.clock``, ``time.date``, ``time.weekday``, ``time.parse_rfc3339_ns``) and a few string helpers.
A policy that uses any other host builtin is refused when it is loaded, with every missing name
listed (:class:`~fluxbee.dataplane.policy.errors.PolicyLoadError`), never at the first message.

Each function takes and returns JSON values (what ``opa_json_dump`` produces and ``opa_json_parse``
reads). A function raises :class:`BuiltinError` for an argument it cannot use; the engine turns it
into an evaluation error.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

Builtin = Callable[..., Any]


class BuiltinError(Exception):
    """A builtin refused its arguments; the message names the builtin."""


_VERB = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d+))?([a-zA-Z%])")


def _rego_text(value: Any) -> str:
    """A composite value as Rego prints it inside ``%v``: JSON with ``", "`` separators."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (int, float)):
        return _number_text(value)
    if isinstance(value, list):
        return "[" + ", ".join(_rego_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_rego_text(k)}: {_rego_text(v)}" for k, v in value.items()) + "}"
    raise BuiltinError(f"sprintf: cannot format {type(value).__name__}")


def _number_text(value: int | float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def _plain(value: Any) -> str:
    if isinstance(value, str):
        return value
    return _rego_text(value)


def sprintf(fmt: Any, args: Any) -> str:
    """Go-style formatting for the verbs rules use: ``%s %v %d %f %x %q %%`` with width/precision."""
    if not isinstance(fmt, str) or not isinstance(args, list):
        raise BuiltinError("sprintf: expects a format string and an array of arguments")
    out: list[str] = []
    pos = 0
    index = 0
    for match in _VERB.finditer(fmt):
        out.append(fmt[pos:match.start()])
        pos = match.end()
        flags, width, precision, verb = match.groups()
        if verb == "%":
            out.append("%")
            continue
        if index >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        arg = args[index]
        index += 1
        if verb in "sv":
            text = _plain(arg)
        elif verb == "q" and isinstance(arg, str):
            text = _rego_text(arg)
        elif verb == "d" and isinstance(arg, (int, float)) and not isinstance(arg, bool) and float(arg).is_integer():
            text = str(int(arg))
        elif verb == "f" and isinstance(arg, (int, float)) and not isinstance(arg, bool):
            text = f"{float(arg):.{int(precision) if precision is not None else 6}f}"
        elif verb == "x" and isinstance(arg, int) and not isinstance(arg, bool):
            text = format(arg, "x")
        elif verb == "x" and isinstance(arg, str):
            text = arg.encode("utf-8").hex()
        else:
            raise BuiltinError(f"sprintf: verb %{verb} does not take {_rego_text(arg)}")
        if width is not None:
            text = text.ljust(int(width)) if "-" in flags else text.rjust(int(width), "0" if "0" in flags else " ")
        out.append(text)
    out.append(fmt[pos:])
    if index < len(args):
        out.append("%!(EXTRA " + ", ".join(_plain(a) for a in args[index:]) + ")")
    return "".join(out)


def _string(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise BuiltinError(f"{name}: expects a string, got {_rego_text(value)}")
    return value


def _instant(name: str, value: Any) -> datetime:
    """``ns`` or ``[ns, timezone]`` as a datetime in that zone (UTC by default)."""
    zone = "UTC"
    if isinstance(value, list):
        if len(value) != 2 or not isinstance(value[1], str):
            raise BuiltinError(f"{name}: expects nanoseconds or [nanoseconds, timezone]")
        value, zone = value
    if not isinstance(value, int) or isinstance(value, bool):
        raise BuiltinError(f"{name}: expects integer nanoseconds since the epoch")
    try:
        tz = UTC if zone in ("", "UTC") else ZoneInfo("UTC" if zone == "Local" else zone)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise BuiltinError(f"{name}: unknown timezone {zone!r}") from err
    seconds, nanos = divmod(value, 1_000_000_000)
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds, microseconds=nanos // 1000)).astimezone(tz)


def time_now_ns() -> int:
    return time.time_ns()


def time_clock(value: Any) -> list[int]:
    moment = _instant("time.clock", value)
    return [moment.hour, moment.minute, moment.second]


def time_date(value: Any) -> list[int]:
    moment = _instant("time.date", value)
    return [moment.year, moment.month, moment.day]


_WEEKDAYS: Final = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def time_weekday(value: Any) -> str:
    return _WEEKDAYS[_instant("time.weekday", value).weekday()]


def time_parse_rfc3339_ns(value: Any) -> int:
    text = _string("time.parse_rfc3339_ns", value)
    match = re.fullmatch(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})", text)
    if match is None:
        raise BuiltinError(f"time.parse_rfc3339_ns: not an RFC 3339 timestamp: {text!r}")
    base, fraction, zone = match.groups()
    try:
        moment = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone))
    except ValueError as err:
        raise BuiltinError(f"time.parse_rfc3339_ns: {err}") from err
    seconds = int((moment - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds())
    return seconds * 1_000_000_000 + int((fraction or "0").ljust(9, "0"))


def crypto_sha256(value: Any) -> str:
    return hashlib.sha256(_string("crypto.sha256", value).encode("utf-8")).hexdigest()


def hex_encode(value: Any) -> str:
    return _string("hex.encode", value).encode("utf-8").hex()


def _strings(name: str, value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    return [_string(name, v) for v in items]


def strings_any_prefix_match(search: Any, base: Any) -> bool:
    return any(s.startswith(b) for s in _strings("strings.any_prefix_match", search)
               for b in _strings("strings.any_prefix_match", base))


def strings_any_suffix_match(search: Any, base: Any) -> bool:
    return any(s.endswith(b) for s in _strings("strings.any_suffix_match", search)
               for b in _strings("strings.any_suffix_match", base))


def strings_count(search: Any, substring: Any) -> int:
    return _string("strings.count", search).count(_string("strings.count", substring))


def regex_split(pattern: Any, value: Any) -> list[str]:
    try:
        return re.split(_string("regex.split", pattern), _string("regex.split", value))
    except re.error as err:
        raise BuiltinError(f"regex.split: bad pattern: {err}") from err


HOST_BUILTINS: Final[dict[str, Builtin]] = {
    "sprintf": sprintf,
    "time.now_ns": time_now_ns,
    "time.clock": time_clock,
    "time.date": time_date,
    "time.weekday": time_weekday,
    "time.parse_rfc3339_ns": time_parse_rfc3339_ns,
    "crypto.sha256": crypto_sha256,
    "hex.encode": hex_encode,
    "strings.any_prefix_match": strings_any_prefix_match,
    "strings.any_suffix_match": strings_any_suffix_match,
    "strings.count": strings_count,
    "regex.split": regex_split,
}
