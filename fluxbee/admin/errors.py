"""Admin errors and the error code → HTTP status table.

The original maps many real conflicts to 500 (``NODE_ALREADY_EXISTS``, ``DUPLICATE_PREFIX``,
``FORBIDDEN``, ``UNKNOWN_ACTION`` …); here every code an action can raise has a deliberate status,
and 500 is left for bugs (``INTERNAL_ERROR``).
"""

from __future__ import annotations

from typing import Final

from fluxbee.errors import CodedError

_BY_STATUS: Final[dict[int, tuple[str, ...]]] = {
    400: ("INVALID_REQUEST", "INVALID_ADDRESS", "INVALID_ARCHIVE", "INVALID_HIVE_ID", "INVALID_ZIP",
          "INVALID_WORKFLOW_NAME", "INVALID_CONFIG_SET", "UNSUPPORTED_OPERATION", "INVALID_JSON", "UNKNOWN_ACTION"),
    401: ("UNAUTHORIZED",),
    403: ("FORBIDDEN", "UNAUTHORIZED_REGISTRAR"),
    404: ("NOT_FOUND", "NODE_NOT_FOUND", "BLOB_NOT_FOUND", "RUNTIME_NOT_AVAILABLE", "RUNTIME_NOT_FOUND",
          "RUNTIME_VERSION_NOT_FOUND", "WORKFLOW_NOT_FOUND", "ACTION_NOT_FOUND", "NODE_CONFIG_NOT_FOUND",
          "HIVE_NOT_FOUND", "ILK_NOT_FOUND", "MODULE_NOT_FOUND"),
    405: ("METHOD_NOT_ALLOWED",),
    408: ("REQUEST_TIMEOUT",),
    409: ("HIVE_EXISTS", "MODULE_EXISTS", "VERSION_MISMATCH", "VERSION_CONFLICT", "WAN_NOT_AUTHORIZED",
          "NODE_INSTANCE_RUNNING", "NODE_NOT_CONFIGURED", "NOTHING_STAGED", "NO_BACKUP", "INSTANCES_ACTIVE",
          "INSTANCES_UNKNOWN", "STALE_CONFIG_VERSION", "RUNTIME_IN_USE", "RUNTIME_HAS_DEPENDENTS",
          "RUNTIME_CURRENT_CONFLICT", "BUSY", "NODE_ALREADY_EXISTS", "DUPLICATE_PREFIX", "DUPLICATE_PATTERN",
          "NODE_NOT_MANAGED", "IDENTITY_REGISTER_FAILED"),
    413: ("PAYLOAD_TOO_LARGE",),
    415: ("UNSUPPORTED_MEDIA_TYPE",),
    422: ("COMPILE_ERROR", "OPA_ERROR", "POLICY_LOAD_ERROR", "INVALID_CONFIG", "INVALID_PACKAGE_LAYOUT",
          "UNSUPPORTED_APPLY_MODE",
          "PACKAGE_PUBLISH_FAILED"),
    501: ("NOT_IMPLEMENTED",),
    502: ("SERVICE_FAILED", "SPAWN_FAILED", "KILL_FAILED", "REMOVE_FAILED", "COPY_FAILED", "CONFIG_FAILED",
          "CONFIG_BROADCAST_FAILED", "RUNTIME_ERROR", "RUNTIME_COMMAND_FAILED", "RUNTIME_UNAVAILABLE",
          "RUNTIME_REMOVE_FAILED", "ORCHESTRATOR_ERROR", "START_FAILED", "RESTART_FAILED", "TRANSPORT_ERROR",
          "NODE_STATE_READ_FAILED", "UNREACHABLE", "KUBERNETES_API_ERROR",
          "DB_WRITE_FAILED", "RESPONSE_TOO_LARGE"),
    503: ("SHM_NOT_FOUND", "RUNTIME_MANIFEST_MISSING", "RUNTIME_NOT_PRESENT", "BASE_RUNTIME_NOT_PRESENT",
          "MISSING_WAN_LISTEN", "ROUTER_UNAVAILABLE",
          "HIVE_NOT_CONNECTED", "REMOTE_ADMIN_UNAVAILABLE", "ROUTER_UNREACHABLE", "IDENTITY_UNAVAILABLE",
          "DB_NOT_READY", "TOO_MANY_CONNECTIONS", "POLICY_UNAVAILABLE", "STATE_READ_FAILED",
          "STATE_WRITE_FAILED"),
    504: ("TIMEOUT", "WAN_TIMEOUT", "SSH_TIMEOUT"),
    500: ("INTERNAL_ERROR",),
}
HTTP_STATUS: Final[dict[str, int]] = {code: status for status, codes in _BY_STATUS.items() for code in codes}


def http_status(code: str) -> int:
    """The HTTP status of an error code (``SSH_*`` → 502 as in the original; unknown → 500)."""
    if code in HTTP_STATUS:
        return HTTP_STATUS[code]
    if code.startswith("SSH_"):
        return 502
    return 500


class AdminError(CodedError):
    """An action failed in a way the caller should hear about: ``code`` picks the HTTP status."""

    def __init__(self, code: str, detail: str, *, payload: dict[str, object] | None = None,
                 status: int | None = None) -> None:
        super().__init__(code, detail)
        self.payload = payload
        self.status = status
        """Overrides the table for the few codes the original answers with two statuses (COMPILE_ERROR:
        400 for a body without Rego, 422 for Rego that does not compile)."""

    @property
    def http_status(self) -> int:
        return self.status if self.status is not None else http_status(self.code)


SYNC_PENDING = "sync_pending"
"""A change made here that has not reached every hive yet (the envelope's status; HTTP 202)."""


def envelope(action: str | None, payload: object, *, status: str | None = None) -> dict[str, object]:
    """The success envelope; its status is ``sync_pending`` when the payload's is, else ``ok``."""
    if status is None:
        status = SYNC_PENDING if isinstance(payload, dict) and payload.get("status") == SYNC_PENDING else "ok"
    return {"status": status, "action": action, "payload": payload, "error_code": None, "error_detail": None}


def error_envelope(action: str | None, code: str, detail: str, payload: object = None) -> dict[str, object]:
    return {"status": "error", "action": action, "payload": payload, "error_code": code, "error_detail": detail}
