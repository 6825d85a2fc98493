"""Stable, machine-readable error codes and the domain errors that carry them.

Clients and scripts match on these strings: never rename or reuse one (Placement's
``errors.py`` rule). Each code has one HTTP status; the server maps :class:`DevassignError`
to ``{"error": {"code", "message", ...}}`` with that status.
"""

from __future__ import annotations

from typing import Any

# code -> HTTP status. Do not change the string values.
INVALID_REQUEST = "invalid_request"
INVALID_SELECTOR = "invalid_selector"
INVALID_SPEC = "invalid_spec"
INVALID_CONSTRAINT = "invalid_constraint"
UNKNOWN_ATTRIBUTE = "unknown_attribute"
DUPLICATE_REQUEST_NAME = "duplicate_request_name"
NO_REQUESTS = "no_requests"
BODY_TOO_LARGE = "body_too_large"
UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
UNAUTHENTICATED = "unauthenticated"
FORBIDDEN = "forbidden"
QUOTA_EXCEEDED = "quota_exceeded"
NOT_FOUND = "not_found"
TYPE_NOT_FOUND = "type_not_found"
HOST_NOT_FOUND = "host_not_found"
DEVICE_NOT_FOUND = "device_not_found"
ALLOCATION_NOT_FOUND = "allocation_not_found"
TOKEN_NOT_FOUND = "token_not_found"
METHOD_NOT_ALLOWED = "method_not_allowed"
TYPE_EXISTS = "type_exists"
TYPE_IN_USE = "type_in_use"
STALE_GENERATION = "stale_generation"
HOST_ID_MISMATCH = "host_id_mismatch"
HOST_EXISTS = "host_exists"
AGENT_CONFLICT = "agent_conflict"
NO_VALID_HOST = "no_valid_host"
CONSUMER_CONFLICT = "consumer_conflict"
IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
INVALID_STATE = "invalid_state"
MOVE_PENDING = "move_pending"
TOO_MANY_TAINTS = "too_many_taints"  # a host holds the most live taints it may
GANG_LAYOUT = "gang_layout"  # a move of a gang's instance would break the gang's layout
DATABASE_BUSY = "database_busy"
TOO_MANY_STREAMS = "too_many_streams"  # open event streams of one token, or of one server process
TOKEN_NAME_TAKEN = "token_name_taken"  # a token's chosen name is another token's (it is their events' actor)
INTERNAL = "internal_error"

STATUS: dict[str, int] = {
    INVALID_REQUEST: 400,
    INVALID_SELECTOR: 400,
    INVALID_SPEC: 400,
    INVALID_CONSTRAINT: 400,
    UNKNOWN_ATTRIBUTE: 400,
    DUPLICATE_REQUEST_NAME: 400,
    NO_REQUESTS: 400,
    BODY_TOO_LARGE: 413,
    UNSUPPORTED_MEDIA_TYPE: 415,
    UNAUTHENTICATED: 401,
    FORBIDDEN: 403,
    QUOTA_EXCEEDED: 403,
    NOT_FOUND: 404,
    TYPE_NOT_FOUND: 404,
    HOST_NOT_FOUND: 404,
    DEVICE_NOT_FOUND: 404,
    ALLOCATION_NOT_FOUND: 404,
    TOKEN_NOT_FOUND: 404,
    METHOD_NOT_ALLOWED: 405,
    TYPE_EXISTS: 409,
    TYPE_IN_USE: 409,
    STALE_GENERATION: 409,
    HOST_ID_MISMATCH: 409,
    HOST_EXISTS: 409,
    AGENT_CONFLICT: 409,
    NO_VALID_HOST: 409,
    CONSUMER_CONFLICT: 409,
    IDEMPOTENCY_KEY_REUSED: 409,
    INVALID_STATE: 409,
    MOVE_PENDING: 409,
    TOO_MANY_TAINTS: 409,
    GANG_LAYOUT: 409,
    TOKEN_NAME_TAKEN: 409,
    DATABASE_BUSY: 503,
    TOO_MANY_STREAMS: 429,
    INTERNAL: 500,
}


class DevassignError(Exception):
    """A failure a client can understand: a stable code, a message saying what to fix, extras."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        if code not in STATUS:
            raise ValueError(f"unknown error code {code!r}")
        self.code = code
        self.message = message
        self.extra = extra

    @property
    def status(self) -> int:
        return STATUS[self.code]

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.extra}}
