"""One module picks C or Python for every fast function, and a test can switch them all to Python."""

from __future__ import annotations

import pytest

from fluxbee.dataplane import _native, fastpath, wire
from fluxbee.dataplane.sdk import NodeConfig
from fluxbee.dataplane.sdk import framing as sdk_framing
from fluxbee.dataplane.sdk import node as sdk_node
from fluxbee.dataplane.sdk.client import _Client


def test_every_fast_function_is_bound_through_the_one_choice() -> None:
    bound = {(module, attribute) for module, attribute, _ in _native._CHOSEN}
    assert {("fluxbee.dataplane.fastpath", "scan"), ("fluxbee.dataplane.fastpath", "extend"),
            ("fluxbee.dataplane.wire", "new_trace_id"), ("fluxbee.dataplane.wire", "_split"),
            ("fluxbee.dataplane.sdk.framing", "_frame"), ("fluxbee.dataplane.sdk.node", "_new_trace_id")} <= bound
    in_use = _native.speedups is not None
    assert (fastpath.scan is not fastpath.scan_py) == in_use
    assert (wire.new_trace_id is not wire.new_trace_id_py) == in_use
    assert (sdk_framing._frame is not None) == in_use


def test_python_only_switches_every_binding_and_restores_them() -> None:
    before = (fastpath.scan, fastpath.extend, wire.new_trace_id, wire._split, sdk_framing._frame,
              sdk_node._new_trace_id)
    client = _Client(NodeConfig(name="WF.t"))
    frame = client.splice("WF.sink", {"text": "hi"}, "trace-1")
    with _native.python_only():
        assert (fastpath.scan, fastpath.extend) == (fastpath.scan_py, fastpath.extend_py)
        assert wire.new_trace_id is wire.new_trace_id_py and sdk_node._new_trace_id is wire.new_trace_id_py
        assert wire._split is None and sdk_framing._frame is None
        assert client.splice("WF.sink", {"text": "hi"}, "trace-1") == frame  # the same bytes either way
    assert (fastpath.scan, fastpath.extend, wire.new_trace_id, wire._split, sdk_framing._frame,
            sdk_node._new_trace_id) == before


def test_python_only_restores_the_bindings_when_the_block_raises() -> None:
    before = fastpath.scan
    with pytest.raises(RuntimeError), _native.python_only():
        raise RuntimeError("boom")
    assert fastpath.scan is before
