"""SQLite's file failing under a running server: a full disk, a file that cannot be written,
the file deleted or replaced. Each is a 503 ``database_busy`` with its own reason (never a
500), the refused write changes nothing, and the server serves again by itself once the file
can be written, without a restart (a connection opened while it could not be written is not
kept). A deleted or replaced file refuses every write from then on: writes acknowledged into a
file nobody will open again would be lost at the next start.

Provoked for real: ``PRAGMA max_page_count`` makes SQLite's own ``SQLITE_FULL``,
``PRAGMA query_only`` on the connections opened while "the file is read-only" its
``SQLITE_READONLY``, and the file is unlinked or renamed over.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from devassign.store import Database
from devassign.store.db import busy_error
from tests.conftest import vf
from tests.reliability.test_overload import NIC, _api, _busy, _claim_body, _seed, _state, _writes


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'devassign.db'}", pool_size=1, max_overflow=0, pool_timeout=2)
    yield db
    db.dispose()


def _real_error(pragma: str, tmp_path: Path) -> sa.exc.DBAPIError:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'probe.db'}")
    with engine.connect() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x TEXT)")
        conn.commit()
        conn.exec_driver_sql(pragma)
        try:
            conn.exec_driver_sql("INSERT INTO t SELECT hex(randomblob(4000)) FROM (SELECT 1 UNION SELECT 2)")
        except sa.exc.DBAPIError as exc:
            return exc
    raise AssertionError(f"{pragma}: the insert did not fail")


@pytest.mark.parametrize(
    ("pragma", "reason"),
    [("PRAGMA max_page_count = 2", "disk_full"), ("PRAGMA query_only = ON", "read_only")],
)
def test_sqlites_own_errors_are_database_busy(tmp_path: Path, pragma: str, reason: str) -> None:
    exc = _real_error(pragma, tmp_path)
    assert isinstance(exc.orig, sqlite3.Error)
    found = busy_error(exc)
    assert found is not None and found.extra["reason"] == reason, (exc, found)


def test_a_full_disk_is_503_changes_nothing_and_passes(sqlite_db: Database) -> None:
    with _api(sqlite_db) as api:
        _seed(api)
        before = _state(api)
        with sqlite_db.engine.connect() as conn:  # the pool's one connection: the "disk" is full
            pages = conn.exec_driver_sql("PRAGMA page_count").scalar_one()
            conn.exec_driver_sql(f"PRAGMA max_page_count = {pages}")
        # A report of 500 devices needs pages the "disk" has no room for.
        big = {"generation": 1, "devices": [vf(f"0000:{b:02x}:{d:02x}.{f}") for b in range(1, 3)
                                            for d in range(32) for f in range(8)][:500]}  # fmt: skip
        _busy(api.put("/v1/hosts/h-big/inventory", json=big), "disk_full")
        assert _state(api) == before
        for r in _writes(api):  # small ones may still fit in free pages, or not: never a 500
            assert r.status_code in (200, 201) or _busy(r, "disk_full"), r.text
        with sqlite_db.engine.connect() as conn:  # space again
            conn.exec_driver_sql("PRAGMA max_page_count = 1073741823")
        r = api.put("/v1/hosts/h-big/inventory", json=big)
        assert r.status_code == 200 and not r.json()["refused"], r.text
        assert api.post("/v1/claims", json=_claim_body("vm-after")).status_code == 201


def test_a_file_that_could_not_be_written_serves_again_without_a_restart(sqlite_db: Database) -> None:
    read_only = {"on": False}

    @sa.event.listens_for(sqlite_db.engine, "connect")
    def _opened(dbapi_conn: Any, _record: Any) -> None:
        if read_only["on"]:  # what SQLite falls back to when the file cannot be opened to write
            dbapi_conn.execute("PRAGMA query_only = ON")

    with _api(sqlite_db) as api:
        _seed(api)
        before = _state(api)
        read_only["on"] = True
        sqlite_db.engine.dispose()  # the pool's connection is opened again, read-only
        for r in _writes(api):
            _busy(r, "read_only")
        assert _state(api) == before  # reads are served
        read_only["on"] = False  # the file can be written again
        for n in range(4):
            r = api.post("/v1/claims", json=_claim_body(f"vm-{n}"))
            assert r.status_code == 201, r.text
            assert api.delete(f"/v1/allocations/vm-{n}").status_code == 204


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_deleted_or_replaced_file_refuses_writes(
    sqlite_db: Database, tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "devassign.db"
    with _api(sqlite_db) as api:
        _seed(api)
        assert api.post("/v1/claims", json=_claim_body("vm-before")).status_code == 201
        if how == "deleted":
            for suffix in ("", "-wal", "-shm"):
                path.with_name(path.name + suffix).unlink(missing_ok=True)
        else:  # a copy moved over it: another file at the same path
            shutil.copyfile(path, tmp_path / "copy.db")
            (tmp_path / "copy.db").replace(path)
        with caplog.at_level(logging.ERROR, logger="devassign.store.db"):
            for r in [*_writes(api), api.delete("/v1/allocations/vm-before")]:
                err = _busy(r, "file_gone")
                assert "restore" in err["message"]
        assert sum("deleted or replaced" in m for m in caplog.messages) == 1  # said once
        assert [t["name"] for t in api.get("/v1/resource-types").json()] == [NIC]  # the open file
        sqlite_db.engine.dispose()  # a new connection would open what is at the path now
        _busy(api.get("/v1/resource-types"), "file_gone")


def test_a_new_database_deleted_is_not_made_again_empty(tmp_path: Path) -> None:
    """Deleted before any data reached the main file (it is all in the log): a new connection
    does not create an empty database in its place; the server says the file is gone."""
    path = tmp_path / "devassign.db"
    db = Database(f"sqlite:///{path}", pool_size=1, max_overflow=0, pool_timeout=2)
    with _api(db) as api:
        for suffix in ("", "-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
        db.engine.dispose()
        _busy(api.get("/v1/resource-types"), "file_gone")
        _busy(api.post("/v1/resource-types", json={"name": "X"}), "file_gone")
        assert not path.exists()
    db.close()  # the stop goes on without the file (nothing to checkpoint into)


def test_a_file_that_cannot_be_looked_at_for_a_moment_is_not_gone(
    sqlite_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "devassign.db"
    real = Path.stat
    failures = {"left": 1}

    def flaky(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self == path and failures["left"]:
            failures["left"] -= 1
            raise OSError(5, "Input/output error")  # EIO, once (a network file system's hiccup)
        return real(self, *args, **kwargs)

    with _api(sqlite_db) as api:
        _seed(api)
        monkeypatch.setattr(Path, "stat", flaky)
        for n in range(3):
            assert api.post("/v1/claims", json=_claim_body(f"vm-{n}")).status_code == 201
        assert failures["left"] == 0  # it was looked at, and failed once


def test_the_stop_does_not_wait_long_for_a_reader_of_the_log(tmp_path: Path) -> None:
    """Another process reading (an operator's shell) holds the log: the checkpoint at the stop
    gives up after a short wait, not the statement timeout (here none: a day)."""
    path = tmp_path / "devassign.db"
    db = Database(f"sqlite:///{path}", statement_timeout=0)
    db.upgrade()
    with _api(db) as api:
        _seed(api)
    reader = sqlite3.connect(path)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM devices").fetchone()  # a snapshot the log must keep
    with sqlite3.connect(path) as writer:  # and a commit after it: the checkpoint must wait
        writer.execute("UPDATE resource_types SET description = 'later'")
    stopping = threading.Thread(target=db.close, daemon=True)
    stopping.start()
    stopping.join(timeout=60)
    reader.close()
    assert not stopping.is_alive(), "the stop hung on the checkpoint"
