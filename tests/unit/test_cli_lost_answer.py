"""A command's first request whose connection the server drops (it died after committing the
claim, or a proxy cut it) reached the server: the CLI resends it while the server restarts,
and a claim, which always carries an idempotency key, gets the allocation it made; a release
too. Only a server never reached at all is reported at once as a wrong URL."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from devassign.cli.client import VERSION_HEADER, Client, CliError, ExitCode

URL = "http://devassign.invalid:8470"
SERVER = {VERSION_HEADER: "1"}


class Restarting:
    """The server as a client sees it across a crash: the first request is taken and its
    connection dropped; then ``down`` tries are refused (restarting); then every request is
    answered, the claim replayed by its key."""

    def __init__(self, down: int) -> None:
        self.down = down
        self.seen: list[tuple[str, str, Any]] = []
        self.made: dict[str, dict[str, Any]] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.seen.append((request.method, request.url.path, body))
        if len(self.seen) == 1:
            if request.method == "POST":
                self.made[body["idempotency_key"]] = {"consumer": body["consumer"], "state": "reserved"}
            raise httpx.RemoteProtocolError("Server disconnected without a response", request=request)
        if len(self.seen) <= 1 + self.down:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        if request.method == "POST":
            return httpx.Response(200, json=self.made[body["idempotency_key"]], headers=SERVER)
        return httpx.Response(204, headers=SERVER)


def test_a_claim_whose_answer_was_lost_is_resent_with_its_key_and_gets_its_allocation() -> None:
    server = Restarting(down=3)
    client = Client(URL, retry_for=30, transport=httpx.MockTransport(server))
    body = {"consumer": "vm-1", "extra_specs": {"hardware_resource:GPU": "1"}, "idempotency_key": "cli-k1"}
    assert client.post("/v1/claims", body) == {"consumer": "vm-1", "state": "reserved"}
    assert len(server.seen) == 5 and {b["idempotency_key"] for _, _, b in server.seen} == {"cli-k1"}


def test_a_release_whose_answer_was_lost_is_resent() -> None:
    server = Restarting(down=2)
    client = Client(URL, retry_for=30, transport=httpx.MockTransport(server))
    client.delete("/v1/allocations/vm-1")
    assert [m for m, _, _ in server.seen] == ["DELETE"] * 4


def test_a_server_gone_for_good_after_the_drop_is_reported_as_lost_not_as_a_wrong_url() -> None:
    server = Restarting(down=10**6)
    client = Client(URL, retry_for=0.5, transport=httpx.MockTransport(server))
    with pytest.raises(CliError) as lost:
        client.delete("/v1/allocations/vm-1")
    assert lost.value.exit_status == ExitCode.UNREACHABLE
    assert "gave up after" in lost.value.message and "is `devassign server` running" not in lost.value.message


def test_a_server_never_reached_is_reported_at_once() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    client = Client(URL, retry_for=30, transport=httpx.MockTransport(refuse))
    with pytest.raises(CliError) as never:
        client.get("/v1/resource-types")
    assert "is `devassign server` running?" in never.value.message
