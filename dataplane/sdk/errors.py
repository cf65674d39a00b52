"""The SDK's errors: one family (:class:`SdkError`), raised by every call once the connection fails."""

from __future__ import annotations

from fluxbee.dataplane import wire
from fluxbee.errors import CodedError


class SdkError(Exception):
    """Base of the SDK's errors."""


class NotConnectedError(SdkError):
    """The router could not be reached within the deadline."""


class HandshakeError(SdkError, CodedError):
    """The router refused the HELLO: ``code`` is the PROTOCOL_ERROR reason, ``detail`` its detail."""

    @property
    def reason(self) -> str:
        """``code``, under the name of the PROTOCOL_ERROR field it comes from."""
        return self.code


class ReplacedError(SdkError):
    """Another connection said HELLO with this node's UUID and the router closed ours (``REPLACED``).

    Two live processes are using one UUID (e.g. two copies of a node sharing a UUID file).  The SDK
    does not reconnect: fighting over the UUID would evict the other process forever.
    """

    def __init__(self, uuid: str, name: str, detail: str) -> None:
        super().__init__(f"node {name} ({uuid}) was replaced by another connection with the same UUID ({detail}); "
                         "not reconnecting: another process uses this UUID")
        self.uuid = uuid
        self.name = name
        self.detail = detail


class CredentialError(SdkError):
    """The node's credential file (``$FLUXBEE_NODE_CREDENTIAL_FILE``) cannot be read."""


class RequestTimeoutError(SdkError, TimeoutError):
    """No reply within the request's timeout; ``sent`` is False when the request never left the node
    (for the whole timeout the router was not reading from it, or the connection was down)."""

    def __init__(self, trace_id: str, timeout: float, *, sent: bool = True) -> None:
        if sent:
            text = f"no reply to {trace_id} within {timeout:g} s"
        else:
            text = (f"{trace_id} not sent within {timeout:g} s: the router was not reading from this node "
                    "(held behind a congested destination) or not connected")
        super().__init__(text)
        self.trace_id = trace_id
        self.timeout = timeout
        self.sent = sent


class FrameTooLargeError(SdkError, wire.FrameTooLargeError):
    """A message that does not fit in one frame: refused before anything is written, so the
    connection stays usable.  ``size`` and ``max_size`` are the encoded body and the limit."""

    def __init__(self, size: int, max_size: int = wire.MAX_FRAME) -> None:
        wire.FrameTooLargeError.__init__(self, size, max_size)
        self.args = (f"{wire.FRAME_TOO_LARGE}: a message of {size} bytes exceeds the {max_size}-byte frame limit; "
                     "nothing was sent",)


class UnreachableError(SdkError, CodedError):
    """The router answered a request with UNREACHABLE or TTL_EXCEEDED: ``code`` is its reason
    (``NODE_NOT_FOUND``, ``VPN_BLOCKED``...), ``detail`` its detail (empty when it gave none)."""

    def __init__(self, code: str, original_dst: str, detail: str | None) -> None:
        super().__init__(code, detail or "", text=f"{code} for {original_dst}" + (f": {detail}" if detail else ""))
        self.original_dst = original_dst

    @property
    def reason(self) -> str:
        """``code``, under the name of the UNREACHABLE field it comes from."""
        return self.code
