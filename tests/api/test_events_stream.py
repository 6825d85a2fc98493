"""``GET /v1/events/stream``: scoped as ``/v1/events``, resumable, live, and it ends cleanly.

Catch-up reads (``?once=true``) go through the in-process client; live streams need a real
server, so those tests run the application under uvicorn in a thread of the test, on the same
store (SQLite and PostgreSQL).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from devassign import schemas
from devassign.domain import Role
from devassign.server import stream
from devassign.server.app import create_app
from devassign.server.settings import Settings
from devassign.store import Store
from tests.conftest import vf
from tests.e2e.servers import free_port

DEADLINE = 30.0  # seconds a test waits for something that should come at once


def _token(store: Store, role: Role, **scope: str) -> dict[str, str]:
    secret = store.create_token(schemas.TokenCreate(role=role, **scope), "test").token
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def who(store: Store) -> dict[str, dict[str, str]]:
    return {
        "admin": _token(store, Role.ADMIN),
        "member_p": _token(store, Role.MEMBER, project="p"),
        "member_q": _token(store, Role.MEMBER, project="q"),
        "agent_a": _token(store, Role.AGENT, host="compute-a"),
        "agent_b": _token(store, Role.AGENT, host="compute-b"),
    }


def _claim(client: Any, headers: dict[str, str], consumer: str, project: str, host: str) -> None:
    body = {
        "consumer": consumer,
        "project": project,
        "hosts": [host],
        "requests": [{"name": "nic", "type": "NIC_VF_1G"}],
    }
    r = client.post("/v1/claims", json=body, headers=headers)
    assert r.status_code == 201, r.text


def _world(client: Any, who: dict[str, dict[str, str]]) -> None:
    """A type, two hosts, a claim of project p on compute-a and one of q on compute-b."""
    r = client.post("/v1/resource-types", json={"name": "NIC_VF_1G"}, headers=who["admin"])
    assert r.status_code == 201, r.text
    for host, agent in (("compute-a", "agent_a"), ("compute-b", "agent_b")):
        report = {"generation": 1, "devices": [vf("0000:3b:02.1"), vf("0000:3b:02.2")]}
        r = client.put(f"/v1/hosts/{host}/inventory", json=report, headers=who[agent])
        assert r.status_code == 200, r.text
    _claim(client, who["admin"], "vm-p", "p", "compute-a")
    _claim(client, who["admin"], "vm-q", "q", "compute-b")
    assert client.delete("/v1/allocations/vm-q", headers=who["admin"]).status_code == 204


def parse(text: str) -> list[dict[str, Any]]:
    """The events of a whole server-sent-events body: ``id`` and the event's JSON."""
    events = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":") or ":" not in line:
                continue
            name, _, rest = line.partition(":")
            fields[name] = rest.removeprefix(" ")
        if "data" in fields:
            event = json.loads(fields["data"])
            # the stream's position after the event: its id, or a higher one (a late event)
            # with the gaps still open below it
            assert int(fields["id"].partition("~")[0]) >= event["id"], fields["id"]
            events.append(event)
    return events


