"""Limits at the edge: the size of a request body and how deeply its JSON nests.

One ASGI middleware reads the whole body before the application does (FastAPI reads it whole
anyway) and answers for it:

- over ``limit`` bytes: 413 ``body_too_large``, from the declared ``Content-Length`` without
  reading anything, or as soon as a chunked body passes the limit. Raising from inside
  ``receive`` instead (as this used to) let FastAPI's body reading catch the exception and
  answer 400 "error parsing the body".
- a JSON body whose arrays and objects nest deeper than ``max_depth``: 400 ``invalid_request``
  before it is decoded. Python's decoder recurses (a few thousand levels raise
  ``RecursionError``), and a value nested a few hundred levels deep was stored and then could
  not be serialized again (Pydantic stops at its own depth): every later read of it was a 500.

The depth scan is a count of brackets outside strings: a body with no more ``[`` and ``{`` than
the limit is not scanned at all, and the scan of a large body runs in C (replace, translate,
split, accumulate): ~10 ms for a 5 MB inventory report, a fraction of decoding it. The limits
are listed in docs/limits.md.
"""

from __future__ import annotations

import re
from array import array
from itertools import accumulate

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from devassign import errors
from devassign.domain import MAX_JSON_DEPTH

_NOT_BRACKETS_OR_QUOTES = bytes(b for b in range(256) if b not in b'[]{}"')
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 and -1 as signed bytes


def json_depth(data: bytes, *, at_most: int | None = None) -> int:
    """How deeply arrays and objects nest in the JSON text ``data`` (``1`` for ``[]``).

    Brackets inside strings do not count. For malformed text the answer is a bound, not an
    error: the decoder refuses it afterwards. With ``at_most``, a text that cannot be deeper
    (no more opening brackets than that) returns its count of opening brackets unscanned.
    """
    openers = data.count(b"[") + data.count(b"{")
    if openers == 0 or (at_most is not None and openers <= at_most):
        return openers
    # Escapes first, left to right as a decoder reads them: an escaped backslash, then an
    # escaped quote; a remaining backslash escapes a letter, dropped with everything else but
    # brackets and quotes. Every other piece between two quotes is then a string's inside.
    # Empty strings ("" once the rest is dropped) go first: removing two neighbouring quotes
    # keeps every other quote's parity, and leaves far fewer pieces to split.
    if b"\\" in data:
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    text = data.translate(None, _NOT_BRACKETS_OR_QUOTES).replace(b'""', b"")
    brackets = b"".join(text.split(b'"')[::2])
    return max(0, max(accumulate(array("b", brackets.translate(_STEPS))), default=0))


_NOT_SEPARATORS_OR_QUOTES = bytes(b for b in range(256) if b not in b',:"')


def json_members(data: bytes, *, at_most: int | None = None) -> int:
    """About how many members and items the JSON text ``data`` holds: its ``,`` and ``:``
    outside strings. Validation builds an error per unknown key, on the event loop: a body of
    a million tiny members stalls every request for seconds, so it is refused at the edge.
    """
    rough = data.count(b",") + data.count(b":")
    if at_most is not None and rough <= at_most:
        return rough
    if b"\\" in data:
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    text = data.translate(None, _NOT_SEPARATORS_OR_QUOTES).replace(b'""', b"")
    return sum(len(piece) for piece in text.split(b'"')[::2])


# Routes whose bodies are large by nature (a host's whole inventory, a batch of work results).
_BULK_ROUTE = re.compile(r"^/v1/(hosts/[^/]+/(inventory|work)|reports)$")
# The sign-in forms hold a token or a one-time code and a page to go back to; sign-out, nothing.
_FORM_ROUTES = ("/ui/login", "/ui/login/once", "/ui/logout")
FORM_LIMIT = 8 * 1024


def is_json(scope: Scope) -> bool:
    """FastAPI decodes a body as JSON when its type is ``application/json``, ``*+json``, or
    missing."""
    headers: list[tuple[bytes, bytes]] = scope.get("headers") or []
    for key, value in headers:
        if key == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return media == b"application/json" or (
                media.startswith(b"application/") and media.endswith(b"+json")
            )
    return True


class BodyLimit:
    """Read the body first: 413 over ``limit`` bytes (chunked ones included), 400 for JSON
    nested deeper than ``max_depth``; then hand the application the body, read once."""

    def __init__(
        self,
        app: ASGIApp,
        limit: int,
        max_depth: int = MAX_JSON_DEPTH,
        *,
        small_limit: int | None = None,
        max_members: int | None = None,
        bulk_max_members: int | None = None,
    ) -> None:
        """``limit`` for the bulk routes (inventory reports, work results); ``small_limit`` and
        ``max_members`` for every other body (None: the same as the bulk routes)."""
        self.app = app
        self.limit = limit
        self.max_depth = max_depth
        self.small_limit = limit if small_limit is None else small_limit
        self.max_members = max_members
        self.bulk_max_members = bulk_max_members

    def _limits(self, scope: Scope) -> tuple[int, int | None]:
        """(bytes, members) allowed for this request's body."""
        path = scope.get("path", "")
        if path in _FORM_ROUTES:
            return min(FORM_LIMIT, self.small_limit), self.max_members
        if _BULK_ROUTE.match(path):
            return self.limit, self.bulk_max_members
        return self.small_limit, self.max_members

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, members = self._limits(scope)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(scope, send, self._too_large(limit))
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending the whole body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._refuse(scope, send, self._too_large(limit))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body and is_json(scope):
            depth = json_depth(body, at_most=self.max_depth)
            if depth > self.max_depth:
                await self._refuse(
                    scope,
                    send,
                    errors.DevassignError(
                        errors.INVALID_REQUEST,
                        f"the JSON body nests arrays and objects {depth} levels deep; "
                        f"at most {self.max_depth} levels are allowed",
                    ),
                )
                return
            if members is not None and json_members(body, at_most=members) > members:
                await self._refuse(
                    scope,
                    send,
                    errors.DevassignError(
                        errors.INVALID_REQUEST,
                        f"the JSON body holds more than {members} members and items; "
                        "send fewer (this route takes small bodies)",
                    ),
                )
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: disconnects
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    @staticmethod
    def _too_large(limit: int) -> errors.DevassignError:
        return errors.DevassignError(
            errors.BODY_TOO_LARGE, f"request body over {limit} bytes; send less at a time"
        )

    @staticmethod
    async def _refuse(scope: Scope, send: Send, err: errors.DevassignError) -> None:
        await JSONResponse(err.body(), status_code=err.status)(scope, _disconnected, send)


async def _disconnected() -> Message:
    return {"type": "http.disconnect"}
