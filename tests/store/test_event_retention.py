"""The event log keeps events for the retention the server is given, and no longer.

Without it every claim, release and report added rows for ever. The sweeper deletes the
oldest events, a prefix of the log by id (so an agent's view of its host from the last
deletion of a host of its name stays fenced), and never the newest (SQLite would give its id
out again and event streams would miss what follows).
"""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from devassign import schemas
from devassign.server.settings import Settings, settings_from_env, settings_to_env
from devassign.store import Store
from devassign.store import events as event_log
from devassign.store.schema import events
from tests.conftest import Clock, vf

DAY = 86400.0


def _report(store: Store, host: str, *addresses: str) -> None:
    devices = [vf(a) for a in addresses]
    store.apply_report(host, schemas.InventoryReport(generation=1, devices=devices), "agent")  # type: ignore[arg-type]


def _ids(store: Store) -> list[int]:
    with store.db.engine.connect() as c:
        return list(c.execute(sa.select(events.c.id).order_by(events.c.id)).scalars())


def test_events_older_than_the_retention_are_deleted_and_newer_ones_kept(store: Store, clock: Clock) -> None:
    store.create_type(schemas.ResourceTypeCreate(name="NIC_VF_1G"), "admin")
    _report(store, "old-1", "0000:3b:02.1")
    _report(store, "old-2", "0000:3b:02.1")
    clock.advance(10 * DAY)
    _report(store, "new-1", "0000:3b:02.1")
    before = {e.host for e in store.list_events(limit=1000)}
    assert {"old-1", "old-2", "new-1"} <= before

    assert store.prune_events() == 0  # no retention: the log is kept for ever
    store.event_retention = timedelta(days=5)
    gone = store.prune_events()
    left = store.list_events(limit=1000)
    assert gone > 0 and {e.host for e in left} == {"new-1"}
    assert all(e.at >= clock.now - timedelta(days=5) for e in left)
    assert store.prune_events() == 0  # nothing more to delete


def test_the_newest_event_is_never_deleted_so_its_id_is_never_given_again(store: Store, clock: Clock) -> None:
    store.create_type(schemas.ResourceTypeCreate(name="NIC_VF_1G"), "admin")
    _report(store, "h1", "0000:3b:02.1", "0000:3b:02.2")
    newest = _ids(store)[-1]
    clock.advance(100 * DAY)
    store.event_retention = timedelta(days=1)
    store.prune_events()
    assert _ids(store) == [newest]
    _report(store, "h2", "0000:3b:02.1")
    assert min(_ids(store)[1:]) > newest
    # A stream resuming after the newest id sees the new events.
    assert {e.host for e in store.list_events(after=newest)} == {"h2"}


def test_pruning_goes_in_batches_and_stops_at_an_event_from_a_clock_ahead(store: Store, clock: Clock) -> None:
    store.create_type(schemas.ResourceTypeCreate(name="NIC_VF_1G"), "admin")
    for i in range(6):
        _report(store, f"h{i}", "0000:3b:02.1")
    ids = _ids(store)
    with store.db.engine.begin() as c:  # a server whose clock ran ahead wrote the fourth event
        c.execute(events.update().where(events.c.id == ids[3]).values(at=clock.now + timedelta(days=30)))
    clock.advance(10 * DAY)
    before = clock.now - timedelta(days=1)
    with store.db.engine.begin() as c:
        assert event_log.prune(c, before=before, batch=2) == 2
    assert _ids(store) == ids[2:]
    with store.db.engine.begin() as c:
        assert event_log.prune(c, before=before, batch=100) == 1
    assert _ids(store) == ids[3:]  # a prefix by id, never a hole: it waits for the fourth


def test_the_sweeper_prunes_with_the_retention_it_was_given(store: Store, clock: Clock) -> None:
    store.create_type(schemas.ResourceTypeCreate(name="NIC_VF_1G"), "admin")
    _report(store, "h1", "0000:3b:02.1")
    _report(store, "h2", "0000:3b:02.1")
    clock.advance(3 * DAY)
    _report(store, "h3", "0000:3b:02.1")
    old = [e.id for e in store.list_events(limit=1000)]
    store.event_retention = timedelta(days=2)
    store.sweep()  # it also marks h1 and h2 down: new events
    left = store.list_events(limit=1000)
    assert left and all(e.at >= clock.now - timedelta(days=2) for e in left)
    assert {e.host for e in left if e.id in old} == {"h3"}  # of the events before, h3's are kept


def test_the_retention_reaches_every_server_process() -> None:
    for retention in (timedelta(days=7), None):
        settings = Settings(db_url="sqlite:///x.db", event_retention=retention)
        back = settings_from_env(settings_to_env(settings))
        assert back.event_retention == retention
    assert Settings().event_retention == timedelta(days=90)
