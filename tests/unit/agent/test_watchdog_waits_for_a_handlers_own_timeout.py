"""The watchdog does not cut short what the ``command`` and ``mig`` handlers bound themselves.

Those handlers run programs that the host runner kills at the type's ``timeout``; an action of
theirs that takes longer than ``[lifecycle] action_timeout`` but within what its type allows
is not stuck in the kernel. Failing it there would leave its program running on the device
(the setup's device quarantined at its cleanup, which cannot run beside it), so the watchdog
waits as long as the type's own timeout lets the action run.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from devassign.agent.config import parse_config
from devassign.agent.state import StateFile
from devassign.agent.worker import Agent
from devassign.domain import DeviceKind
from devassign.lifecycle.base import LifecycleDevice
from devassign.lifecycle.host import HostOps, RecordingNetlink, RunResult
from devassign.lifecycle.simulated import SimulatedSysfs


class SlowRunner:
    """A program that takes longer than the agent's action_timeout (1 s), within its own."""

    def __init__(self) -> None:
        self.done = threading.Event()

    def run(self, argv: Sequence[str], *, env: Mapping[str, str], timeout: float) -> RunResult:
        threading.Event().wait(2.5)
        self.done.set()
        return RunResult(0)


def _agent(tmp_path: Path, runner: SlowRunner) -> Agent:
    config = parse_config(
        {
            "host": "h",
            "state_file": str(tmp_path / "state.json"),
            "lifecycle": {"action_timeout": 1, "commands": ["/usr/local/libexec/slow"]},
        },
        source="agent.toml",
    )
    (tmp_path / "sys").mkdir()
    ops = HostOps(SimulatedSysfs(tmp_path / "sys"), RecordingNetlink(), runner)
    client = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(503)))
    state = StateFile(tmp_path / "state.json", durable=False)
    return Agent(config, tmp_path / "sys", ops, client, state=state, pci_ids=None)


def test_a_command_within_its_types_timeout_is_not_failed_by_the_watchdog(tmp_path: Path) -> None:
    runner = SlowRunner()
    agent = _agent(tmp_path, runner)
    device = LifecycleDevice(address="static:token/0", kind=DeviceKind.STATIC, type="token", consumer="c")
    config = {"setup": ["/usr/local/libexec/slow"], "timeout": 600}
    result = agent._bounded("setup", device, config, "command")
    assert runner.done.is_set()
    assert result.ok, result.error
    assert agent.watchdog.stuck() == {}


def test_the_watchdog_waits_at_least_what_command_and_mig_actions_may_take() -> None:
    from devassign.lifecycle.executor import own_time_bound

    assert own_time_bound("command", {"timeout": 600}) == 610
    assert own_time_bound("command", {}) == 40  # its default 30 s, and the kill's grace twice
    assert own_time_bound("mig", {}) == 8 * 65 + 5  # up to 8 nvidia-smi runs of 60 s
    assert own_time_bound("pci", {"timeout": 600}) is None  # a write in the kernel: no bound
    assert own_time_bound("command", {"timeout": "600"}) is None  # refused by the handler
