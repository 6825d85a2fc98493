"""A small REST client for the CLI: one method per call, errors turned into one clear line.

Requests that are safe to send again (GET, PUT, DELETE, and claims that carry an idempotency
key, which the server answers with the same allocation) are retried while the server answers
503 (its database is busy or failing over: ``Retry-After`` is honoured, up to
:data:`MAX_RETRY_AFTER`) or cannot be reached, with exponential backoff and jitter, until
:data:`RETRY_SECONDS` (``DEVASSIGN_RETRY_SECONDS``) have passed since the first try. A server
that has not answered this client yet is reported at once: that is a wrong URL or a server
that is not running far more often than a restart.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any
from urllib.parse import quote

import httpx

from devassign.domain import MAX_JSON_DEPTH, one_per_key
from devassign.redact import shown_url

DEFAULT_URL = "http://127.0.0.1:8470"
# Seconds after a request's first try during which it is retried (DEVASSIGN_RETRY_SECONDS; 0: never).
RETRY_SECONDS = 30.0
RETRY_ENV = "DEVASSIGN_RETRY_SECONDS"
# A server's Retry-After is honoured up to this many seconds.
MAX_RETRY_AFTER = 10.0
# Backoff between tries without a Retry-After: 0.25 s doubling up to 8 s, half of it random.
BACKOFF_FIRST = 0.25
BACKOFF_MAX = 8.0
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# The header every answer of a devassign server carries (its version).
VERSION_HEADER = "devassign-version"


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


def not_empty(option: str, value: str | None) -> str | None:
    """``value`` of ``option``, refused when empty: an unset shell variable (``--idempotency-key
    "$KEY"``) would otherwise be taken as "none given", and a retry would claim again."""
    if value is not None and not value.strip():
        raise CliError(f"{option} is empty: give it (an unset shell variable?)", status=ExitCode.USAGE)
    return value


def api_path(template: str, *names: object) -> str:
    """``template`` (``"/v1/allocations/{}/moves"``) with each name escaped as one path
    segment: a name holding ``?``, ``#`` or nothing but dots names itself (an id the server
    refuses or does not know), never another route; one holding ``/`` is refused here (no
    devassign name has one; ``../hosts/x`` released nothing and deleted a host)."""

    def one(name: object) -> str:
        if "/" in str(name):
            raise CliError(
                f"{str(name)!r} holds '/', which no consumer, gang, host, type or device id does; "
                "no name holds '/' (a device is named by its id here: `devassign devices` lists them)",
                status=ExitCode.USAGE,
            )
        text = quote(str(name), safe="")
        return text.replace(".", "%2E") if set(text) == {"."} else text

    return template.format(*(one(n) for n in names))


def devices_named(c: Client, key: str, host: str | None) -> list[dict[str, Any]]:
    """The devices ``key`` names: its address (on ``host`` where given), else its id (the
    ``devices`` table shows addresses, ``-f json`` ids too: either will do)."""
    found: list[dict[str, Any]] = c.get("/v1/devices", address=key, host=host)
    if not found and "/" not in key:
        try:
            by_id = c.get(api_path("/v1/devices/{}", key))
        except CliError as exc:
            if exc.code not in ("device_not_found", "not_found"):
                raise
        else:
            found = [by_id] if host is None or by_id.get("host") == host else []
    if not found:
        raise CliError(f"no device {key!r}" + (f" on {host}" if host else ""))
    return found


def one_device(c: Client, key: str, host: str | None) -> dict[str, Any]:
    """The one device ``key`` names (:func:`devices_named`); an address on several hosts
    needs ``--host``."""
    found = devices_named(c, key, host)
    if len(found) > 1:
        hosts = ", ".join(d["host"] for d in found)
        raise CliError(f"{key} is on several hosts ({hosts}): say which with --host", status=ExitCode.USAGE)
    return found[0]


def parse_json(text: str) -> Any:
    """JSON a user gave the CLI (a file, an option). NaN, Infinity, numbers past a float's
    range and a key repeated in one object are refused here, as the server refuses them:
    Python's decoder takes them, and the request sent would not be what the file says.
    Nesting past the decoder's depth is a :class:`ValueError` too, as the other faults are."""
    try:
        return json.loads(
            text, parse_constant=_not_a_number, parse_float=_finite, object_pairs_hook=one_per_key
        )
    except RecursionError:
        raise ValueError(f"nested too deeply (the server takes at most {MAX_JSON_DEPTH} levels)") from None


