"""The host builtins the WebAssembly engine provides, against Go's and OPA's semantics."""

from __future__ import annotations

import time

import pytest

from fluxbee.dataplane.policy.builtins import (
    BuiltinError,
    crypto_sha256,
    hex_encode,
    regex_split,
    sprintf,
    strings_any_prefix_match,
    strings_any_suffix_match,
    strings_count,
    time_clock,
    time_date,
    time_now_ns,
    time_parse_rfc3339_ns,
    time_weekday,
)

NS_2026_03_15_1430_UTC = 1_773_585_000_000_000_000  # a Sunday


@pytest.mark.parametrize(("fmt", "args", "expected"), [
    ("%s@%s", ["AI.support", "hive1"], "AI.support@hive1"),
    ("%d items", [3], "3 items"),
    ("%d", [3.0], "3"),
    ("%v|%v|%v|%v", [1, "x", True, None], '1|x|true|null'),
    ("%v", [[1, "a", {"k": False}]], '[1, "a", {"k": false}]'),
    ("%05d|%-4s|%4s|%x|%.2f|%%", [42, "ab", "cd", 255, 1.5], "00042|ab  |  cd|ff|1.50|%"),
    ("%q", ["a\"b"], '"a\\"b"'),
    ("%s and %s", ["one"], "one and %!s(MISSING)"),
    ("%s", ["one", 2], "one%!(EXTRA 2)"),
    ("%v", [2.5], "2.5"),
])
def test_sprintf_formats_like_go(fmt: str, args: list[object], expected: str) -> None:
    assert sprintf(fmt, args) == expected


@pytest.mark.parametrize(("fmt", "args"), [("%d", ["x"]), ("%d", [1.5]), ("%f", [True]), ("%s", "notalist"),
                                           (3, [1])])
def test_sprintf_refuses_arguments_its_verbs_cannot_take(fmt: object, args: object) -> None:
    with pytest.raises(BuiltinError, match="sprintf"):
        sprintf(fmt, args)


def test_time_builtins_read_nanoseconds_in_utc_or_a_named_zone() -> None:
    assert time_clock(NS_2026_03_15_1430_UTC) == [14, 30, 0]
    assert time_date(NS_2026_03_15_1430_UTC) == [2026, 3, 15]
    assert time_weekday(NS_2026_03_15_1430_UTC) == "Sunday"
    assert time_clock([NS_2026_03_15_1430_UTC, "America/New_York"]) == [10, 30, 0]  # EDT from 8 March 2026
    assert time_date([0, "Asia/Tokyo"]) == [1970, 1, 1]
    assert time_weekday([NS_2026_03_15_1430_UTC, ""]) == "Sunday"
    assert time_parse_rfc3339_ns("2026-03-15T14:30:00Z") == NS_2026_03_15_1430_UTC
    assert time_parse_rfc3339_ns("2026-03-15T16:30:00.5+02:00") == NS_2026_03_15_1430_UTC + 500_000_000
    before = time.time_ns()
    now = time_now_ns()
    assert isinstance(now, int) and before <= now <= time.time_ns()


@pytest.mark.parametrize(("call", "message"), [
    (lambda: time_clock("noon"), "integer nanoseconds"),
    (lambda: time_clock([1, "Mars/Olympus"]), "unknown timezone"),
    (lambda: time_clock([1, 2, 3]), "nanoseconds or"),
    (lambda: time_parse_rfc3339_ns("2026-03-15 14:30:00"), "not an RFC 3339"),
    (lambda: time_parse_rfc3339_ns("2026-13-15T14:30:00Z"), "parse_rfc3339_ns"),
    (lambda: time_parse_rfc3339_ns(5), "expects a string"),
    (lambda: crypto_sha256(1), "crypto.sha256: expects a string"),
    (lambda: regex_split("(", "a"), "bad pattern"),
])
def test_bad_builtin_arguments_are_refused_naming_the_builtin(call: object, message: str) -> None:
    with pytest.raises(BuiltinError, match=message):
        call()  # type: ignore[operator]


def test_string_and_hash_helpers() -> None:
    assert crypto_sha256("x") == "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"
    assert hex_encode("ab") == "6162"
    assert strings_count("a.b.c", ".") == 2
    assert regex_split("[.:]", "a.b:c") == ["a", "b", "c"]
    assert strings_any_prefix_match("AI.support", ["IO.", "AI."]) is True
    assert strings_any_prefix_match(["x", "y"], "z") is False
    assert strings_any_suffix_match("node@hive1", ["@hive1"]) is True

