"""On PostgreSQL the server analyzes the candidate tables once they changed enough (the
planner chose nested loops over every host without statistics; autovacuum may be off)."""

from __future__ import annotations

import time

import sqlalchemy as sa

from devassign import schemas
from devassign.store import Store
from tests.conftest import vf


def test_statistics_are_refreshed_after_a_load(store: Store) -> None:
    if store.db.is_sqlite:
        assert store.refresh_statistics() is False  # nothing to do on SQLite
        return
    store.create_type(schemas.ResourceTypeCreate(name="NIC_VF_1G"), "t")
    for i in range(120):
        report = schemas.InventoryReport(generation=1, devices=[vf("0000:3b:02.1")])  # type: ignore[list-item]
        store.apply_report(f"h{i}", report, "t")
    # Backends publish their table counters at most once a second, and an idle one only after
    # up to 10 s (PostgreSQL 15's pgstat idle interval): poll (bounded) for them.
    analyzed = False
    for _ in range(250):
        if store.refresh_statistics():
            analyzed = True
            break
        time.sleep(0.1)
    assert analyzed
    # Fresh now: nothing more to analyze once the last counters the load left are published
    # (a backend may publish some after the first analysis: a later call analyzes those).
    for _ in range(250):
        if store.refresh_statistics() is False:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the statistics never settled: every call analyzed again")
    with store.db.engine.connect() as c:
        analyzed_tables = set(
            c.execute(
                sa.text("SELECT relname FROM pg_stat_user_tables WHERE last_analyze IS NOT NULL")
            ).scalars()
        )
    assert {"inventory", "hosts", "devices"} <= analyzed_tables
