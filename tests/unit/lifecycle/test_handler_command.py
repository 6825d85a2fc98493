"""The command handler with a recording runner, and the real runner on tiny commands."""

from __future__ import annotations

import json
import sys

import pytest

from devassign.domain import DeviceKind
from devassign.lifecycle.base import HandlerError, LifecycleDevice
from devassign.lifecycle.handlers.command import CommandHandler
from devassign.lifecycle.handlers.noop import NoopHandler
from devassign.lifecycle.host import RunResult, SubprocessRunner
from tests.unit.lifecycle.support import CONSUMER, Machine, device

CONFIG = {"setup": ["/opt/fpga/load", "--slot", "0"], "cleanup": ["/opt/fpga/wipe"], "timeout": 5}


def card() -> LifecycleDevice:
    return device("fpga-0", DeviceKind.STATIC, type="FPGA", attributes={"slot": 0}, params={"image": "a"})


def test_setup_runs_the_argv_with_the_device_in_the_environment(machine: Machine) -> None:
    CommandHandler().setup(card(), CONFIG, machine.ops)
    (call,) = machine.runner.calls
    assert call.argv == ["/opt/fpga/load", "--slot", "0"]
    assert call.timeout == 5.0
    assert call.env["DEVASSIGN_ACTION"] == "setup"
    assert call.env["DEVASSIGN_ADDRESS"] == "fpga-0"
    assert call.env["DEVASSIGN_TYPE"] == "FPGA"
    assert call.env["DEVASSIGN_CONSUMER"] == CONSUMER
    assert json.loads(call.env["DEVASSIGN_ATTRIBUTES"]) == {"slot": 0}
    assert json.loads(call.env["DEVASSIGN_PARAMS"]) == {"image": "a"}


def test_a_failing_command_is_an_error_with_the_stderr_tail(machine: Machine) -> None:
    machine.runner.respond = lambda argv: RunResult(3, stderr="x" * 5000 + "wipe failed\n")
    with pytest.raises(HandlerError, match=r"cleanup command /opt/fpga/wipe exited 3: x+wipe failed$"):
        CommandHandler().cleanup(card(), CONFIG, machine.ops)


def test_a_timeout_is_an_error(machine: Machine) -> None:
    machine.runner.respond = lambda argv: RunResult(-9, timed_out=True)
    with pytest.raises(HandlerError, match="timed out after 5 s"):
        CommandHandler().setup(card(), CONFIG, machine.ops)


def test_a_missing_action_has_nothing_to_do_and_health_reports(machine: Machine) -> None:
    assert CommandHandler().health(card(), CONFIG, machine.ops).ok
    machine.runner.respond = lambda argv: RunResult(1, stderr="fan stopped")
    result = CommandHandler().health(card(), {"health": ["check"]}, machine.ops)
    assert not result.ok and "fan stopped" in (result.reason or "")
    assert [c.argv for c in machine.runner.calls] == [["check"]]


@pytest.mark.parametrize(
    "config",
    [{"setup": "load --all"}, {"setup": []}, {"setup": ["ok", 3]}, {"setup": ["x"], "timeout": 0}],
)
def test_a_bad_config_is_refused(machine: Machine, config: dict[str, object]) -> None:
    with pytest.raises(HandlerError, match="type config"):
        CommandHandler().setup(card(), config, machine.ops)
    assert machine.runner.calls == []


def test_the_real_runner_reports_exit_status_and_timeout() -> None:
    runner = SubprocessRunner()
    code = "import os,sys; sys.stderr.write(os.environ['DEVASSIGN_X']); sys.exit(4)"
    done = runner.run([sys.executable, "-c", code], env={"DEVASSIGN_X": "seen"}, timeout=30)
    assert (done.returncode, done.stderr, done.timed_out) == (4, "seen", False)
    slow = runner.run([sys.executable, "-c", "import time; time.sleep(30)"], env={}, timeout=0.3)
    assert slow.timed_out
    missing = runner.run(["/nonexistent/devassign-test"], env={}, timeout=5)
    assert missing.returncode == 127


def test_noop_does_nothing(machine: Machine) -> None:
    assert NoopHandler().setup(card(), {}, machine.ops) == {}
    NoopHandler().cleanup(card(), {}, machine.ops)
    assert NoopHandler().health(card(), {}, machine.ops).ok
    assert machine.sysfs.writes == [] and machine.runner.calls == []