def _catch_up(api: TestClient, headers: dict[str, str], **params: str) -> list[dict[str, Any]]:
    r = api.get("/v1/events/stream", params={"once": "true", **params}, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    return parse(r.text)


@pytest.mark.parametrize("caller", ["admin", "member_p", "member_q", "agent_a", "agent_b"])
def test_the_stream_is_scoped_as_the_event_log(
    secure_api: TestClient, who: dict[str, dict[str, str]], caller: str
) -> None:
    _world(secure_api, who)
    listed = secure_api.get("/v1/events", params={"limit": 1000}, headers=who[caller]).json()
    streamed = _catch_up(secure_api, who[caller], after="0")
    assert [e["id"] for e in streamed] == sorted(e["id"] for e in listed)
    assert streamed == sorted(listed, key=lambda e: e["id"])
    assert streamed, "every caller sees some of this world's events"
    seen = json.dumps(streamed)
    if caller == "member_p":
        assert "vm-p" in seen and "vm-q" not in seen
    if caller == "agent_a":
        assert all(e["host"] == "compute-a" for e in streamed)


def test_filters_outside_the_scope_are_refused_before_the_stream_starts(
    secure_api: TestClient, who: dict[str, dict[str, str]]
) -> None:
    _world(secure_api, who)
    r = secure_api.get("/v1/events/stream", params={"host": "compute-a"}, headers=who["member_p"])
    assert r.status_code == 403, r.text
    r = secure_api.get("/v1/events/stream", params={"host": "compute-a"}, headers=who["agent_b"])
    assert r.status_code == 403, r.text
    r = secure_api.get("/v1/events/stream", headers={**who["admin"], "Last-Event-ID": "seven"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
    assert secure_api.get("/v1/events/stream", params={"once": "true"}).status_code == 401


def test_resume_with_last_event_id_or_after(secure_api: TestClient, who: dict[str, dict[str, str]]) -> None:
    _world(secure_api, who)
    everything = _catch_up(secure_api, who["admin"], after="0")
    middle = everything[len(everything) // 2]["id"]
    resumed = _catch_up(secure_api, {**who["admin"], "Last-Event-ID": str(middle)})
    assert [e["id"] for e in resumed] == [e["id"] for e in everything if e["id"] > middle]
    # The header (a reconnect) wins over the ?after= of the URL the stream was opened with.
    resumed = _catch_up(secure_api, {**who["admin"], "Last-Event-ID": str(middle)}, after="0")
    assert [e["id"] for e in resumed] == [e["id"] for e in everything if e["id"] > middle]
    assert _catch_up(secure_api, who["admin"], after=str(everything[-1]["id"])) == []
    # Without a position, the stream starts after the newest event: nothing yet.
    assert _catch_up(secure_api, who["admin"]) == []
    # A member resuming gets its own project's events after that id, no others.
    mine = _catch_up(secure_api, {**who["member_p"], "Last-Event-ID": "0"})
    assert mine and all(e["consumer"] == "vm-p" for e in mine)


# ---------------------------------------------------------------- live, under uvicorn


@contextlib.contextmanager
def serving(store: Store) -> Iterator[tuple[str, uvicorn.Server]]:
    """The application on a free port, in a thread; shut down as a signal would."""
    app = create_app(Settings(db_url=store.db.url, auth=True, sweep_interval=0), store=store)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + DEADLINE
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(timeout=DEADLINE)
        assert not thread.is_alive(), "the server did not shut down"


class Reader:
    """Reads a live stream line by line in a thread, so a test can wait with a deadline."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines: list[str] = []
        self.ended = threading.Event()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, args=(response,), daemon=True)
        self._thread.start()

    def _run(self, response: httpx.Response) -> None:
        with contextlib.suppress(httpx.HTTPError):
            for line in response.iter_lines():
                with self._cond:
                    self.lines.append(line)
                    self._cond.notify_all()
        self.ended.set()
        with self._cond:
            self._cond.notify_all()

    def events(self) -> list[dict[str, Any]]:
        with self._cond:
            return parse("\n".join(self.lines) + "\n\n")

    def wait_for(self, what: str, check: Any) -> None:
        deadline = time.monotonic() + DEADLINE
        with self._cond:
            while not check(self):
                left = deadline - time.monotonic()
                assert left > 0, f"no {what} within {DEADLINE} s; got {self.lines[-20:]}"
                self._cond.wait(timeout=min(left, 0.5))


@pytest.fixture
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream, "POLL_INTERVAL", 0.1)
    monkeypatch.setattr(stream, "HEARTBEAT_INTERVAL", 0.3)


def test_new_events_appear_in_scope_with_heartbeats(
    store: Store, who: dict[str, dict[str, str]], fast_polls: None
) -> None:
    with serving(store) as (url, _), httpx.Client(base_url=url, timeout=DEADLINE) as client:
        _world(client, who)
        with (
            client.stream("GET", "/v1/events/stream", headers=who["member_q"]) as theirs,
            client.stream("GET", "/v1/events/stream", headers=who["member_p"]) as mine,
        ):
            assert mine.status_code == 200 and theirs.status_code == 200
            mine_reader, theirs_reader = Reader(mine), Reader(theirs)
            # Only what comes after the stream opened: vm-p's older claim is not sent again.
            mine_reader.wait_for("first comment", lambda r: any(x.startswith(":") for x in r.lines))
            _claim(client, who["admin"], "vm-q2", "q", "compute-b")
            _claim(client, who["admin"], "vm-p2", "p", "compute-a")
            mine_reader.wait_for("vm-p2's claim", lambda r: any(e["consumer"] == "vm-p2" for e in r.events()))
            theirs_reader.wait_for(
                "vm-q2's claim", lambda r: any(e["consumer"] == "vm-q2" for e in r.events())
            )
            assert {e["consumer"] for e in mine_reader.events()} == {"vm-p2"}
            assert {e["consumer"] for e in theirs_reader.events()} == {"vm-q2"}
            mine_reader.wait_for("a heartbeat", lambda r: ": heartbeat" in r.lines)


def test_a_reconnect_with_last_event_id_misses_nothing(
    store: Store, who: dict[str, dict[str, str]], fast_polls: None
) -> None:
    with serving(store) as (url, _), httpx.Client(base_url=url, timeout=DEADLINE) as client:
        _world(client, who)
        with client.stream("GET", "/v1/events/stream", headers=who["admin"]) as first:
            reader = Reader(first)
            _claim(client, who["admin"], "vm-1", "p", "compute-a")
            reader.wait_for("vm-1's claim", lambda r: any(e["consumer"] == "vm-1" for e in r.events()))
            last = reader.events()[-1]["id"]
        # While no one listens, more happens.
        assert client.delete("/v1/allocations/vm-1", headers=who["admin"]).status_code == 204
        _claim(client, who["admin"], "vm-2", "p", "compute-b")
        headers = {**who["admin"], "Last-Event-ID": str(last)}
        with client.stream("GET", "/v1/events/stream", headers=headers) as second:
            reader = Reader(second)
            listed = client.get("/v1/events", params={"limit": 1000}, headers=who["admin"]).json()
            missed = sorted(e["id"] for e in listed if e["id"] > last)
            assert missed
            reader.wait_for("the missed events", lambda r: [e["id"] for e in r.events()] == missed)


def test_streams_end_when_the_client_goes_and_when_the_server_stops(
    store: Store, who: dict[str, dict[str, str]], fast_polls: None
) -> None:
    with serving(store) as (url, server), httpx.Client(base_url=url, timeout=DEADLINE) as client:
        _world(client, who)
        with client.stream("GET", "/v1/events/stream", headers=who["admin"]) as gone:
            Reader(gone).wait_for("the first comment", lambda r: bool(r.lines))
        # The server notices the client went: the stream's task ends.
        deadline = time.monotonic() + DEADLINE
        while server.server_state.tasks:
            assert time.monotonic() < deadline, "the server kept streaming to a client that went"
            time.sleep(0.05)
        with client.stream("GET", "/v1/events/stream", headers=who["admin"]) as staying:
            reader = Reader(staying)
            reader.wait_for("the first comment", lambda r: bool(r.lines))
            server.should_exit = True  # what SIGTERM does
            assert reader.ended.wait(DEADLINE), "the stream did not end when the server shut down"


def test_a_revoked_token_ends_its_stream(
    store: Store, who: dict[str, dict[str, str]], fast_polls: None
) -> None:
    made = store.create_token(schemas.TokenCreate(role=Role.MEMBER, project="p"), "test")
    with serving(store) as (url, _), httpx.Client(base_url=url, timeout=DEADLINE) as client:
        _world(client, who)
        headers = {"Authorization": f"Bearer {made.token}"}
        with client.stream("GET", "/v1/events/stream", headers=headers) as response:
            reader = Reader(response)
            reader.wait_for("the first comment", lambda r: bool(r.lines))
            assert client.delete(f"/v1/tokens/{made.id}", headers=who["admin"]).status_code == 200
            _claim(client, who["admin"], "vm-p-after", "p", "compute-b")
            assert reader.ended.wait(DEADLINE), "the stream outlived its token"
            assert not any(e["consumer"] == "vm-p-after" for e in reader.events())


def test_a_position_past_the_end_of_the_log_follows_the_log_as_it_is(
    secure_api: TestClient, who: dict[str, dict[str, str]]
) -> None:
    """The database restored from an older backup: its event ids start again below the ones a
    client saw. A client resuming from its position is moved to the end of the log as it is
    (the stream sends it that position) and gets the events written from then on, not nothing
    until the ids pass its old position."""
    _world(secure_api, who)
    everything = _catch_up(secure_api, who["admin"], after="0")
    top = everything[-1]["id"]
    seen = top + 50  # the client saw 50 events the restored log does not have
    r = secure_api.get(
        "/v1/events/stream", params={"once": "true"}, headers={**who["admin"], "Last-Event-ID": str(seen)}
    )
    assert r.status_code == 200 and parse(r.text) == []
    (position,) = [line.removeprefix("id: ") for line in r.text.splitlines() if line.startswith("id:")]
    assert position == str(top)
    _claim(secure_api, who["admin"], "vm-after-restore", "p", "compute-a")
    resumed = _catch_up(secure_api, {**who["admin"], "Last-Event-ID": position})
    assert resumed and any(e["consumer"] == "vm-after-restore" for e in resumed)
    # A position at the end of the log is kept as it was: no position line.
    newest = str(resumed[-1]["id"])
    r = secure_api.get(
        "/v1/events/stream", params={"once": "true"}, headers={**who["admin"], "Last-Event-ID": newest}
    )
    assert r.status_code == 200 and not [line for line in r.text.splitlines() if line.startswith("id:")]


def test_a_database_that_cannot_serve_for_a_while_does_not_cut_the_stream(
    store: Store, who: dict[str, dict[str, str]], fast_polls: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream's reads while the database is down or failing over are skipped, and the
    stream goes on from where it was once it answers: the response was cut mid-chunk, with
    "Exception in ASGI application" in the log."""
    from devassign import errors

    real = stream.Cursor.read
    down = threading.Event()

    def read(self: stream.Cursor, fetch: Any, committed: Any = None) -> Any:
        if down.is_set():
            raise errors.DevassignError(errors.DATABASE_BUSY, "the database cannot be reached")
        return real(self, fetch, committed)

    monkeypatch.setattr(stream.Cursor, "read", read)
    with serving(store) as (url, _), httpx.Client(base_url=url, timeout=DEADLINE) as client:
        _world(client, who)
        with client.stream("GET", "/v1/events/stream", headers=who["admin"]) as live:
            reader = Reader(live)
            reader.wait_for("first comment", lambda r: any(x.startswith(":") for x in r.lines))
            down.set()
            _claim(client, who["admin"], "vm-1", "p", "compute-a")
            time.sleep(0.5)  # several polls fail
            assert not reader.ended.is_set()
            down.clear()
            reader.wait_for("vm-1's claim", lambda r: any(e["consumer"] == "vm-1" for e in r.events()))
