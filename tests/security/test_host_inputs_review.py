"""Review: values the agent did not produce itself (the server's work items, the host's own
names) reaching the host through the agent and its handlers.

Each test fails on the code it was written against and passes once the problem it names is
fixed. Every host is a SYNTHETIC tree under ``tmp_path`` driven through the simulated kernel;
the servers are the fakes of ``tests/unit/agent/test_agent_worker.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from devassign.agent.config import AgentConfig, DeviceRule, parse_config
from devassign.agent.state import StateFile
from devassign.agent.worker import Agent
from devassign.domain import mdev_address
from devassign.lifecycle.host import HostOps, RecordingNetlink, RecordingRunner
from devassign.lifecycle.simulated import SimulatedSysfs
from devassign.testing.sysfs import host
from tests.unit.agent.test_agent_host_use import NIC, ROUTE_HEADER, V4_DEFAULT, nic, proc
from tests.unit.agent.test_agent_worker import HOST, FakeDevice, FakeServer, World, world  # noqa: F401
from tests.unit.agent.test_worker_hostile_server import LyingDevice

PF = "0000:5e:00.0"
GPU = "0000:3b:00.0"
NOT_UTF8_IFNAME = "\udce9th0"  # b"\xe9th0" as os.listdir names it: an interface renamed so


def _agent(
    tmp_path: Path, root: Path, ops: HostOps, server: FakeServer, rules: list[dict[str, Any]]
) -> Agent:
    config = parse_config(
        {"host": HOST, "server": "http://server", "state_file": str(tmp_path / "state.json"), "device": rules}
    )
    client = httpx.Client(transport=httpx.MockTransport(server.handle))
    return Agent(config, root, ops, client, state=StateFile(config.state_file, durable=False), pci_ids=None)


# ----------------------------------------------------------------- work items keyed by id


def test_a_refused_setup_does_not_change_how_a_held_device_is_cleaned(world: World) -> None:  # noqa: F811
    """A setup the agent refuses (an address it never reported) under the id of a device it
    holds must change nothing: today ``_prepared`` runs before the refusal and records the
    refused item's handler (``noop``) as the one that set the held VF up, so its cleanup
    leaves it on vfio-pci with the tenant's MAC and VLAN and calls it clean."""
    world.server.claim("d0")
    agent = world.make()
    (setup,) = agent.work()
    assert setup.ok and world.driver(world.vfs[0]) == "vfio-pci"
    d0 = world.server.devices["d0"]
    real = d0.address
    d0.address, d0.handler, d0.state = "0000:5e:10.7", "noop", "reserved"  # not on this host
    (refused,) = agent.work()
    assert not refused.ok and "not a device this agent discovered" in (refused.error or "")
    d0.address, d0.state, d0.consumer = real, "cleaning", None
    agent.work()
    vf = world.netlink.vfs[("ens1f0", 0)]
    assert (vf.mac, vf.vlan) == ("00:00:00:00:00:00", 0), vf
    assert world.driver(world.vfs[0]) == "iavf"


def test_a_second_setup_of_a_held_device_does_not_replace_the_handler_that_set_it_up(
    world: World,  # noqa: F811
) -> None:
    """A setup for a device the agent holds set up (a server that lost the assignment, or one
    that lies) overwrites ``set_up_by``; the cleanup then runs the second item's ``noop``."""
    world.server.claim("d0")
    agent = world.make()
    (setup,) = agent.work()
    assert setup.ok
    d0 = world.server.devices["d0"]
    d0.handler, d0.state = "noop", "reserved"
    agent.work()
    d0.state, d0.consumer = "cleaning", None
    agent.work()
    vf = world.netlink.vfs[("ens1f0", 0)]
    assert (vf.mac, vf.vlan) == ("00:00:00:00:00:00", 0), vf
    assert world.driver(world.vfs[0]) == "iavf"


def test_an_mdev_cleanup_never_removes_another_slots_mdev_named_by_the_servers_facts(tmp_path: Path) -> None:
    """A cleanup of a slot the agent has no journal for takes the server's ``mdev_uuid``; with
    no consumer on the item the handler uses it, and ``check_owner`` only checks parent and
    type, so another slot's live mdev (consumer A's vGPU) is removed."""
    h = host(tmp_path, vfio=True)
    h.mdev_parent(GPU, types={"nvidia-230": {"available": 4}}, iommu_group=12)
    ops = HostOps(SimulatedSysfs(h.root), RecordingNetlink(), RecordingRunner())
    server = FakeServer({})
    agent = _agent(tmp_path, h.root, ops, server, [{"type": "VG", "match": {"kind": "mdev_type"}}])
    over = {"type": "VG", "parent": GPU}
    server.devices["a"] = LyingDevice(
        "a", mdev_address(GPU, "nvidia-230", 0), kind="mdev_type", driver="", over=over
    )
    server.claim("a")
    (done,) = agent.work()
    assert done.ok, done
    theirs = server.devices["a"].facts["mdev_uuid"]
    assert ops.sysfs.exists(f"bus/mdev/devices/{theirs}")
    server.devices["x"] = LyingDevice(
        "x",
        mdev_address(GPU, "nvidia-230", 2),  # a free slot of this agent, never set up here
        kind="mdev_type",
        driver="",
        state="cleaning",
        facts={"mdev_uuid": theirs},
        over=over,
    )
    agent.work()
    assert ops.sysfs.exists(f"bus/mdev/devices/{theirs}"), "consumer a's vGPU was removed"


