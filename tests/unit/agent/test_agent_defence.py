"""The agent as the last line of defence: whatever the server sends, a bad value does nothing.

Against the fake server of test_agent_worker and a simulated host: work for devices the
agent never reported, handlers and commands its configuration does not allow, request params
posing as facts, poisoned facts, and the cleanup after an operator's clear.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from devassign.agent.config import ResourceDecl, parse_config
from devassign.agent.state import StateFile
from devassign.agent.worker import Agent
from devassign.lifecycle.host import HostOps, RecordingRunner
from devassign.lifecycle.policy import LifecyclePolicy
from tests.unit.agent.test_agent_worker import VM, FakeDevice, World, world  # noqa: F401

ESCAPE = "../../../../tmp/x"


def _outside(w: World) -> Path:
    """Where ``bus/pci/drivers/../../../../tmp/x`` resolves: a folder outside the sysfs root."""
    target = (w.sysfs.root / "bus/pci/drivers" / ESCAPE).resolve()
    target.mkdir(parents=True)
    (target / "bind").write_text("")
    return target


def _agent(w: World, **config: Any) -> tuple[Agent, RecordingRunner]:
    runner = RecordingRunner()
    ops = HostOps(w.sysfs, w.netlink, runner)
    client = httpx.Client(transport=httpx.MockTransport(w.server.handle))
    state = StateFile(w.config.state_file, durable=False)
    agent = Agent(replace(w.config, **config), w.h.root, ops, client, state=state, pci_ids=None)
    return agent, runner


def test_params_posing_as_facts_change_nothing(world: World) -> None:  # noqa: F811
    outside = _outside(world)
    world.server.params = {"original_driver": ESCAPE, "mdev_uuid": "x", "vlan": 10}
    world.server.claim("d0")
    agent = world.make()
    agent.work()
    (posted,) = world.server.posted
    assert posted["ok"] and posted["facts"]["original_driver"] == "iavf"
    world.server.release()
    assert [d.ok for d in agent.work()] == [True]
    assert world.driver(world.vfs[0]) == "iavf"
    assert (outside / "bind").read_text() == ""


def test_the_journal_wins_over_the_servers_facts(world: World) -> None:  # noqa: F811
    outside = _outside(world)
    world.server.claim("d0")
    agent = world.make()
    agent.work()
    world.server.release()
    world.server.devices["d0"].facts = {"original_driver": ESCAPE}  # poisoned on the server
    assert [d.ok for d in agent.work()] == [True]
    assert world.driver(world.vfs[0]) == "iavf"
    assert (outside / "bind").read_text() == ""


def test_a_poisoned_fact_quarantines_and_a_clear_cleans_from_the_host(world: World) -> None:  # noqa: F811
    outside = _outside(world)
    world.server.claim("d0")
    agent = world.make()
    agent.work()
    world.server.release()
    # Journaled by an older agent that took a request's params for facts.
    agent.state.state.facts["d0"] = {"original_driver": ESCAPE}
    agent.state.save()
    (done,) = agent.work()
    assert not done.ok and done.state == "quarantined"
    assert "'../../../../tmp/x' is not a driver name" in (done.error or "")
    assert (outside / "bind").read_text() == ""
    assert world.driver(world.vfs[0]) == "vfio-pci", "nothing was undone half-way"

    world.server.clear("d0")
    (again,) = agent.work()
    assert again.ok and again.state == "available", again.error
    assert world.driver(world.vfs[0]) == "iavf", "the kernel's probe gave it back to its driver"
    assert world.sysfs.read(f"bus/pci/devices/{world.vfs[0]}/driver_override") == "(null)"
    state = StateFile(world.config.state_file).state
    assert "d0" not in state.facts and "d0" not in state.host_drivers
    assert (outside / "bind").read_text() == ""


def test_work_for_a_device_the_agent_did_not_report_is_refused(world: World) -> None:  # noqa: F811
    world.server.devices["x"] = FakeDevice("x", "0000:5e:10.7")  # not on this host
    world.server.claim("x")
    agent = world.make()
    (setup,) = agent.work()
    assert not setup.ok and "not a device this agent discovered and reported on host w1" in (
        setup.error or ""
    )
    assert setup.state == "cleaning", "a refused setup releases the allocation"
    (cleanup,) = agent.work()
    assert not cleanup.ok and cleanup.state == "quarantined"
    assert world.sysfs.writes == [] and world.netlink.calls == []
    assert [r["error"].startswith("refused by the agent: ") for r in world.server.posted] == [True, True]


def test_a_device_of_another_kind_is_refused(world: World) -> None:  # noqa: F811
    world.server.devices["d0"].kind = "pci"
    world.server.claim("d0")
    (done,) = world.make().work()
    assert not done.ok and "is a sriov_vf on host w1, not a pci" in (done.error or "")
    assert world.sysfs.writes == []


def _fpga(w: World, argv: list[str]) -> None:
    w.server.devices["f"] = FakeDevice(
        "f", "static:FPGA/0", kind="static", driver="", handler="command", type="FPGA", config={"setup": argv}
    )
    w.server.claim("f")


def test_the_command_handler_is_not_run_unless_the_host_allows_it(world: World) -> None:  # noqa: F811
    _fpga(world, ["/bin/sh", "-c", "id > /tmp/pwned"])
    agent, runner = _agent(world, resources=(ResourceDecl("FPGA"),))
    (done,) = agent.work()
    assert not done.ok and runner.calls == []
    assert "handler 'command' is not allowed on host w1: add it to [lifecycle] handlers" in (done.error or "")


def test_only_allowed_commands_run(world: World) -> None:  # noqa: F811
    policy = LifecyclePolicy(frozenset({"command"}), ("/usr/local/libexec/devassign/*",))
    _fpga(world, ["/usr/local/libexec/devassign/../../../../bin/sh", "-c", "id"])
    agent, runner = _agent(world, resources=(ResourceDecl("FPGA"),), lifecycle=policy)
    (done,) = agent.work()
    assert not done.ok and runner.calls == []
    assert "is not allowed on host w1: add it, or a glob matching it, to [lifecycle] commands" in (
        done.error or ""
    )
    world.server.release()
    agent.work()
    _fpga(world, ["/usr/local/libexec/devassign/fpga-load", "--slot", "0"])
    (ok,) = agent.work()
    assert ok.ok and [c.argv for c in runner.calls] == [
        ["/usr/local/libexec/devassign/fpga-load", "--slot", "0"]
    ]


def test_a_health_check_outside_the_allow_list_is_not_run(world: World) -> None:  # noqa: F811
    policy = LifecyclePolicy(frozenset({"command"}), ("/opt/fpga/*",))
    world.server.devices["f"] = FakeDevice(
        "f", "static:FPGA/0", kind="static", driver="", handler="command", type="FPGA",
        config={"setup": ["/opt/fpga/load"], "health": ["/opt/fpga/check"]},
    )  # fmt: skip
    world.server.claim("f")
    agent, runner = _agent(world, resources=(ResourceDecl("FPGA"),), lifecycle=policy)
    assert [d.ok for d in agent.work()] == [True]
    assert agent.check_health() == {}
    narrower, _ = _agent(world, resources=(ResourceDecl("FPGA"),), lifecycle=LifecyclePolicy())
    unhealthy = narrower.check_health()
    assert "[lifecycle] handlers" in unhealthy["static:FPGA/0"]
    assert [c.argv[0] for c in runner.calls] == ["/opt/fpga/load", "/opt/fpga/check"]


def test_the_lifecycle_table_of_agent_toml(tmp_path: Path) -> None:
    default = parse_config({"host": "h"})
    assert default.lifecycle.handlers == {"pci", "sriov_vf", "mdev", "usb", "noop", "nvidia_vgpu", "mig"}
    assert default.lifecycle.commands == ()
    cfg = parse_config(
        {"host": "h", "lifecycle": {"handlers": ["pci", "command"], "commands": ["/opt/x/*", "/usr/bin/y"]}}
    )
    assert cfg.lifecycle.handlers == {"pci", "command"} and cfg.lifecycle.commands == (
        "/opt/x/*",
        "/usr/bin/y",
    )
    for bad, message in [
        ({"commands": ["bin/x"]}, "not an absolute path"),
        ({"commands": ["/opt/../bin/*"]}, "not a normal path"),
        ({"handlers": "pci"}, "handlers must be a list"),
        ({"handlers": ["a/b"]}, "not a handler name"),
        ({"allow": []}, "unknown key 'allow'"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_config({"host": "h", "lifecycle": bad}, source="agent.toml")


def test_facts_too_big_to_post_fail_the_setup_but_stay_in_the_journal(
    world: World,  # noqa: F811
) -> None:
    class Chatty:
        def setup(self, *a: Any) -> dict[str, Any]:
            return {"blob": "x" * 5000}

        def cleanup(self, *a: Any) -> None:
            return None

        def health(self, *a: Any) -> Any:
            raise AssertionError

    world.server.devices["d0"].handler = "noop"
    world.server.claim("d0")
    agent = world.make()
    agent._handlers["noop"] = Chatty()  # type: ignore[assignment]
    (done,) = agent.work()
    assert not done.ok and "facts cannot be posted: facts: at most 4096 bytes" in (done.error or "")
    assert world.server.posted[0]["facts"] == {}
    assert json.dumps(StateFile(world.config.state_file).state.facts["d0"]).count("x") >= 5000


def test_a_cleanup_runs_the_config_that_set_the_device_up(world: World) -> None:  # noqa: F811
    """The type's config changed while its device was held (its cleanup command dropped, or
    replaced by another allowed one): the device is cleaned as it was set up, not called clean
    without its cleanup."""
    policy = LifecyclePolicy(frozenset({"command"}), ("/opt/fpga/*",))
    world.server.devices["f"] = FakeDevice(
        "f", "static:FPGA/0", kind="static", driver="", handler="command", type="FPGA",
        config={"setup": ["/opt/fpga/load"], "cleanup": ["/opt/fpga/wipe"]},
    )  # fmt: skip
    world.server.claim("f")
    agent, runner = _agent(world, resources=(ResourceDecl("FPGA"),), lifecycle=policy)
    assert [d.ok for d in agent.work()] == [True]
    for config in (
        {"setup": ["/opt/fpga/load"]},
        {"setup": ["/opt/fpga/load"], "cleanup": ["/opt/fpga/other"]},
    ):
        world.server.devices["f"].config = config  # the type updated while held
        world.server.release()
        assert [d.ok for d in agent.work()] == [True]
        assert runner.calls[-1].argv == ["/opt/fpga/wipe"], [c.argv for c in runner.calls]
        world.server.claim("f")
        world.server.devices["f"].config = {"setup": ["/opt/fpga/load"], "cleanup": ["/opt/fpga/wipe"]}
        assert [d.ok for d in agent.work()] == [True]


def test_a_setup_under_a_type_the_device_no_longer_has_here_is_refused(world: World) -> None:  # noqa: F811
    """The server still names the type the device had before its rule changed (it hears the
    change at the next report): the tenant must not get the new type's device."""
    world.server.devices["d0"].type = "NIC_VF_OLD"
    world.server.claim("d0")
    (done,) = world.make().work()
    assert not done.ok and "is a NIC_VF on host w1 now, not a NIC_VF_OLD (its rule changed)" in (
        done.error or ""
    )
    assert world.sysfs.writes == []
