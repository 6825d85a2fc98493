"""On PostgreSQL the release's index is built without holding off claims (``CONCURRENTLY``),
and a build that was cut short is built again."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic import command

from devassign.store import Database
from tests.conftest import fresh_pg_database

_INDEX = "ix_allocations_live_gang"
_NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def at_0011() -> Iterator[Database]:
    """A PostgreSQL database at the revision before the index, with one host."""
    with fresh_pg_database("devassign_cic") as url:
        db = Database(url)
        with db.engine.connect() as conn:
            command.downgrade(db._alembic_config(conn), "0011")
            conn.commit()
            host = "INSERT INTO hosts (id, name, created_at) VALUES (1, 'h1', :t)"
            conn.execute(sa.text(host), {"t": _NOW})
            conn.commit()
        try:
            yield db
        finally:
            db.dispose()


def _allocate(conn: sa.Connection, n: int, gang: str | None = None) -> None:
    conn.execute(
        sa.text("INSERT INTO consumers (uuid, project, created_at) VALUES (:c, 'p', :t)"),
        {"c": f"c{n}", "t": _NOW},
    )
    conn.execute(
        sa.text(
            "INSERT INTO allocations (consumer, project, host_id, state, request, created_at) "
            "VALUES (:c, 'p', 1, 'active', CAST(:r AS JSON), :t)"
        ),
        {"c": f"c{n}", "r": json.dumps({"gang": gang} if gang else {}), "t": _NOW},
    )


def _index_state(db: Database) -> tuple[bool, str] | None:
    with db.engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT i.indisvalid, pg_get_indexdef(i.indexrelid) FROM pg_index i "
                "JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = :n"
            ),
            {"n": _INDEX},
        ).first()
    return None if row is None else (bool(row[0]), str(row[1]))


def test_claims_go_on_while_the_index_is_built(at_0011: Database) -> None:
    """A transaction that wrote to ``allocations`` is open when the upgrade starts: the build
    waits for it, and meanwhile other claims still insert allocations (behind a plain
    ``CREATE INDEX`` they would queue until the open transaction ended)."""
    db = at_0011
    slow = db.engine.connect()
    _allocate(slow, 1)  # open, not committed: holds a lock on allocations
    upgraded: list[object] = []
    upgrade = threading.Thread(target=lambda: upgraded.append(db.upgrade()))
    upgrade.start()
    try:
        with db.engine.connect() as probe:  # wait until the build waits for the open transaction
            for _ in range(200):
                waiting = probe.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'CREATE INDEX%' "
                        "AND wait_event_type = 'Lock'"
                    )
                ).scalar_one()
                probe.rollback()
                if waiting:
                    break
                threading.Event().wait(0.05)
            assert waiting, "the upgrade never started building the index"
        with db.engine.connect() as other:
            other.execute(sa.text("SET lock_timeout = '3s'"))
            _allocate(other, 2, gang="g")  # a claim during the build: not held off
            other.commit()
        assert _index_state(db) is not None  # the build has begun (an index not valid yet)
    finally:
        slow.commit()
        upgrade.join(timeout=60)
    assert upgraded and upgraded[0] == ("0011", db.head_revision())
    state = _index_state(db)
    assert state is not None and state[0], state


def test_an_index_left_invalid_by_a_cut_build_is_built_again(at_0011: Database) -> None:
    """A concurrent build that failed leaves an invalid index of the same name behind: the
    upgrade drops it and builds the right one."""
    db = at_0011
    with db.engine.connect() as conn:
        _allocate(conn, 1)
        _allocate(conn, 2)
        conn.commit()
    admin = db.engine.execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn, pytest.raises(sa.exc.IntegrityError):
        conn.execute(sa.text(f"CREATE UNIQUE INDEX CONCURRENTLY {_INDEX} ON allocations (project)"))
    left = _index_state(db)
    assert left is not None and not left[0], left  # the failed build's leftover, invalid
    db.upgrade()
    state = _index_state(db)
    assert state is not None and state[0], state
    assert "UNIQUE" not in state[1] and "gang" in state[1] and "released_at IS NULL" in state[1]


def test_a_replica_waiting_for_the_migration_lock_does_not_deadlock_the_index_build(
    at_0011: Database,
) -> None:
    """Replicas started together: one migrates and builds the index CONCURRENTLY, the others
    wait for its lock. A replica that waited inside a statement held a snapshot the build
    waits for, while it waited for the build's lock: PostgreSQL cut one of them short
    ("deadlock detected") and a replica failed to start."""
    db = at_0011
    slow = db.engine.connect()
    _allocate(slow, 1)  # keeps the build waiting until the other replica waits too
    results: dict[str, object] = {}

    def run(name: str, database: Database) -> None:
        try:
            results[name] = database.upgrade()
        except Exception as exc:  # the failure is the finding
            results[name] = exc

    first = threading.Thread(target=run, args=("first", db))
    first.start()
    second_db = Database(db.url)
    second = threading.Thread(target=run, args=("second", second_db))
    try:
        with db.engine.connect() as probe:
            for _ in range(200):
                building = probe.execute(
                    sa.text("SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'CREATE INDEX%'")
                ).scalar_one()
                probe.rollback()
                if building:
                    break
                threading.Event().wait(0.05)
            assert building, "the first upgrade never started building the index"
        second.start()
        threading.Event().wait(1.0)  # the second waits for the lock
    finally:
        slow.commit()
        slow.close()
        first.join(timeout=60)
        second.join(timeout=60)
        second_db.dispose()
    assert results["first"] == ("0011", db.head_revision()), results
    assert results["second"] == (db.head_revision(), db.head_revision()), results
    state = _index_state(db)
    assert state is not None and state[0], state