# ----------------------------------------------------------------- one bad item, the others


def test_one_malformed_work_item_does_not_stop_the_cleanup_of_the_others(world: World) -> None:  # noqa: F811
    """A work list is validated whole: one item the agent cannot parse (a device kind a newer
    server knows) makes the whole GET 'server unreachable', so no cleanup on the host ever
    runs again and nothing tells the operator which item is at fault."""
    world.server.claim("d0")
    agent = world.make()
    agent.work()
    world.server.release()
    world.server.devices["z"] = LyingDevice(
        "z", world.vfs[1], state="reserved", consumer="other", over={"kind": "cxl_mem"}
    )
    agent.step()
    assert world.driver(world.vfs[0]) == "iavf", "d0's cleanup never ran"
    assert world.server.devices["d0"].state == "available"


# ----------------------------------------------------------------- host use since the last report


def test_a_function_the_host_started_using_after_the_last_report_is_not_set_up(tmp_path: Path) -> None:
    """The agent checks work against the inventory of its last report (up to report_interval
    old): a NIC that took the host's default route since then is unbound from its driver and
    given to vfio-pci, and the host loses its link."""
    h = host(tmp_path, vfio=True)
    nic(h)
    ops = HostOps.simulated(h.root)
    server = FakeServer({"n": FakeDevice("n", NIC, kind="pci", driver="i40e")})
    agent = _agent(
        tmp_path, h.root, ops, server, [{"type": "NIC", "match": {"vendor_id": "8086", "product_id": "1572"}}]
    )
    agent.step()
    assert [d["address"] for d in server.reports[-1]["devices"]] == [NIC]
    proc(tmp_path, "net/route", ROUTE_HEADER + V4_DEFAULT.format("eno1"))  # the host's link now
    server.claim("n")
    agent.work()
    assert ops.sysfs.link_name(f"bus/pci/devices/{NIC}/driver") == "i40e"


# ----------------------------------------------------------------- host text the server cannot carry


def _vf_host(tmp_path: Path, **pf: Any) -> tuple[list[str], HostOps, FakeServer, Agent]:
    h = host(tmp_path, vfio=True)
    vfs = h.sriov_pf(
        PF, "8086", "1572", vfs=1, vf_device="154c", ifname=NOT_UTF8_IFNAME, vf_iommu_group_start=20, **pf
    )

    class Checks(FakeServer):
        def _inventory_result(self, body: dict[str, Any]) -> dict[str, Any]:
            return {**super()._inventory_result(body), "checks": {"NIC_VF": {"handler": None, "config": {}}}}

    server = Checks({"d0": FakeDevice("d0", vfs[0])})
    ops = HostOps.simulated(h.root)
    config = AgentConfig(
        host=HOST,
        server="http://server",
        state_file=tmp_path / "state.json",
        report_interval=30,
        heartbeat_interval=10,
        devices=(DeviceRule("NIC_VF", {"product_id": "154c"}),),
    )
    client = httpx.Client(transport=httpx.MockTransport(server.handle))
    state = StateFile(config.state_file, durable=False)
    return vfs, ops, server, Agent(config, h.root, ops, client, state=state, pci_ids=None)


def test_a_health_reason_naming_a_non_utf8_interface_does_not_stop_the_agent(tmp_path: Path) -> None:
    """A free VF whose PF link is down gets the reason 'the link of PF ... (<ifname>) is down'
    with the name as os.listdir gives it; the report then fails validation (lone surrogate)
    and the ValidationError escapes ``Agent.step`` (and ``run``): the agent dies, and again
    at every start (the verdict is kept in the state file), so no device of the host is
    reported, set up or cleaned any more."""
    _, _, server, agent = _vf_host(tmp_path, operstate="down")
    for _ in range(2):
        agent.step()
    assert server.reports and server.reports[-1]["devices"]


def test_a_failed_setup_whose_error_names_a_non_utf8_interface_is_still_posted(tmp_path: Path) -> None:
    """The setup fails ('cannot configure VF 0 of <ifname>: ...'); that error cannot be
    posted, so the result is dropped as 'not postable': the server never hears of it, the
    tenant's claim waits until its reservation expires, and the setup is retried every pass
    (a cleanup failing the same way never quarantines its device)."""
    _, ops, server, agent = _vf_host(tmp_path)
    assert isinstance(ops.netlink, RecordingNetlink)
    ops.netlink.fail_with = "RTNETLINK answers: Operation not permitted"
    server.claim("d0")
    agent.work()
    assert [(r["action"], r["ok"]) for r in server.posted] == [("setup", False)]
    assert server.devices["d0"].state == "cleaning"
