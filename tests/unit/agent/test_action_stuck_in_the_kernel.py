"""A handler action blocked in the kernel holds neither the agent nor its other devices.

A Python handler's sysfs write (an unbind, a reset) can block in the kernel for good. The
agent gives up on an action after ``[lifecycle] action_timeout``: the action fails (a setup's
device goes to cleaning, a cleanup's is quarantined, never handed out), the other devices'
work goes on, and the stuck device is left alone until its action returns.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any

import httpx
import pytest

from devassign.agent.config import parse_config
from devassign.agent.state import StateFile
from devassign.agent.worker import Agent
from devassign.lifecycle.base import Handler
from devassign.lifecycle.executor import ActionResult, Watchdog
from devassign.lifecycle.host import HostOps
from devassign.lifecycle.policy import LifecyclePolicy
from devassign.lifecycle.registry import load_handler
from tests.unit.agent.test_agent_worker import World, world  # noqa: F401


class Blocking:
    """The real handler, but the chosen action of the chosen device waits on ``gate``."""

    def __init__(self, real: Handler, action: str, address: str) -> None:
        self.real, self.action, self.address = real, action, address
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.calls: list[tuple[str, str]] = []

    def _maybe_block(self, action: str, device: Any) -> None:
        self.calls.append((action, device.address))
        if action == self.action and device.address == self.address:
            self.entered.set()
            self.gate.wait(60)

    def setup(self, device: Any, config: Any, ops: HostOps) -> Any:
        self._maybe_block("setup", device)
        return self.real.setup(device, config, ops)

    def cleanup(self, device: Any, config: Any, ops: HostOps) -> None:
        self._maybe_block("cleanup", device)
        self.real.cleanup(device, config, ops)

    def health(self, device: Any, config: Any, ops: HostOps) -> Any:
        self._maybe_block("health", device)
        return self.real.health(device, config, ops)


def _agent(w: World, blocking: Blocking) -> Agent:
    client = httpx.Client(transport=httpx.MockTransport(w.server.handle))
    state = StateFile(w.config.state_file, durable=False)
    config = replace(w.config, lifecycle=LifecyclePolicy(action_timeout=1))
    agent = Agent(config, w.h.root, HostOps.simulated(w.h.root), client, state=state, pci_ids=None)
    agent._handlers["sriov_vf"] = blocking  # type: ignore[assignment]
    return agent


def test_a_setup_stuck_in_the_kernel_fails_and_the_device_is_quarantined_not_handed_out(
    world: World,  # noqa: F811
) -> None:
    blocking = Blocking(load_handler("sriov_vf"), "setup", world.vfs[0])
    agent = _agent(world, blocking)
    world.server.claim("d0")
    try:
        (done,) = agent.work()
        assert blocking.entered.is_set()
        assert (done.action, done.ok, done.state) == ("setup", False, "cleaning")
        assert "did not return within 1 s" in (done.error or "")
        # The cleanup the server asks for next does not run beside the stuck setup.
        calls = len(blocking.calls)
        (done,) = agent.work()
        assert (done.action, done.ok, done.state) == ("cleanup", False, "quarantined")
        assert "its setup started" in (done.error or "") and "has not returned" in (done.error or "")
        assert len(blocking.calls) == calls  # the handler was not called
        assert agent.watchdog.stuck() == {world.vfs[0]: "setup"}
        # The agent goes on with its other devices.
        world.server.claim("d1")
        (done,) = agent.work()
        assert (done.device_id, done.ok, done.state) == ("d1", True, "assigned")
    finally:
        blocking.gate.set()
    # Once the setup returns, an operator's clear runs the cleanup and the device is clean.
    for t in threading.enumerate():
        if t.name.startswith("devassign setup"):
            t.join(10)
    assert agent.watchdog.stuck() == {}
    world.server.clear("d0")
    done = agent.work()
    assert [(d.device_id, d.action, d.ok, d.state) for d in done] == [("d0", "cleanup", True, "available")]
    assert world.driver(world.vfs[0]) == "iavf"


def test_a_cleanup_stuck_in_the_kernel_quarantines_and_the_agent_goes_on(world: World) -> None:  # noqa: F811
    blocking = Blocking(load_handler("sriov_vf"), "cleanup", world.vfs[0])
    agent = _agent(world, blocking)
    world.server.claim("d0")
    try:
        assert [d.ok for d in agent.work()] == [True]
        world.server.release()
        world.server.claim("d1")
        done = sorted(agent.work(), key=lambda d: d.device_id)
        assert [(d.device_id, d.action, d.ok, d.state) for d in done] == [
            ("d0", "cleanup", False, "quarantined"),
            ("d1", "setup", True, "assigned"),
        ]
    finally:
        blocking.gate.set()


def test_the_watchdog_returns_the_result_of_an_action_in_time() -> None:
    dog = Watchdog(5)
    assert dog.run("a", "health", lambda: ActionResult(True)) == ActionResult(True)
    assert dog.stuck() == {}


@pytest.mark.parametrize("value", [0, -1, True, "30", float("nan"), 86401])
def test_action_timeout_is_checked(value: Any) -> None:
    with pytest.raises(ValueError, match="action_timeout"):
        parse_config({"host": "h", "lifecycle": {"action_timeout": value}}, source="agent.toml")


def test_action_timeout_is_read() -> None:
    config = parse_config({"host": "h", "lifecycle": {"action_timeout": 45}}, source="agent.toml")
    assert config.lifecycle.action_timeout == 45
    assert parse_config({"host": "h"}, source="agent.toml").lifecycle.action_timeout == 120


def test_the_watchdog_ticks_while_an_action_runs() -> None:
    ticks: list[float] = []
    gate = threading.Event()
    dog = Watchdog(5, tick=lambda: ticks.append(1), tick_every=0.02)

    def slow() -> ActionResult:
        gate.wait(0.3)
        return ActionResult(True)

    assert dog.run("a", "setup", slow).ok
    assert len(ticks) >= 2


def test_the_agent_heartbeats_while_a_long_action_runs(world: World) -> None:  # noqa: F811
    blocking = Blocking(load_handler("sriov_vf"), "setup", world.vfs[0])
    agent = _agent(world, blocking)
    agent.watchdog.tick_every = 0.05
    world.server.claim("d0")
    beats = world.server.heartbeats
    agent._next_heartbeat = time.monotonic() + 0.2  # due during the action, not before it
    threading.Timer(0.5, blocking.gate.set).start()
    (done,) = agent.work()
    assert done.ok and done.state == "assigned"  # under its timeout (1 s): it finished
    assert world.server.heartbeats > beats
