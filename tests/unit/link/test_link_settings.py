"""Link settings: addresses parsed strictly, settings that cannot work refused before anything listens."""

from __future__ import annotations

from pathlib import Path

import pytest

from fluxbee.dataplane.link.settings import LinkConfigError, LinkSettings, format_address, parse_address


@pytest.mark.parametrize(("text", "parsed"), [("127.0.0.1:9000", ("127.0.0.1", 9000)),
                                             ("gw.example:1", ("gw.example", 1)), ("[::1]:65535", ("::1", 65535))])
def test_addresses_parse_and_format_back(text: str, parsed: tuple[str, int]) -> None:
    assert parse_address(text) == parsed
    assert format_address(parsed) == text


@pytest.mark.parametrize("text", ["", "9000", ":9000", "host:", "host:0", "host:65536", "host:x", "a b:1"])
def test_bad_addresses_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_address(text)


def test_links_need_certificates_unless_insecure_dev(tmp_path: Path) -> None:
    LinkSettings().check()  # no links at all: nothing needed
    with pytest.raises(LinkConfigError, match="--wan-cert, --wan-key, --wan-ca-cert missing"):
        LinkSettings(uplinks=(("h", 1),)).check()
    LinkSettings(uplinks=(("h", 1),), insecure_dev=True).check()
    with pytest.raises(LinkConfigError, match="no such file"):
        LinkSettings(uplinks=(("h", 1),), cert=tmp_path / "c", key=tmp_path / "k", ca_cert=tmp_path / "ca").check()
    with pytest.raises(LinkConfigError, match="hello interval"):
        LinkSettings(mesh_listen=("h", 1), insecure_dev=True, hello_interval_s=5, dead_interval_s=5).check()
