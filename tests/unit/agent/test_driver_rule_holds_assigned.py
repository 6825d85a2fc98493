"""A device a ``driver`` rule takes stays that rule's while the agent holds it on vfio-pci.

Matched by its driver, a VF left the inventory once its setup bound it to vfio-pci: its
allocation's device went missing from every report, and its cleanup was refused as a device
the agent did not report, so every release quarantined it.
"""

from __future__ import annotations

from dataclasses import replace

import httpx
import pytest

from devassign.agent.config import DeviceRule
from devassign.agent.state import StateFile
from devassign.agent.worker import Agent
from devassign.lifecycle.host import HostOps
from tests.unit.agent.test_agent_worker import PF, World, world  # noqa: F401

RULE = DeviceRule("NIC_VF", {"driver": "iavf"}, match_vfs=True)


def _agent(world: World, rule: DeviceRule = RULE) -> Agent:  # noqa: F811
    config = replace(world.config, devices=(rule,))
    client = httpx.Client(transport=httpx.MockTransport(world.server.handle))
    state = StateFile(config.state_file, durable=False)
    return Agent(config, world.h.root, HostOps.simulated(world.h.root), client, state=state, pci_ids=None)


def _reported(agent: Agent) -> dict[str, str | None]:
    return {d.address: d.driver for d in agent._inventory()}


def test_an_assigned_vf_stays_reported_and_its_cleanup_runs(world: World) -> None:  # noqa: F811
    agent = _agent(world)
    assert set(_reported(agent)) == set(world.vfs)
    world.server.claim("d0")
    assert [(d.action, d.ok) for d in agent.work()] == [("setup", True)]
    assert world.driver(world.vfs[0]) == "vfio-pci"
    # still offered under its rule, and the report says where it is bound now
    assert _reported(agent) == {world.vfs[0]: "vfio-pci", world.vfs[1]: "iavf"}
    world.server.release()
    done = agent.work()
    assert [(d.action, d.ok, d.state) for d in done] == [("cleanup", True, "available")]
    assert world.driver(world.vfs[0]) == "iavf"
    assert agent.state.state.host_drivers == {}


def test_a_device_given_back_and_then_bound_by_hand_is_no_longer_the_rules(world: World) -> None:  # noqa: F811
    agent = _agent(world)
    world.server.claim("d0")
    agent.work()
    world.server.release()
    agent.work()
    world.h.bind(world.vfs[0], "vfio-pci")  # the operator's own use, after the cleanup
    assert set(_reported(agent)) == {world.vfs[1]}


def test_a_state_file_of_an_older_agent_names_no_address(world: World) -> None:  # noqa: F811
    agent = _agent(world)
    world.server.claim("d0")
    agent.work()
    st = agent.state.state
    for saved in st.host_drivers.values():
        saved.pop("address")
    assert set(_reported(agent)) == set(world.vfs)  # the held item's address


def test_a_driver_that_only_vfs_have_takes_the_vfs_without_match_vfs(world: World) -> None:  # noqa: F811
    """``driver = "iavf"`` can only mean VFs (their PF runs i40e): it takes them, also while
    assigned; a driver their PF has too, or a glob, still needs ``match_vfs``."""
    world.h.bind(PF, "i40e")
    for match in ({"driver": "i40e"}, {"driver": "iav*"}):
        assert _reported(_agent(world, DeviceRule("NIC_VF", match))) == {}
    agent = _agent(world, DeviceRule("NIC_VF", {"driver": "iavf"}))
    assert set(_reported(agent)) == set(world.vfs)
    world.server.claim("d0")
    agent.work()
    assert set(_reported(agent)) == set(world.vfs)


@pytest.mark.parametrize(
    "match",
    [
        {"product_id": "154c"},
        {"vendor_id": "8086", "kind": "sriov_vf"},
        {"class": "02", "match_vfs": True},
        {"address": "0000:5e:1*", "match_vfs": True},
        {"parent": "0000:5e:00.0"},
        {"driver": "iav*", "match_vfs": True},
        {"driver": "iavf"},
    ],
)
def test_every_kind_of_rule_keeps_its_vf_through_a_setup_and_a_cleanup(
    world: World,  # noqa: F811
    match: dict[str, object],
) -> None:
    world.h.bind(PF, "i40e")
    keys = {k: str(v) for k, v in match.items() if k != "match_vfs"}
    agent = _agent(world, DeviceRule("NIC_VF", keys, match_vfs=match.get("match_vfs")))  # type: ignore[arg-type]
    agent.report()
    assert set(_reported(agent)) == set(world.vfs)
    world.server.claim("d0")
    assert [(d.action, d.ok) for d in agent.work()] == [("setup", True)]
    agent.report()
    assert set(_reported(agent)) == set(world.vfs)
    world.server.release()
    assert [(d.action, d.ok, d.state) for d in agent.work()] == [("cleanup", True, "available")]
    assert set(_reported(agent)) == set(world.vfs)


def test_agent_discover_beside_the_agent_shows_a_held_device_as_its_rules(world: World) -> None:  # noqa: F811
    """``agent discover`` reads the running agent's state file (without taking or changing it):
    a VF the agent holds on vfio-pci shows the type its driver rule gives it."""
    import json

    from typer.testing import CliRunner

    from devassign.agent.cli import app

    agent = _agent(world)
    world.server.claim("d0")
    agent.work()
    before = world.config.state_file.read_bytes()
    conf = world.config.state_file.parent / "agent.toml"
    conf.write_text(
        f'host = "w1"\nstate_file = "{world.config.state_file}"\n'
        '[[device]]\ntype = "NIC_VF"\nmatch = { driver = "iavf" }\nmatch_vfs = true\n'
    )
    args = ["discover", "-c", str(conf), "--sysfs-root", str(world.h.root), "-f", "json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    shown = json.loads(res.stdout)
    types = {d["address"]: (d["type"], d["driver"]) for d in shown if d["address"] in world.vfs}
    assert types == {world.vfs[0]: ("NIC_VF", "vfio-pci"), world.vfs[1]: ("NIC_VF", "iavf")}
    assert world.config.state_file.read_bytes() == before


def test_the_saved_driver_stands_in_only_while_the_device_is_on_vfio_or_unbound() -> None:
    """Found on another driver than vfio-pci (an operator's rebind, another card at the
    address), the device is matched on that driver, not on the one saved before its setup."""
    from devassign.agent.inventory import apply_rules
    from devassign.agent.model import FoundDevice
    from devassign.domain import DeviceKind

    address = "0000:5e:10.0"
    typed: dict[str | None, str | None] = {}
    for driver in ("vfio-pci", None, "ixgbevf"):
        dev = FoundDevice(address, DeviceKind.SRIOV_VF, "8086", "154c", driver=driver, parent=PF)
        dev.pf_driver = "i40e"
        apply_rules([dev], (RULE,), held_drivers={address: "iavf"})
        typed[driver] = dev.type
    assert typed == {"vfio-pci": "NIC_VF", None: "NIC_VF", "ixgbevf": None}
