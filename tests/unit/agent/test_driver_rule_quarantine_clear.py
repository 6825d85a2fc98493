"""A VF a ``driver`` rule takes, quarantined after a failed cleanup (still on vfio-pci), then
cleared by the operator: the cleanup after the clear forgot the driver the VF had before its
setup before it looked at the host again, so the VF, on vfio-pci, was no longer the rule's;
that cleanup was refused as a device the agent did not report, and every clear quarantined it
again."""

from __future__ import annotations

from devassign.lifecycle.simulated import SimulatedSysfs
from tests.unit.agent.test_agent_worker import World, world  # noqa: F401
from tests.unit.agent.test_driver_rule_holds_assigned import _agent


def test_a_cleared_quarantined_vf_of_a_driver_rule_is_cleaned(world: World) -> None:  # noqa: F811
    agent = _agent(world)
    world.server.claim("d0")
    assert [(d.action, d.ok) for d in agent.work()] == [("setup", True)]
    world.server.release()
    sysfs = agent.ops.sysfs
    assert isinstance(sysfs, SimulatedSysfs)
    sysfs.fail(f"bus/pci/devices/{world.vfs[0]}/reset")
    assert [(d.action, d.ok, d.state) for d in agent.work()] == [("cleanup", False, "quarantined")]
    assert world.driver(world.vfs[0]) == "vfio-pci"

    sysfs.failures.clear()
    world.server.clear("d0")
    done = agent.work()
    assert [(d.action, d.ok, d.state) for d in done] == [("cleanup", True, "available")], done[0].error
    assert world.driver(world.vfs[0]) == "iavf"
