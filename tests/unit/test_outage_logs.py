"""Through a database outage the server's side paths say so in few lines: the Cyborg bindings
loop once when it starts skipping and once when it resolves again (not a warning a second per
process), the metrics of an agent's work results one line without a traceback (the results'
own write answers the 503)."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from devassign.errors import DATABASE_BUSY, DevassignError
from devassign.schemas import WorkResult
from devassign.server.cyborg import _loop
from devassign.server.metrics import work_pending

BUSY = DevassignError(DATABASE_BUSY, "the database cannot be reached", reason="unreachable")


class _Done(BaseException):
    """Ends the loop (which outlives every Exception) after the steps the test wants."""


class _Sender:
    def __init__(self, failures: int, steps: int) -> None:
        self.delay = 0.001
        self.failures = failures
        self.last = steps
        self.steps = 0

    def step(self) -> None:
        self.steps += 1
        if self.steps > self.last:
            raise _Done
        if self.steps <= self.failures:
            raise BUSY


def test_the_bindings_loop_logs_an_outage_once_and_its_end_once(caplog: pytest.LogCaptureFixture) -> None:
    s = _Sender(failures=20, steps=25)
    app: Any = SimpleNamespace(state=SimpleNamespace(cyborg_sender=s))
    with caplog.at_level(logging.INFO, logger="devassign.server.cyborg"), pytest.raises(_Done):
        asyncio.run(asyncio.wait_for(_loop(app, 0.001), 60))
    assert s.steps == 26  # 20 skipped, 5 resolved, then ended by the test
    lines = [r.getMessage() for r in caplog.records]
    assert sum("skipped" in m and "will retry" in m for m in lines) == 1, lines
    assert sum("again after 20 skipped" in m for m in lines) == 1, lines


def test_work_result_metrics_log_an_outage_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    def reading(_fn: Any) -> Any:
        raise BUSY

    store: Any = SimpleNamespace(db=SimpleNamespace(reading=reading), clock=lambda: 0)
    result = WorkResult.model_validate({"device_id": "1", "action": "cleanup", "ok": True})
    with caplog.at_level(logging.WARNING, logger="devassign.server.metrics"):
        assert work_pending(store, "h1", [result]) == {}
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and record.exc_info is None, record
