"""A small REST client for the CLI: one method per call, errors turned into one clear line."""

from __future__ import annotations

import os
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8470"


class CliError(Exception):
    """Printed as one line on stderr, exit status 1 (2 for usage errors); never a traceback."""

    def __init__(self, message: str, *, code: str | None = None, status: int = 1, body: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.exit_status = status
        self.body = body


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
                "running? (set --url or DEVASSIGN_URL)"
            ) from exc
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
            if err:
                raise CliError(err.get("message", "error"), code=err.get("code"), body=body)
            raise CliError(f"HTTP {response.status_code} from {self.url}{path}")
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
