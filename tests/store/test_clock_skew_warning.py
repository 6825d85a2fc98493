"""A replica whose clock is off the database's says so at its start: it judges hosts' liveness
against times other replicas wrote, and one 100 s ahead flapped every host down and up without
a word in its log."""

from __future__ import annotations

import logging

import pytest

from devassign.server import app as server_app
from devassign.server.settings import Settings
from devassign.store import Store
from devassign.store import db as store_db


def test_a_clock_far_off_the_databases_is_logged(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(db_url=store.db.url)
    if store.db.is_sqlite:
        assert server_app._warn_of_clock_skew(store, settings) is None  # one machine, one clock
        return
    in_sync = server_app._warn_of_clock_skew(store, settings)
    assert in_sync is not None and abs(in_sync) < server_app.CLOCK_SKEW_WARN
    assert "clock" not in caplog.text
    real = store_db.time.time
    monkeypatch.setattr(store_db.time, "time", lambda: real() + 100)
    with caplog.at_level(logging.WARNING, logger="devassign.server"):
        skew = server_app._warn_of_clock_skew(store, settings)
    assert skew is not None and 95 < skew < 105
    assert "s ahead of the database's" in caplog.text and "NTP" in caplog.text
