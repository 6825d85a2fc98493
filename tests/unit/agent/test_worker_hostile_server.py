"""The agent against a server that lies (compromised, or a type edited while devices are held).

The agent acts only on devices it discovered, as it discovered them: the server's copy of a
device's parent, attributes or driver never chooses what a handler touches; a type config
cannot make it start a program the host did not allow; a cleanup runs the handler that set
the device up; and a work item no result could be posted for is ignored, never journaled
(it would stop the agent at every start).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from devassign.agent.config import parse_config
from devassign.agent.state import StateFile
from devassign.agent.worker import Agent
from devassign.domain import DeviceKind
from devassign.lifecycle.handlers.sriov import SriovVfHandler
from devassign.lifecycle.host import HostOps, RecordingNetlink, RecordingRunner
from devassign.lifecycle.simulated import SimulatedSysfs
from devassign.testing.nvidia_smi import FakeNvidiaSmi
from devassign.testing.sysfs import host
from tests.unit.agent.test_agent_worker import HOST, VM, FakeDevice, FakeServer, World, world  # noqa: F401
from tests.unit.lifecycle.support import device

GPU = "0000:3b:00.0"
OTHER_GPU = "0000:af:00.0"  # on the host, not in the agent's inventory


@dataclass
class LyingDevice(FakeDevice):
    """A device as the server sends it, with fields the server made up."""

    over: dict[str, Any] = field(default_factory=dict)

    def schema(self) -> dict[str, Any]:
        return {**super().schema(), **self.over}


def _agent(
    tmp_path: Path, root: Path, rules: list[dict[str, Any]], ops: HostOps, server: FakeServer
) -> Agent:
    config = parse_config(
        {"host": HOST, "server": "http://server", "state_file": str(tmp_path / "state.json"), "device": rules}
    )
    client = httpx.Client(transport=httpx.MockTransport(server.handle))
    return Agent(config, root, ops, client, state=StateFile(config.state_file, durable=False), pci_ids=None)


def _mig_world(tmp_path: Path) -> tuple[Any, FakeNvidiaSmi, HostOps, list[dict[str, Any]]]:
    h = host(tmp_path, vfio=True)
    h.pci(GPU, "10de", "20b2", cls="030200", iommu_group=12, driver="nvidia")
    h.pci(OTHER_GPU, "10de", "20b2", cls="030200", iommu_group=13, driver="nvidia")
    smi = FakeNvidiaSmi(tmp_path / "smi.json", {GPU: "20b2", OTHER_GPU: "20b2"})
    ops = HostOps(SimulatedSysfs(h.root), RecordingNetlink(), smi)
    rules = [{"type": "M3", "match": {"mig_profile": "3g.*", "parent": "0000:3b:*"}}]
    return h, smi, ops, rules


def _mig_slot(agent: Agent, *, parent: str, **fields: Any) -> LyingDevice:
    """The agent's own MIG slot as the server sends it, naming ``parent`` as its GPU."""
    slot = f"{GPU}/mig/3g.40gb@4"
    attributes = agent._discovered()[slot].attributes
    over = {"type": "M3", "parent": parent, "attributes": attributes}
    return LyingDevice("m", slot, kind="mig", driver="", over=over, **fields)


def test_a_type_config_cannot_make_the_mig_handler_start_another_program(tmp_path: Path) -> None:
    h, smi, ops, rules = _mig_world(tmp_path)
    server = FakeServer({})
    agent = _agent(tmp_path, h.root, rules, ops, server)
    server.devices["m"] = _mig_slot(agent, parent=GPU, config={"nvidia_smi": "/tmp/evil"})
    server.claim("m")
    (done,) = agent.work()
    assert not done.ok and "[lifecycle] commands" in (done.error or ""), done
    assert "/tmp/evil" not in [c.argv[0] for c in smi.calls]


def test_a_mig_cleanup_acts_on_the_gpu_the_agent_found_not_the_one_the_server_names(tmp_path: Path) -> None:
    h, smi, ops, rules = _mig_world(tmp_path)
    smi.add_gpu(OTHER_GPU, "20b2", mig=True)
    made = smi.run(["nvidia-smi", "mig", "-i", OTHER_GPU, "-cgi", "9:4", "-C"], env={}, timeout=1)
    assert made.returncode == 0 and len(smi.instances(OTHER_GPU)) == 1  # the host's own
    server = FakeServer({})
    agent = _agent(tmp_path, h.root, rules, ops, server)
    server.devices["m"] = _mig_slot(agent, parent=OTHER_GPU, state="cleaning")
    agent.work()
    assert len(smi.instances(OTHER_GPU)) == 1


