"""Clocks: an agent's clock that is far off or jumps causes no false host-down and no wrong
expiry, because the server judges liveness and expiry by its own clock alone, and the agent
measures its intervals and backoff on a monotonic clock (and sends no timestamps).

The clocks are injected: the server's store reads a clock the test moves, the agent's
monotonic clock is a number the test skews and makes jump by hours or days. Nothing waits
real minutes; the agent's sleeps move the server's clock and let the server sweep.
"""

from __future__ import annotations

import email.utils
import json
import random
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from devassign.agent.config import AgentConfig
from devassign.agent.reporter import Reporter
from devassign.agent.worker import Agent
from devassign.lifecycle.host import HostOps
from devassign.store import Store
from devassign.testing.sysfs import host
from tests.conftest import Clock
from tests.reliability.test_agent_outage import HOST, SERVER, FakeTime, World, make_world, run_until

DAY = 86_400.0
# Anything in a request that looks like a point in time: ISO 8601, or seconds since 1970 now-ish.
ISO_TIME = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d")


@pytest.fixture
def world(store: Store, clock: Clock, tmp_path: Path) -> Iterator[World]:
    yield from make_world(store, clock, tmp_path, work_interval=5.0)


def test_an_agent_clock_jumping_back_and_forth_causes_no_false_host_down(world: World) -> None:
    """The agent's clock starts days off the server's and jumps back two hours, forward five,
    back a day: heartbeats and reports keep coming at the server's pace, the host never goes
    down, and a claim made meanwhile is set up, never expired."""
    w = world
    w.time.mono = -3 * DAY  # any origin: only differences count
    agent = w.agent()
    run_until(agent, lambda: w.host_status() == "up", "the first report")
    start = w.time.server_seconds()
    jumps = {60.0: -2 * 3600.0, 200.0: 5 * 3600.0, 320.0: -DAY, 450.0: -1.0, 500.0: 30 * DAY}
    device: dict[str, str] | None = None
    for _ in range(2000):
        elapsed = w.time.server_seconds() - start
        if elapsed >= 660:
            break
        for at in [at for at in jumps if at <= elapsed]:
            w.time.mono += jumps.pop(at)
        if device is None and elapsed >= 100:
            device = w.claim("vm")
        agent.run(iterations=1)
        assert w.host_status() == "up", f"host down {elapsed:.0f} s in (server time), jumps left {jumps}"
    else:
        raise AssertionError("the loop never reached 11 minutes of server time")
    assert not jumps, "every jump happened"
    assert not w.events("host_down")
    assert device is not None and w.device(device["id"])["state"] == "assigned"
    assert w.allocation("vm")["state"] == "assigned"
    assert not w.events("allocation_released") and not w.events("allocation_expired")


def test_liveness_and_expiry_are_judged_by_the_server_clock_only(world: World) -> None:
    """Whatever the agent's clock says, the server records when *it* heard the agent, marks the
    host down exactly ``down_after`` of its own seconds later, and expires an unconfirmed
    reservation exactly ``reservation_ttl`` of its own seconds after the claim. The agent's
    requests carry no time at all."""
    w = world
    w.time.mono = 10 * DAY
    agent = w.agent()
    run_until(agent, lambda: w.host_status() == "up", "the first report")
    for jump in (DAY, -7 * DAY, 3600.0):  # the agent's clock jumps between its steps
        w.time.mono += jump
        agent.run(iterations=4)
    assert agent.reporter.heartbeat()
    heard = w.time.server.now
    seen = datetime.fromisoformat(w.api.get(f"/v1/hosts/{HOST}").json()["last_seen_at"])
    assert seen == heard, "last_seen_at is the server's time of the last contact"

    # The agent falls silent; the claim waits for a setup that never comes.
    d = w.claim("vm")
    claimed = w.time.server.now
    down_after = w.store.down_after.total_seconds()
    ttl = w.store.reservation_ttl.total_seconds()
    w.time.server.now = heard + timedelta(seconds=down_after - 1)
    w.store.sweep()
    assert w.host_status() == "up" and not w.events("host_down")
    w.time.server.now = heard + timedelta(seconds=down_after + 1)
    w.store.sweep()
    assert w.host_status() == "down" and len(w.events("host_down")) == 1
    w.time.server.now = claimed + timedelta(seconds=ttl - 1)
    w.store.sweep()
    assert w.device(d["id"])["state"] == "reserved"
    w.time.server.now = claimed + timedelta(seconds=ttl + 1)
    w.store.sweep()
    assert w.device(d["id"])["state"] == "cleaning", "expired by the server's clock"

    # Nothing the agent sent says what time it is.
    for _, _, body in w.net.delivered:
        assert not ISO_TIME.search(json.dumps(body)), body


def test_the_agent_keeps_time_on_a_monotonic_clock(tmp_path: Path) -> None:
    h = host(tmp_path)
    config = AgentConfig(host=HOST, server=SERVER, state_file=tmp_path / "state.json")
    agent = Agent(config, h.root, HostOps.simulated(h.root), httpx.Client(), pci_ids=None)
    assert agent.clock is time.monotonic
    assert agent.reporter.clock is time.monotonic and agent.reporter.outage.clock is time.monotonic
    reporter = Reporter(config, lambda: [], httpx.Client())
    assert reporter.clock is time.monotonic


class _NoStore:
    def sweep(self) -> list[str]:
        return []


def test_a_retry_after_date_is_measured_against_the_servers_date(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Retry-After`` as an HTTP date is compared with the answer's own ``Date`` (both the
    server's clock), never with this host's wall clock, which is hours off here."""
    server_now = datetime(2015, 10, 21, 7, 28, tzinfo=UTC)
    skewed = time.time() + 5 * 3600
    monkeypatch.setattr(time, "time", lambda: skewed)
    busy = httpx.Response(
        503,
        headers={
            "Date": email.utils.format_datetime(server_now, usegmt=True),
            "Retry-After": email.utils.format_datetime(server_now + timedelta(seconds=20), usegmt=True),
        },
        text="busy",
    )
    answers = [busy]

    def serve(request: httpx.Request) -> httpx.Response:
        if answers:
            return answers.pop()
        gen = json.loads(request.content)["generation"]
        lists = {k: [] for k in ("added", "updated", "removed", "missing", "refused", "warnings")}
        return httpx.Response(200, json={"host": HOST, "generation": gen, "accepted": 0, **lists})

    t = FakeTime(Clock(), _NoStore())  # type: ignore[arg-type]
    config = AgentConfig(host=HOST, server=SERVER, state_file=tmp_path / "state.json")
    reporter = Reporter(
        config,
        lambda: [],
        httpx.Client(transport=httpx.MockTransport(serve)),
        clock=t.agent,
        sleep=t.sleep,
        rng=random.Random(3),
    )
    assert reporter.run(once=True) is not None
    assert t.slept == [20.0]
