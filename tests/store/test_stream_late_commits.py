"""The event stream with concurrent writers on PostgreSQL (several replicas, or one server's
threads): an event whose transaction commits after later ids were already streamed must still
reach the stream (docs: "The stream keeps looking for such late events for 30 s")."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from devassign.server import stream
from devassign.server.app import create_app
from devassign.server.settings import Settings
from devassign.store import Database, Store
from devassign.store.events import record, record_many
from tests.api.test_events_stream import parse
from tests.conftest import _truncate

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def pg_store(pg_url: str) -> Any:
    _truncate(pg_url)
    db = Database(pg_url)
    db.upgrade()
    yield Store(db)
    db.dispose()


def _event(i: int, action: str = "review_bulk") -> dict[str, Any]:
    return {"at": NOW, "actor": "test", "action": action, "message": f"event {i}"}


def _commit_one(store: Store, action: str) -> None:
    with store.db.write() as conn:
        record(conn, **_event(0, action))


def test_a_long_transaction_of_many_events_committed_late_reaches_the_stream(pg_store: Store) -> None:
    """A fleet load (``POST /v1/reports``) or any transaction that writes more than 100 events
    and commits after another transaction's event was streamed: the stream tracks only the 100
    ids below each event it sees (``Cursor.read``), so every earlier event of the late
    transaction is silently never sent to ``devassign events --follow`` or the dashboard."""
    store = pg_store
    fetch = lambda after, limit: store.list_events(after=after, limit=limit)  # noqa: E731
    cursor = stream.Cursor(0)
    assert cursor.read(fetch) == []
    with store.db.engine.connect() as late:  # closed (rolled back) even when a check fails
        tx = late.begin()
        record_many(late, [_event(i) for i in range(150)])  # ids 1..150, not committed yet
        _commit_one(store, "review_other")  # id 151, committed first
        seen = [e.id for e, _ in cursor.read(fetch)]
        assert seen == [151]
        tx.commit()
    seen += [e.id for e, _ in cursor.read(fetch)]
    with store.db.engine.connect() as conn:
        every = sorted(conn.execute(sa.text("SELECT id FROM events")).scalars())
    missed = sorted(set(every) - set(seen))
    assert missed == [], f"{len(missed)} committed events never streamed: {missed[:5]}..."


def test_a_reconnect_gets_an_event_committed_late_below_its_last_event_id(pg_store: Store) -> None:
    """``devassign events --follow`` reconnects with ``Last-Event-ID`` (a replica restarted, a
    proxy moved it to another replica) "so nothing is printed twice or missed": an event of a
    transaction still open when the first stream sent a higher id is never sent on the new
    stream, which starts with no gaps at all. The client misses it for good."""
    store = pg_store
    settings = Settings(db_url=store.db.url, auth=False, sweep_interval=0)
    with TestClient(create_app(settings, store=store)) as api:
        with store.db.engine.connect() as late:
            tx = late.begin()
            record(late, **_event(1, "review_late"))  # id 1, in flight
            _commit_one(store, "review_early")  # id 2
            text = api.get("/v1/events/stream", params={"once": "true", "after": "0"}).text
            first = parse(text)
            assert [e["id"] for e in first] == [2]
            position = [line[4:] for line in text.splitlines() if line.startswith("id: ")][-1]
            tx.commit()
        # The client reconnects with the last id it got, as EventSource and --follow do.
        r = api.get("/v1/events/stream", params={"once": "true"}, headers={"Last-Event-ID": position})
        second = parse(r.text)
    got = {e["action"] for e in first + second}
    assert "review_late" in got, "the late event was never sent to the reconnected client"


@pytest.mark.parametrize(
    "token", ["x", "-1", "5~1-2", "5~3-1@1", "5~1-9@1", "5~0-1@1", "5~1-2@1,", "٣", "5~1-2@1e3"]
)
def test_a_position_that_no_stream_sent_is_refused(token: str) -> None:
    with pytest.raises(ValueError):
        stream.Cursor.parse(token)


def test_a_position_round_trips() -> None:
    cursor = stream.Cursor(151, [(1, 40, 1764979200.0), (42, 150, 1764979201.0)])
    again = stream.Cursor.parse(cursor.token())
    assert (again.last, again.gaps) == (151, [(1, 40, 1764979200.0), (42, 150, 1764979201.0)])
    assert cursor.token() == "151~1-40@1764979200,42-150@1764979201"
    assert stream.Cursor.parse("7").token() == "7"
