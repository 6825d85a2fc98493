"""A small REST client for the CLI: one method per call, errors turned into one clear line."""

from __future__ import annotations

import os
from enum import IntEnum
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8470"


class ExitCode(IntEnum):
    """What the ``devassign`` program's exit status means (docs/cli.md, "Exit codes")."""

    OK = 0
    ERROR = 1  # the command failed: the server said no (not found, cannot place, quota), a bad state
    USAGE = 2  # the command line, or a file or URL it names, is wrong: fix it, retrying will not help
    UNREACHABLE = 3  # the server or the database did not answer (or failed, 5xx): try again later
    DENIED = 4  # the server refused the credentials: no token, an unknown or revoked one, or the wrong role


# Error codes of the server's refusals that are about who is asking, not what is asked.
DENIED_CODES = frozenset({"unauthenticated", "forbidden"})


class CliError(Exception):
    """Printed as one line on stderr with an :class:`ExitCode`; never a traceback."""

    def __init__(
        self, message: str, *, code: str | None = None, status: int | None = None, body: Any = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.exit_status = int(status if status is not None else exit_status_of(code, None))
        self.body = body


def exit_status_of(code: str | None, http_status: int | None) -> ExitCode:
    """The exit status for a server's answer: its error code, else its HTTP status."""
    if code in DENIED_CODES or http_status == 401:
        return ExitCode.DENIED
    if http_status is not None and http_status >= 500:
        return ExitCode.UNREACHABLE
    return ExitCode.ERROR


def exit_status(exc: CliError) -> int:
    """``exc``'s exit status, refined where it was raised with the default (1) around a
    transport failure (the server did not answer)."""
    if exc.exit_status == ExitCode.ERROR and isinstance(exc.__cause__, httpx.TransportError):
        return ExitCode.UNREACHABLE
    return exc.exit_status


class Client:
    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = (url or os.environ.get("DEVASSIGN_URL") or DEFAULT_URL).rstrip("/")
        token = token or os.environ.get("DEVASSIGN_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise CliError(
                f"cannot reach the devassign server at {self.url}: is `devassign server` "
                "running? (set --url or DEVASSIGN_URL)",
                status=ExitCode.UNREACHABLE,
            ) from exc
        except httpx.TransportError as exc:
            raise CliError(f"request to {self.url}{path} failed: {exc}", status=ExitCode.UNREACHABLE) from exc
        except httpx.HTTPError as exc:
            raise CliError(f"request to {self.url}{path} failed: {exc}") from exc
        if response.status_code == 204:
            return None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.is_error:
            err = (body or {}).get("error") if isinstance(body, dict) else None
            status = exit_status_of(err.get("code") if err else None, response.status_code)
            if err:
                raise CliError(err.get("message", "error"), code=err.get("code"), status=status, body=body)
            raise CliError(f"HTTP {response.status_code} from {self.url}{path}", status=status)
        return body

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body)

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, json=body)

    def patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, json=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)
