"""The sweeper says in one line that it skipped a pass while the database is busy (SQLite's
write lock held, a PostgreSQL failover): an ERROR with a traceback each pass read as a bug."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from devassign.server.app import _sweeper


class _Store:
    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    def sweep(self) -> None:
        self.calls += 1
        raise self.error


def _run(error: Exception) -> int:
    store = _Store(error)
    app: Any = SimpleNamespace(
        state=SimpleNamespace(store=store, settings=SimpleNamespace(sweep_interval=0.01))
    )

    async def briefly() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(_sweeper(app), 0.3)

    asyncio.run(briefly())
    return store.calls


def test_a_busy_database_is_a_warning_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    locked = OperationalError("UPDATE hosts ...", {}, sqlite3.OperationalError("database is locked"))
    with caplog.at_level(logging.WARNING, logger="devassign"):
        assert _run(locked) >= 2  # it goes on
    records = [r for r in caplog.records if "sweep" in r.getMessage()]
    assert records and all(r.levelno == logging.WARNING and r.exc_info is None for r in records), records
    assert "write lock" in records[0].getMessage()


def test_anything_else_is_an_error_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="devassign"):
        assert _run(ValueError("a bug")) >= 2
    records = [r for r in caplog.records if "sweep" in r.getMessage()]
    assert records and all(r.levelno == logging.ERROR and r.exc_info for r in records), records
