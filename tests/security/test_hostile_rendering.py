"""Text a host agent or a tenant controls, as the CLI and the dashboard show it to people.

An agent's token may report health reasons, post its work results' errors and taint its own
host with a free-text reason; the server stores them verbatim and shows them to admins
(``devassign taints``, ``devassign events``). Terminal control sequences in them must reach
the admin's terminal as visible text, never as control sequences: an OSC 8 hyperlink that
hides a URL behind innocent text, ``ESC [2J`` clearing the screen, a C1 CSI (``\\x9b``), a
right-to-left override that reorders what is read.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from devassign import schemas
from devassign.cli import inventory as inventory_cli
from devassign.cli import output
from devassign.cli import taints as taints_cli
from devassign.cli.client import Client
from devassign.cli.follow import event_line, follow_events
from devassign.cli.main import app as cli_app
from devassign.cli.output import Format
from devassign.domain import Role
from devassign.openstack.placement_service import EventFollower
from devassign.store import Store
from tests.conftest import vf

# An OSC 8 hyperlink around "click", a screen clear, a C1 CSI, a right-to-left override.
HOSTILE = "\x1b]8;;http://evil.example/\x1b\\click\x1b]8;;\x1b\\ \x1b[2J \x9b31m \u202eevil"
CONTROLS = ("\x1b", "\x9b", "\u202e")
# A line that reads as an event of its own, after a newline.
FAKE_EVENT = "\n7  2026-01-01 12:00:00  admin  host_untainted  host h1 untainted"


def _bearer(store: Store, role: Role, **scope: str) -> dict[str, str]:
    secret = store.create_token(schemas.TokenCreate(role=role, **scope), "test").token
    return {"Authorization": f"Bearer {secret}"}


def _agent_taints_h1(api: TestClient, store: Store, reason: str, device: dict[str, Any]) -> dict[str, str]:
    """An admin makes a type; the agent of h1 reports ``device`` and taints its host with
    ``reason``. Returns the admin's headers."""
    admin = _bearer(store, Role.ADMIN)
    agent = _bearer(store, Role.AGENT, host="h1")
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}, headers=admin).status_code == 201
    r = api.put("/v1/hosts/h1/inventory", json={"generation": 1, "devices": [device]}, headers=agent)
    assert r.status_code == 200 and not r.json()["refused"], r.text
    r = api.post("/v1/hosts/h1/taints", json={"effect": "NoSchedule", "reason": reason}, headers=agent)
    assert r.status_code == 201, r.text
    return admin


def _hostile_agent(api: TestClient, store: Store) -> dict[str, str]:
    """The agent of h1 reports an unhealthy device and taints its host, both with the hostile
    text. Returns the admin's headers."""
    device = vf("0000:3b:02.1", healthy=False, health_reason="link down " + HOSTILE)
    return _agent_taints_h1(api, store, HOSTILE + FAKE_EVENT, device)


def _run_cli(api: TestClient, headers: dict[str, str], monkeypatch: pytest.MonkeyPatch, *argv: str) -> str:
    token = headers["Authorization"].removeprefix("Bearer ")
    client = Client("http://testserver", token, transport=api._transport, retry_for=0)
    for module in (inventory_cli, taints_cli):
        monkeypatch.setattr(module, "client", lambda ctx, c=client: c)
    # Wide enough that no cell wraps inside a word the test looks for, whatever width an
    # earlier test in this process left.
    monkeypatch.setattr(output.console, "width", 400)
    result = CliRunner().invoke(cli_app, list(argv))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("argv", [("taints",), ("events",), ("host", "untaint", "h1")])
def test_an_agents_text_reaches_the_admins_terminal_without_its_control_sequences(
    secure_api: TestClient, store: Store, monkeypatch: pytest.MonkeyPatch, argv: tuple[str, ...]
) -> None:
    admin = _hostile_agent(secure_api, store)
    out = _run_cli(secure_api, admin, monkeypatch, *argv)
    assert "click" in out  # the text is shown...
    assert [c for c in CONTROLS if c in out] == []  # ...but none of its controls
    assert "\\x1b" in out and "\\u202e" in out  # they are shown escaped instead


def test_a_followed_event_is_one_line_of_visible_text(secure_api: TestClient, store: Store) -> None:
    """``devassign events --follow`` prints each event as one line: a message's newline would
    print a line that reads as another event."""
    admin = _hostile_agent(secure_api, store)
    events: list[dict[str, Any]] = secure_api.get("/v1/events", headers=admin).json()
    tainted = next(e for e in events if FAKE_EVENT in e["message"])
    line = event_line(tainted, Format.table)
    assert "\n" not in line and [c for c in CONTROLS if c in line] == []
    assert line.endswith("\\n7  2026-01-01 12:00:00  admin  host_untainted  host h1 untainted")


class _Stop(Exception):
    pass


class _StreamOnce(httpx.BaseTransport):
    """The in-process app, its event stream ending once it has sent what there is
    (``?once=true``), so ``follow_events`` reads it as it reads a live one."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/events/stream":
            request.url = request.url.copy_merge_params({"once": "true"})
        return self.inner.handle_request(request)


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"])
def test_events_follow_reads_an_event_whose_text_holds_a_unicode_line_separator(
    secure_api: TestClient, store: Store, separator: str
) -> None:
    """The stream's JSON keeps U+2028, U+2029 and NEL (U+0085) as they are, and server-sent
    events end lines only at CR and LF; ``httpx``'s ``iter_lines`` splits at these too, so the
    follower read half an event's JSON and ended with a traceback: an agent that put one in a
    taint's reason stopped every admin's ``devassign events --follow``."""
    reason = f"fan failed{separator}replaced"
    admin = _agent_taints_h1(secure_api, store, reason, vf("0000:3b:02.1"))

    token = admin["Authorization"].removeprefix("Bearer ")
    client = Client("http://testserver", token, transport=_StreamOnce(secure_api._transport), retry_for=0)
    printed: list[str] = []

    def stop(seconds: float) -> None:
        raise _Stop

    with pytest.raises(_Stop):  # the stream ended (once): every event was read, none broke it
        follow_events(client, {}, history=0, fmt=Format.json, out=printed.append, sleep=stop)
    tainted = [json.loads(line) for line in printed if "fan failed" in line]
    assert [e["message"] for e in tainted] == [f"host h1 tainted NoSchedule: {reason}"]


def test_the_placement_mirror_notes_the_host_of_an_event_whose_text_holds_a_line_separator(
    secure_api: TestClient, store: Store
) -> None:
    """The Placement mirror's stream reader split lines as ``events --follow`` did: the host of
    an event with U+2028 in its text was dropped, and its providers waited for the next full
    sync instead of being synced within a second."""
    admin = _agent_taints_h1(secure_api, store, "fan\u2028failed", vf("0000:3b:02.1"))
    newest = secure_api.get("/v1/events", headers=admin).json()[0]["id"]
    # The stream from just before the taint's event: that event alone.
    body = secure_api.get(
        "/v1/events/stream", params={"after": newest - 1, "once": "true"}, headers=admin
    ).content
    assert "\u2028".encode() in body

    follower = EventFollower(httpx.Client(base_url="http://devassign"), threading.Event())

    def answer(request: httpx.Request) -> httpx.Response:
        follower.stopped.set()  # one read of the stream, then the follower ends
        return httpx.Response(200, content=body, headers={"Content-Type": "text/event-stream"})

    follower.client = httpx.Client(base_url="http://devassign", transport=httpx.MockTransport(answer))
    follower.run()
    assert follower.take() == {"h1"}
