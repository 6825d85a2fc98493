"""A server that refuses only some requests (its database refuses writes, reads are answered)
ends and starts an outage at every agent cycle: the agent logs it once, not a warning and an
info line every few seconds; an outage well after the last one is logged again."""

from __future__ import annotations

import logging

import pytest

from devassign.agent.reporter import Outage, ServerUnavailable


def test_a_flapping_server_is_logged_once_and_a_later_outage_again(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    outage = Outage(lambda: now[0])
    with caplog.at_level(logging.INFO, logger="devassign.agent.reporter"):
        for _ in range(20):  # a write refused, then a read answered, every 5 s
            outage.failed(ServerUnavailable("PUT inventory: 503"))
            now[0] += 1
            outage.ended()
            now[0] += 4
        assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.INFO]
        now[0] += Outage.QUIET_S
        outage.failed(ServerUnavailable("PUT inventory: 503"))
        outage.ended()
    assert [r.levelno for r in caplog.records] == [
        logging.WARNING,
        logging.INFO,
        logging.WARNING,
        logging.INFO,
    ]
