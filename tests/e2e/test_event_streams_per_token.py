"""Each open event stream reads the database every second: one token may hold 16 of them on a
server process; the 17th is a 429 ``too_many_streams`` that says what to do, another token is
not affected, and a closed stream gives its slot back."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import httpx
import pytest

from devassign.server.stream import MAX_STREAMS_PER_CALLER
from tests.e2e.servers import cli, running_server

pytestmark = pytest.mark.slow  # a real server


def test_one_token_holds_at_most_its_share_of_streams(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'streams.db'}"
    alice = cli("token", "create", "--role", "member", "--project", "alpha", "--db", db).stdout.strip()
    bob = cli("token", "create", "--role", "member", "--project", "beta", "--db", db).stdout.strip()
    with running_server(db, log=tmp_path / "server.log") as url, contextlib.ExitStack() as held:
        client = held.enter_context(httpx.Client(base_url=url, timeout=10))

        def open_stream(token: str) -> httpx.Response:
            headers = {"Authorization": f"Bearer {token}"}
            return held.enter_context(client.stream("GET", "/v1/events/stream", headers=headers))

        streams = [open_stream(alice) for _ in range(MAX_STREAMS_PER_CALLER)]
        assert all(r.status_code == 200 for r in streams)
        refused = open_stream(alice)
        assert refused.status_code == 429
        refused.read()
        error = refused.json()["error"]
        assert error["code"] == "too_many_streams" and "close one" in error["message"], error
        assert open_stream(bob).status_code == 200  # another token is not affected

        streams[0].close()
        for _ in range(50):  # the server sees the client go at its next poll (a second)
            again = open_stream(alice)
            if again.status_code == 200:
                break
            again.close()
            time.sleep(0.2)
        assert again.status_code == 200