def test_a_vgpu_setup_uses_the_vf_and_type_the_agent_found(tmp_path: Path) -> None:
    h = host(tmp_path, vfio=True)
    types = {1428: ("NVIDIA H200X-141C", 1), 1425: ("NVIDIA H200X-35C", 4)}
    mine = h.vgpu_gpu("0000:5e:00.0", vfs=2, types=types)
    other = h.vgpu_gpu("0000:af:00.0", vfs=2, types=types)
    ops = HostOps(SimulatedSysfs(h.root), RecordingNetlink(), RecordingRunner())
    rules = [{"type": "V35", "match": {"vgpu_type": "*-35C", "parent": "0000:5e:*"}}]
    server = FakeServer({})
    agent = _agent(tmp_path, h.root, rules, ops, server)
    slot = f"{mine[0]}/vgpu/1425"
    assert slot in agent._discovered()
    server.devices["v"] = LyingDevice(
        "v",
        slot,
        kind="vgpu",
        driver="nvidia",
        over={"type": "V35", "parent": other[0], "attributes": {"vgpu_type_id": 1428}},
    )
    server.claim("v")
    (done,) = agent.work()
    assert done.ok, done
    assert ops.sysfs.read(f"bus/pci/devices/{other[0]}/nvidia/current_vgpu_type") == "0"
    assert ops.sysfs.read(f"bus/pci/devices/{mine[0]}/nvidia/current_vgpu_type") == "1425"


def test_a_cleanup_runs_the_handler_that_set_the_device_up(world: World) -> None:  # noqa: F811
    """The type's handler changed while the VF was held (or the server names ``noop``): the
    cleanup still resets what the setup changed."""
    for later in ("noop", "pci"):
        world.server.claim("d0")
        agent = world.make()
        (setup,) = agent.work()
        assert setup.ok and world.netlink.vfs[("ens1f0", 0)].mac == "52:54:00:00:00:01"
        world.server.release()
        world.server.devices["d0"].handler = later
        (done,) = agent.work()
        vf = world.netlink.vfs[("ens1f0", 0)]
        assert done.ok and (vf.mac, vf.vlan) == ("00:00:00:00:00:00", 0), (later, done, vf)
        assert world.driver(world.vfs[0]) != "vfio-pci"
        world.server.devices["d0"].handler = None
        world.server.devices["d0"].state = "available"


def test_work_items_no_result_could_be_posted_for_are_ignored_and_the_agent_goes_on(
    world: World,  # noqa: F811
) -> None:
    world.server.devices["x" * 40] = LyingDevice("x" * 40, "0000:5e:10.7", state="reserved", consumer=VM)
    world.server.claim("d0")
    world.server.devices["d0"].consumer = "c" * 300
    for _ in range(2):  # and again after a restart
        out = world.make().step()
        assert out.work == [] and not out.errors, out
    assert world.driver(world.vfs[0]) != "vfio-pci"  # the long consumer's setup never ran


def test_a_work_item_that_is_not_utf8_is_ignored(world: World) -> None:  # noqa: F811
    class AsciiServer(FakeServer):
        """Sends JSON with ``\\ud800`` escapes, which decode to lone surrogates."""

        def handle(self, request: httpx.Request) -> httpx.Response:
            if request.method == "GET" and request.url.path.endswith("/work"):
                body = {"host": HOST, "items": self._items()}
                text = json.dumps(body, ensure_ascii=True)
                return httpx.Response(200, content=text, headers={"content-type": "application/json"})
            return super().handle(request)

    server = AsciiServer(world.server.devices)
    server.devices["x"] = LyingDevice("x", "0000:5e:10.7\ud800", state="reserved", consumer=VM)
    world.server.handle = server.handle  # type: ignore[method-assign]
    for _ in range(2):
        out = world.make().step()
        assert out.work == [] and not out.errors, out


def test_a_vf_with_a_rate_and_no_mac_is_healthy_after_its_setup(tmp_path: Path) -> None:
    h = host(tmp_path, vfio=True)
    vfs = h.sriov_pf(
        "0000:5e:00.0", "8086", "1572", vfs=1, vf_device="154c", ifname="ens1f0", vf_iommu_group_start=20
    )
    ops = HostOps(SimulatedSysfs(h.root), RecordingNetlink(), RecordingRunner())
    vf = device(vfs[0], DeviceKind.SRIOV_VF, params={"max_tx_rate_mbps": 1000}, driver="iavf")
    SriovVfHandler().setup(vf, {}, ops)
    result = SriovVfHandler().health(vf, {}, ops)
    assert result.ok, result.reason
