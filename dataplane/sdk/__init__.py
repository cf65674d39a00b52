"""The Python node SDK (``from fluxbee.dataplane.sdk import connect, NodeConfig``)."""

from fluxbee.dataplane.sdk.node import (
    FrameTooLargeError,
    HandshakeError,
    NodeConfig,
    NodeReceiver,
    NodeSender,
    NodeStatus,
    NotConnectedError,
    RequestTimeoutError,
    SdkError,
    UnreachableError,
    connect,
    default_run_dir,
    find_router_socket,
    run_until_stopped,
    text_of,
    text_v1,
)
from fluxbee.dataplane.sdk.nodetable import read_node_table

__all__ = [
    "FrameTooLargeError",
    "HandshakeError",
    "NodeConfig",
    "NodeReceiver",
    "NodeSender",
    "NodeStatus",
    "NotConnectedError",
    "RequestTimeoutError",
    "SdkError",
    "UnreachableError",
    "connect",
    "default_run_dir",
    "find_router_socket",
    "read_node_table",
    "run_until_stopped",
    "text_of",
    "text_v1",
]
