"""An idle connection outlives the idle timeouts of the proxies and client pools in front.

A server that closes an idle connection first races the next request sent on it (the client
sees the connection dropped without an answer; a proxy answers 502). So the server keeps idle
connections longer than those usually do (httpx: 5 s, load balancers 60 s): 75 s unless
``--keep-alive`` says otherwise.
"""

from __future__ import annotations

import http.client
import time
from urllib.parse import urlsplit

import pytest

from tests.e2e.servers import running_server

pytestmark = pytest.mark.slow


def _idle_then_again(url: str, idle_s: float) -> int | None:
    """``GET /healthz`` twice on one connection, ``idle_s`` apart: the second answer's status,
    or None when the server had closed the connection."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        conn.request("GET", "/healthz")
        first = conn.getresponse()
        first.read()
        assert first.status == 200 and not first.will_close
        sock = conn.sock
        time.sleep(idle_s)
        try:
            conn.request("GET", "/healthz")
            second = conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            return None
        assert conn.sock is sock  # the same connection, not a new one
        return second.status
    finally:
        conn.close()


def test_an_idle_connection_is_kept_longer_than_client_pools_keep_theirs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with running_server(f"sqlite:///{tmp_path / 'db.sqlite'}", auth=False) as url:
        # Past uvicorn's own default of 5 s, which httpx's pool (5 s) races.
        assert _idle_then_again(url, 6.5) == 200


def test_keep_alive_sets_how_long_an_idle_connection_stays(tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    with running_server(db, auth=False, extra=("--keep-alive", "1")) as url:
        assert _idle_then_again(url, 3.0) is None
