"""Request bodies with one value per key.

Python's JSON decoder keeps the last of a repeated key (``{"consumer": "a", "consumer": "b"}``
is ``b``), while other parsers keep the first or refuse: a proxy or a policy check in front of
the server could read one consumer, project or device and the server act on another. Every
JSON route of the API therefore decodes its body with :class:`StrictJsonRoute`, which refuses a
repeated key with the API's usual 400 (``invalid_request``) naming the key, before any handler
runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from devassign.domain import one_per_key
from devassign.errors import UNSUPPORTED_MEDIA_TYPE, DevassignError
from devassign.server.limits import is_json


class StrictJsonRequest(Request):
    """A request whose JSON body may not repeat a key within one object."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            self._json = json.loads(body, object_pairs_hook=one_per_key)
        return self._json


class StrictJsonRoute(APIRoute):
    """An API route that decodes its body with :class:`StrictJsonRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        inner = super().get_route_handler()

        async def handler(request: Request) -> Response:
            scope = request.scope
            if "content-type" not in request.headers:
                # A body without a type is JSON (as the body limits read it), whatever the
                # framework's version would make of it.
                scope = {**scope, "headers": [*scope["headers"], (b"content-type", b"application/json")]}
            strict = StrictJsonRequest(scope, request.receive)
            if not is_json(scope) and await strict.body():
                media = request.headers.get("content-type", "")
                # The framework would not decode it and answer "Input should be a valid
                # dictionary", which hides the fix (curl -d sends a form's content type).
                raise DevassignError(
                    UNSUPPORTED_MEDIA_TYPE,
                    f"the body is sent as {media.split(';')[0].strip()[:60]!a}: send it as JSON "
                    "with the header Content-Type: application/json",
                )
            return await inner(strict)

        return handler
