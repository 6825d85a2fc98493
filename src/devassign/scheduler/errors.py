"""The one exception a bad request raises, with stable codes (never rename the values).

The server maps ``RequestError`` to HTTP 400 as ``{"error": {"code", "message"}}``; the
pointer (a JSON pointer into the body, e.g. ``/requests/0/selector``) says where to look.
"""

from __future__ import annotations

from enum import StrEnum


class RequestErrorCode(StrEnum):
    INVALID_BODY = "invalid_request"
    INVALID_SPEC = "invalid_spec"
    INVALID_SELECTOR = "invalid_selector"
    INVALID_CONSTRAINT = "invalid_constraint"
    UNKNOWN_ATTRIBUTE = "unknown_attribute"
    DUPLICATE_NAME = "duplicate_request_name"
    NO_REQUESTS = "no_requests"


class RequestError(ValueError):
    """A request the client got wrong: the message says what to fix."""

    def __init__(self, code: RequestErrorCode, message: str, pointer: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.pointer = pointer

    def __repr__(self) -> str:
        return f"RequestError({self.code.value!r}, {self.message!r}, {self.pointer!r})"