def _not_a_number(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is too large a number")
    return value


def exit_status_of(code: str | None, http_status: int | None) -> ExitCode:
    """The exit status for a server's answer: its error code, else its HTTP status."""
    if code in DENIED_CODES or http_status == 401:
        return ExitCode.DENIED
    if http_status is not None and http_status >= 500:
        return ExitCode.UNREACHABLE
    if http_status == 400:
        # The request itself is malformed (a spec, a selector, a field of a request file):
        # usage, so that a script tells it from a refusal (``explain``'s 1 is "does not fit").
        return ExitCode.USAGE
    return ExitCode.ERROR


def exit_status(exc: CliError) -> int:
    """``exc``'s exit status, refined where it was raised with the default (1) around a
    transport failure (the server did not answer)."""
    if exc.exit_status == ExitCode.ERROR and isinstance(exc.__cause__, httpx.TransportError):
        return ExitCode.UNREACHABLE
    return exc.exit_status


@dataclass(frozen=True)
class Retry:
    """One try that is retried: what came back (an HTTP status, or the transport error) and
    how long the client waits before the next try."""

    attempt: int
    method: str
    path: str
    status: int | None
    retry_after: str | None
    error: str | None
    wait: float


def retry_seconds() -> float:
    """:data:`RETRY_SECONDS`, or ``DEVASSIGN_RETRY_SECONDS`` when set to a number of 0 or more."""
    raw = os.environ.get(RETRY_ENV)
    if raw is None or raw.strip() == "":
        return RETRY_SECONDS
    try:
        value = float(raw)
    except ValueError:
        raise CliError(f"{RETRY_ENV}={raw!r}: give a number of seconds", status=ExitCode.USAGE) from None
    if not 0 <= value < float("inf"):
        raise CliError(f"{RETRY_ENV}={raw!r}: give a number of seconds, 0 or more", status=ExitCode.USAGE)
    return value


# POSTs that are idempotent by their content: a batch of inventory reports sent again is the
# same generations again, which change nothing.
IDEMPOTENT_POSTS = frozenset({"/v1/reports"})


def may_resend(method: str, body: Any, path: str = "") -> bool:
    """Whether a request may be sent again after a lost answer or a 503: safe methods, POSTs
    that carry an idempotency key (a claim: its replay answers the same allocation), and the
    POSTs of :data:`IDEMPOTENT_POSTS`."""
    if method.upper() in SAFE_METHODS or path in IDEMPOTENT_POSTS:
        return True
    return isinstance(body, dict) and bool(body.get("idempotency_key"))


def _retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("Retry-After", "").strip()
    try:
        value = float(raw)  # delay-seconds; an HTTP date is not used by devassign
    except ValueError:
        return None
    return value if 0 <= value < float("inf") else None


def usable_url(url: str) -> bool:
    """Whether the HTTP client can send to ``url``: http(s), with a host."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return False
    return parsed.scheme in ("http", "https") and bool(parsed.host)


def header_safe(token: str) -> bool:
    """Whether a header can carry ``token``: printable ASCII without spaces (a pasted newline
    or a non-ASCII character would fail every request)."""
    return token.isascii() and token.isprintable() and not any(c.isspace() for c in token)


def checked_url(url: str) -> str:
    """The server's URL, or a usage error now: a malformed URL would otherwise surface as a
    traceback, and an unsupported scheme as a transport error retried for half a minute."""
    try:
        httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise CliError(
            f"--url / DEVASSIGN_URL {url[:200]!r} is not a URL: {exc}", status=ExitCode.USAGE
        ) from None
    if not usable_url(url):
        raise CliError(
            f"--url / DEVASSIGN_URL {url[:200]!r}: give http://HOST:PORT or https://HOST:PORT",
            status=ExitCode.USAGE,
        )
    parsed = httpx.URL(url)
    if parsed.query or parsed.fragment or "?" in url or "#" in url:
        raise CliError(
            f"--url / DEVASSIGN_URL {shown_url(url)!r} holds a query or fragment (? or #): give "
            "http(s)://HOST:PORT (and a path prefix, if a proxy serves devassign under one)",
            status=ExitCode.USAGE,
        )
    try:
        port = parsed.port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise CliError(
            f"--url / DEVASSIGN_URL {shown_url(url)!r}: the port must be 1 to 65535", status=ExitCode.USAGE
        )
    if parsed.userinfo:
        # httpx would send them as Basic auth in place of the token, which the server refuses.
        raise CliError(
            f"--url / DEVASSIGN_URL {shown_url(url)!r} holds a user name or password (USER:PASSWORD@); "
            "the server takes a token: give the URL without them and the token in --token or "
            "DEVASSIGN_TOKEN",
            status=ExitCode.USAGE,
        )
    return url


def checked_token(token: str) -> str:
    """A token as a header can carry it (printable ASCII, no spaces): a pasted newline is a
    usage error, not a request that fails for a minute."""
    if not header_safe(token):
        raise CliError(
            "--token / DEVASSIGN_TOKEN holds spaces, newlines or non-ASCII characters: "
            "give the token exactly as `devassign token create` printed it",
            status=ExitCode.USAGE,
        )
    return token


# What a proxy or load balancer answers for a devassign server behind it that is down or slow.
_GATEWAY_ERRORS = frozenset({502, 503, 504})


class Client:
    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        retry_for: float | None = None,
        on_retry: Callable[[Retry], None] | None = None,
    ) -> None:
        self.url = checked_url((url or os.environ.get("DEVASSIGN_URL") or DEFAULT_URL).rstrip("/"))
        token = token or os.environ.get("DEVASSIGN_TOKEN")
        headers = {"Authorization": f"Bearer {checked_token(token)}"} if token else {}
        # Who is calling, as a digest of the token (never the token): names the CLI makes from
        # a user's key (a gang's) differ between callers, as the server scopes keys per project.
        self.caller = hashlib.sha256(token.encode()).hexdigest()[:16] if token else ""
        self.shown = shown_url(self.url)  # for messages: no password, no query
        try:
            self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)
        except OSError as exc:  # ssl.SSLError too: the CA bundle (SSL_CERT_FILE) cannot be loaded
            where = (
                os.environ.get("SSL_CERT_FILE") or os.environ.get("SSL_CERT_DIR") or "the system's CA bundle"
            )
            raise CliError(f"cannot load the TLS CA certificates from {where}: {exc}") from None
        self.retry_for = retry_seconds() if retry_for is None else retry_for
        self.on_retry = on_retry
        # The server answered this client, or took a connection it then dropped: it was
        # reached, so a failure to connect now is a server going away (a restart), not a
        # wrong URL, and what may be resent is.
        self._reached = False

    def close(self) -> None:
        self.http.close()

    def _backoff(self, attempt: int) -> float:
        step = min(BACKOFF_MAX, BACKOFF_FIRST * 2.0 ** (attempt - 1))
        return step / 2 + random.uniform(0, step / 2)

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send until an answer that is not a 503, retrying what :func:`may_resend` allows
        until ``retry_for`` seconds after the first try."""
        resend = may_resend(method, kwargs.get("json"), path)
        start = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self.http.request(method, path, **kwargs)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if "CERTIFICATE_VERIFY_FAILED" in str(exc) or "certificate verify failed" in str(exc):
                    raise CliError(
                        f"the TLS certificate of {self.shown} did not verify ({exc}): a server "
                        "whose certificate no trusted CA signed, or not the server meant; give its "
                        "CA in SSL_CERT_FILE, never plain http://",
                        status=ExitCode.UNREACHABLE,
                    ) from exc
                if "WRONG_VERSION_NUMBER" in str(exc) or "wrong version number" in str(exc):
                    raise CliError(
                        f"the TLS handshake with {self.shown} failed ({exc}): a server that speaks "
                        "plain HTTP? (give its http:// URL, or put TLS in front of it)",
                        status=ExitCode.USAGE,
                    ) from exc
                if not self._reached:  # never reached: most likely the wrong URL or no server
                    raise CliError(
                        f"cannot reach the devassign server at {self.shown}: is `devassign server` "
                        "running? (set --url or DEVASSIGN_URL)",
                        status=ExitCode.UNREACHABLE,
                    ) from exc
                wait = self._backoff(attempt)
                if not resend or not self._wait(start, attempt, method, path, None, None, str(exc), wait):
                    raise CliError(
                        f"cannot reach the devassign server at {self.shown}"
                        f"{self._tries(start, attempt, resend)}: {exc}",
                        status=ExitCode.UNREACHABLE,
                    ) from exc
                continue
            except httpx.TransportError as exc:
                self._reached = True  # connected, then dropped: the request may have been done
                wait = self._backoff(attempt)
                if not resend or not self._wait(start, attempt, method, path, None, None, str(exc), wait):
                    raise CliError(
                        f"request to {self.shown}{path} failed{self._tries(start, attempt, resend)}: {exc}",
                        status=ExitCode.UNREACHABLE,
                    ) from exc
                continue
            except httpx.HTTPError as exc:
                raise CliError(f"request to {self.shown}{path} failed: {exc}") from exc
            except httpx.InvalidURL as exc:  # a value too long for a URL (64 KiB), say
                raise CliError(
                    f"a value given does not fit in a request's URL ({exc}): shorten it",
                    status=ExitCode.USAGE,
                ) from None
            self._reached = True
            if response.status_code != 503 or not resend:
                return response
            after = _retry_after(response)
            wait = max(self._backoff(attempt), min(after, MAX_RETRY_AFTER) if after is not None else 0.0)
            header = response.headers.get("Retry-After")
            if not self._wait(start, attempt, method, path, 503, header, None, wait):
                response.extensions["devassign_tries"] = self._tries(start, attempt, resend)
                return response

    def _wait(
        self,
        start: float,
        attempt: int,
        method: str,
        path: str,
        status: int | None,
        retry_after: str | None,
        error: str | None,
        wait: float,
    ) -> bool:
        """Sleep ``wait`` before the next try and say True, or False when that try would start
        after the deadline."""
        if time.monotonic() + wait - start > self.retry_for:
            return False
        if self.on_retry is not None:
            self.on_retry(Retry(attempt, method, path, status, retry_after, error, wait))
        time.sleep(wait)
        return True

    def _tries(self, start: float, attempt: int, resend: bool) -> str:
        if self.retry_for == 0:
            return ""
        if not resend:
            return " (not retried: it may not be sent twice)"
        tries = "1 try" if attempt == 1 else f"{attempt} tries"
        return f" (gave up after {tries} in {time.monotonic() - start:.1f} s)"

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        route = path.split("?", 1)[0]
        if route.endswith("/") or "//" in route:
            # An empty name (an unset shell variable): the server would redirect, then refuse.
            raise CliError(
                f"a name in {method} {route} is empty: give it (an unset shell variable?)",
                status=ExitCode.USAGE,
            )
        response = self._send(method, path, **kwargs)
        self._check_devassign(response)
        if response.status_code == 204:
            return None
        try:
            body = response.json()
        except (ValueError, RecursionError):  # RecursionError: nested past what Python reads
            body = None
            json_said = "json" in response.headers.get("content-type", "").split(";")[0]
            if json_said and not response.is_error and response.content:  # (XML is read as text)
                raise CliError(
                    f"the server at {self.shown} answered {method} {route} with a body that is "
                    "not JSON this CLI can read: check --url or DEVASSIGN_URL"
                ) from None
        # A redirect is an error too: devassign's API never redirects a request that reached the
        # right route (an empty id, as in DELETE /v1/allocations/, is redirected, then refused).
        if response.is_error or response.is_redirect:
            err = body.get("error") if isinstance(body, dict) else None
            if not isinstance(err, dict) or not isinstance(err.get("code"), str):
                err = None  # not devassign's error body: said by its status alone
            status = exit_status_of(err.get("code") if err else None, response.status_code)
            tries = response.extensions.get("devassign_tries", "")
            if err:
                message = str(err.get("message", "error"))
                if response.status_code == 503:
                    message = f"the server at {self.shown} cannot serve now: {message}{tries}"
                raise CliError(message, code=err.get("code"), status=status, body=body)
            raise CliError(f"HTTP {response.status_code} from {self.shown}{path}{tries}", status=status)
        return body

    def _check_devassign(self, response: httpx.Response) -> None:
        """Every answer of a devassign server carries its version header: without it, this is
        another server at a wrong URL (a proxy's sign-in page, another API), whose 200 must not
        be read as an answer (a release "done" that never reached devassign). A 5xx without it
        is a proxy's (the server behind it down), handled as any 5xx; another 5xx without it
        (501 Not Implemented, say) is not devassign's either."""
        if response.status_code in _GATEWAY_ERRORS or VERSION_HEADER in response.headers:
            return
        kind = response.headers.get("content-type", "no content type").split(";")[0]
        raise CliError(
            f"the server at {self.shown} is not a devassign server (it answered {response.status_code}, "
            f"{kind}, without the {VERSION_HEADER} header): check --url or DEVASSIGN_URL",
            status=ExitCode.USAGE,
        )

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
