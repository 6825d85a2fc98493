"""The agent's lifecycle worker against a fake server (httpx.MockTransport) and a simulated host.

The fake keeps device states the way the server's rules do (reserved -> assigned or
cleaning, cleaning -> available or quarantined, stale results ignored), so the tests can
check what the agent posted and in which order, and what it did to the SYNTHETIC tree.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from devassign.agent.config import AgentConfig, DeviceRule
from devassign.agent.state import StateError, StateFile
from devassign.agent.worker import CRASH_POINTS, Agent, WorkRefused
from devassign.lifecycle.host import HostOps, RecordingNetlink
from devassign.lifecycle.simulated import SimulatedSysfs
from devassign.testing.host import simulated_host
from devassign.testing.sysfs import SyntheticHost, host

HOST = "w1"
PF = "0000:5e:00.0"
VM = "6f1c0b4e-0000-4000-8000-000000000001"
NOW = datetime(2026, 1, 1, tzinfo=UTC).isoformat()


class SimulatedCrash(BaseException):
    """Stands in for SIGKILL: nothing after the crash point runs."""


@dataclass
class FakeDevice:
    id: str
    address: str
    state: str = "available"
    consumer: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    healthy: bool = True
    driver: str = "iavf"
    kind: str = "sriov_vf"
    handler: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    cleared: bool = False
    type: str = "NIC_VF"
    type_changed: bool = False

    def schema(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "host": HOST,
            "address": self.address,
            "kind": self.kind,
            "type": self.type,
            "state": self.state,
            "healthy": self.healthy,
            "vendor_id": "8086",
            "product_id": "154c",
            "numa_node": None,
            "iommu_group": None,
            "driver": self.driver,
            "parent": PF,
            "attributes": {},
            "consumer": self.consumer,
            "state_changed_at": NOW,
            "created_at": NOW,
        }


@dataclass
class FakeServer:
    """Just enough of the server: inventory, heartbeat, work list and results."""

    devices: dict[str, FakeDevice] = field(default_factory=dict)
    posted: list[dict[str, Any]] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)
    heartbeats: int = 0
    post_status: int = 200
    params: dict[str, Any] = field(default_factory=lambda: {"mac": "52:54:00:00:00:01", "vlan": 10})

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == f"/v1/hosts/{HOST}/inventory":
            body = json.loads(request.content)
            self.reports.append(body)
            return httpx.Response(200, json=self._inventory_result(body))
        if path == f"/v1/hosts/{HOST}/heartbeat":
            self.heartbeats += 1
            return httpx.Response(204)
        if path == f"/v1/hosts/{HOST}/work" and request.method == "GET":
            return httpx.Response(200, json={"host": HOST, "items": self._items()})
        if path == f"/v1/hosts/{HOST}/work" and request.method == "POST":
            if self.post_status != 200:
                return httpx.Response(self.post_status, json={"error": {"code": "x", "message": "no"}})
            results = json.loads(request.content)["results"]
            return httpx.Response(200, json=[self._apply(r) for r in results])
        return httpx.Response(404)

    def _inventory_result(self, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "host": HOST,
            "generation": body["generation"],
            "accepted": len(body["devices"]),
            **{k: [] for k in ("added", "updated", "removed", "missing", "refused", "warnings")},
        }

    def _items(self) -> list[dict[str, Any]]:
        out = []
        for d in self.devices.values():
            if d.state not in ("reserved", "cleaning"):
                continue
            mates = [m.address for m in self.devices.values() if m.consumer == d.consumer and m is not d]
            out.append(
                {
                    "action": "setup" if d.state == "reserved" else "cleanup",
                    "device": d.schema(),
                    "handler": d.handler,
                    "config": d.config,
                    "params": self.params if d.state == "reserved" else {},
                    "facts": d.facts,
                    "companions": mates if d.consumer else [],
                    "cleared": d.cleared,
                    "ticket": f"{d.id}.{d.state}",
                    "type_changed": d.type_changed and d.state == "cleaning",
                }
            )
        return out

    def _apply(self, r: dict[str, Any]) -> dict[str, Any]:
        self.posted.append(r)
        d = self.devices[r["device_id"]]
        d.facts.update(r.get("facts") or {})
        want = "reserved" if r["action"] == "setup" else "cleaning"
        if d.state != want:
            return {"device_id": d.id, "applied": False, "state": d.state, "note": "stale"}
        if r["action"] == "setup" and r["ok"]:
            d.state = "assigned"
        elif r["action"] == "setup":
            consumer = d.consumer
            for m in self.devices.values():
                if m.consumer == consumer:
                    m.state, m.consumer = "cleaning", None
        elif r["ok"]:
            d.state, d.consumer, d.facts, d.cleared = "available", None, {}, False
        else:
            d.state = "quarantined"
        return {"device_id": d.id, "applied": True, "state": d.state, "note": ""}

    def clear(self, device_id: str) -> None:
        """What ``POST /v1/devices/{id}/clear`` does: back to cleaning, facts dropped."""
        d = self.devices[device_id]
        assert d.state == "quarantined"
        d.state, d.facts, d.cleared = "cleaning", {}, True

    # test helpers ---------------------------------------------------------------
    def claim(self, *ids: str) -> None:
        for i in ids:
            self.devices[i].state, self.devices[i].consumer = "reserved", VM

    def release(self) -> None:
        for d in self.devices.values():
            if d.consumer == VM:
                d.state, d.consumer = "cleaning", None


@dataclass
class World:
    h: SyntheticHost
    vfs: list[str]
    server: FakeServer
    sysfs: SimulatedSysfs
    netlink: RecordingNetlink
    config: AgentConfig
    make: Callable[..., Agent]

    def driver(self, address: str) -> str | None:
        return self.sysfs.link_name(f"bus/pci/devices/{address}/driver")

    def journal(self) -> dict[str, Any]:
        return StateFile(self.config.state_file).state.journal


@pytest.fixture
def world(tmp_path: Path) -> World:
    h = host(tmp_path, vfio=True)
    vfs = h.sriov_pf(PF, "8086", "1572", vfs=2, vf_device="154c", ifname="ens1f0", vf_iommu_group_start=20)
    server = FakeServer({f"d{i}": FakeDevice(f"d{i}", vf) for i, vf in enumerate(vfs)})
    ops = HostOps.simulated(h.root)
    assert isinstance(ops.sysfs, SimulatedSysfs) and isinstance(ops.netlink, RecordingNetlink)
    config = AgentConfig(
        host=HOST,
        server="http://server",
        state_file=tmp_path / "state.json",
        report_interval=30,
        heartbeat_interval=10,
        devices=(DeviceRule("NIC_VF", {"product_id": "154c"}),),
    )

    def make(**kw: Any) -> Agent:
        client = httpx.Client(transport=httpx.MockTransport(server.handle))
        state = StateFile(config.state_file, durable=False)
        return Agent(config, h.root, ops, client, state=state, pci_ids=None, **kw)

    return World(h, vfs, server, ops.sysfs, ops.netlink, config, make)


def test_setup_ok_is_posted_with_facts_and_the_vf_is_on_vfio(world: World) -> None:
    world.server.claim("d0")
    done = world.make().work()
    assert [(d.action, d.ok, d.state) for d in done] == [("setup", True, "assigned")]
    (posted,) = world.server.posted
    assert posted["ok"] is True and posted["facts"]["original_driver"] == "iavf"
    assert posted["ticket"] == f"{posted['device_id']}.reserved"  # the item's, echoed
    assert world.driver(world.vfs[0]) == "vfio-pci"
    assert world.netlink.vfs[("ens1f0", 0)].mac == "52:54:00:00:00:01"
    state = StateFile(world.config.state_file).state
    assert state.journal == {} and set(state.assigned) == {"d0"}


def test_setup_failure_posts_the_error_and_skips_the_consumers_other_setups(world: World) -> None:
    world.server.claim("d0", "d1")
    world.sysfs.fail(f"bus/pci/devices/{world.vfs[0]}/driver_override")
    done = world.make().work()
    assert [(d.address, d.ok) for d in done] == [(world.vfs[0], False)]
    (posted,) = world.server.posted
    assert posted["ok"] is False and "driver_override" in posted["error"]
    assert world.driver(world.vfs[1]) == "iavf"  # never touched
    assert {d.state for d in world.server.devices.values()} == {"cleaning"}
    world.sysfs.failures.clear()
    done = world.make().work()
    assert [(d.action, d.ok, d.state) for d in done] == [("cleanup", True, "available")] * 2
    assert [world.driver(v) for v in world.vfs] == ["iavf", "iavf"]


def test_cleanup_failure_is_posted_as_failed_never_ok(world: World) -> None:
    world.server.claim("d0")
    agent = world.make()
    agent.work()
    world.server.release()
    world.sysfs.fail(f"bus/pci/devices/{world.vfs[0]}/reset")
    done = agent.work()
    assert [(d.action, d.ok, d.state) for d in done] == [("cleanup", False, "quarantined")]
    assert "reset" in (done[0].error or "")
    assert [r["ok"] for r in world.server.posted if r["action"] == "cleanup"] == [False]


def test_cleanup_uses_the_journaled_facts_when_the_server_has_none(world: World) -> None:
    world.server.claim("d0")
    agent = world.make()
    agent.work()
    world.server.release()
    world.server.devices["d0"].facts = {}  # as if the setup's result never reached it
    world.server.devices["d0"].driver = "vfio-pci"  # as a report after the setup says
    world.h.set(world.vfs[0], "driver_override", "vfio-pci")
    done = agent.work()
    assert [(d.action, d.ok) for d in done] == [("cleanup", True)]
    assert world.driver(world.vfs[0]) == "iavf"


@pytest.mark.parametrize("action", ["setup", "cleanup"])
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_a_crash_at_any_point_converges_after_a_restart(world: World, point: str, action: str) -> None:
    def crash() -> None:
        raise SimulatedCrash(point)

    world.server.claim("d0")
    if action == "cleanup":
        world.make().work()
        world.server.release()
    with pytest.raises(SimulatedCrash):
        world.make(crash_at=f"{point}:{action}", on_crash=crash).work()
    dev = world.server.devices["d0"]
    if point == "posted":
        assert dev.state == ("assigned" if action == "setup" else "available")
    else:  # nothing reached the server: a cleanup that may not have finished is not "ok" yet
        assert dev.state == ("reserved" if action == "setup" else "cleaning")
    assert world.journal()["d0"]["action"] == action

    done = world.make().work()  # the restarted agent
    assert world.journal() == {}
    assert any(d.replayed for d in done)
    if action == "setup":
        assert dev.state == "assigned" and world.driver(world.vfs[0]) == "vfio-pci"
        assert dev.facts["original_driver"] == "iavf"
        world.server.release()
        world.make().work()
    assert dev.state == "available"
    assert world.driver(world.vfs[0]) == "iavf"
    assert world.sysfs.read(f"bus/pci/devices/{world.vfs[0]}/driver_override") == "(null)"
    oks = [r for r in world.server.posted if r["action"] == "cleanup" and r["ok"]]
    assert oks, "a cleanup ok was posted"


def test_no_new_work_while_an_older_result_is_unposted(world: World) -> None:
    world.server.claim("d0")
    agent = world.make()
    world.server.post_status = 503
    agent.step()
    assert world.journal()["d0"]["phase"] == "done"
    world.server.claim("d1")
    world.server.post_status = 200
    done = agent.work()
    # The old result goes first, then the new setup.
    assert [(d.device_id, d.replayed) for d in done] == [("d0", False), ("d1", False)]
    assert [r["device_id"] for r in world.server.posted] == ["d0", "d1"]


def test_a_refused_post_keeps_the_result(world: World) -> None:
    world.server.claim("d0")
    world.server.post_status = 403
    with pytest.raises(WorkRefused):
        world.make().work()
    assert world.journal()["d0"]["phase"] == "done"
    world.server.post_status = 200
    world.make().work()
    assert world.server.devices["d0"].state == "assigned" and world.journal() == {}


def test_failed_health_marks_the_device_unhealthy_in_the_next_report(world: World) -> None:
    world.server.claim("d0")
    now = [0.0]
    agent = world.make(clock=lambda: now[0])
    first = agent.step()
    assert first.report is not None and not first.unhealthy
    assert len(world.server.reports[-1]["devices"]) == 2
    assert all(d["healthy"] for d in world.server.reports[-1]["devices"])
    world.h.bind(world.vfs[0], "iavf")  # someone took the VF back from vfio behind our back
    now[0] = 11.0
    assert agent.step().heartbeat and world.server.heartbeats == 1
    now[0] = 40.0
    assert agent.step().report is not None and not agent.unhealthy  # a report, but no check due yet
    now[0] = 61.0  # health_interval (60 s) after the first check
    second = agent.step()
    assert second.report is not None and set(second.unhealthy) == {world.vfs[0]}
    healthy = {d["address"]: d["healthy"] for d in world.server.reports[-1]["devices"]}
    assert healthy[world.vfs[0]] is False and healthy[world.vfs[1]] is True


def test_step_survives_an_unreachable_server(world: World) -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    client = httpx.Client(transport=httpx.MockTransport(down))
    agent = Agent(world.config, world.h.root, HostOps.simulated(world.h.root), client, pci_ids=None)
    out = agent.step()
    assert out.report is None and len(out.errors) == 2 and out.work == []


def test_state_file_keeps_the_journal_and_refuses_a_malformed_one(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    sf = StateFile(path)
    server = FakeServer({"d0": FakeDevice("d0", "0000:5e:02.0")})
    server.claim("d0")
    (item,) = server._items()
    sf.state.journal["d0"] = {"action": "setup", "phase": "started", "item": item}
    sf.save()
    again = StateFile(path).state
    assert again.journal["d0"]["phase"] == "started" and again.host_id == sf.state.host_id
    path.write_text(json.dumps({"host_id": "x", "generation": 1, "journal": ["no"]}))
    with pytest.raises(StateError, match="journal"):
        _ = StateFile(path).state


def test_a_device_cleaned_before_a_crash_is_not_called_unhealthy(world: World) -> None:
    def crash() -> None:
        raise SimulatedCrash("handler")

    world.server.claim("d0")
    world.make().work()
    world.server.release()
    with pytest.raises(SimulatedCrash):
        world.make(crash_at="handler:cleanup", on_crash=crash).work()
    assert world.driver(world.vfs[0]) == "iavf"  # cleaned, but the result never journaled
    out = world.make().step()
    assert out.unhealthy == {} and all(d["healthy"] for d in world.server.reports[-1]["devices"])
    assert world.server.devices["d0"].state == "available"


def test_simulated_netlink_state_survives_a_restart(tmp_path: Path) -> None:
    h = host(tmp_path, vfio=True)
    first = simulated_host(h.root)
    first.netlink.set_vf("ens1f0", 1, mac="52:54:00:00:00:09", vlan=5)
    again = simulated_host(h.root).netlink.get_vf("ens1f0", 1)
    assert (again.mac, again.vlan, again.spoofchk) == ("52:54:00:00:00:09", 5, True)


def test_no_setup_of_a_device_whose_last_check_failed_while_free(world: World) -> None:
    """A claim that landed between the check's failure and the report saying so (or after an
    operator vouched for the device and its check failed again) is refused, not set up: the
    device goes back through its cleanup instead of to the new consumer."""
    agent = world.make()
    agent.health.observe(world.vfs[0], False, "scrub left data behind")
    world.server.claim("d0")
    done = agent.work()
    assert [(d.action, d.ok) for d in done] == [("setup", False)]
    assert "failed its last health check" in world.server.posted[-1]["error"]
    assert world.driver(world.vfs[0]) == "iavf"  # never set up
    assert world.server.devices["d0"].state == "cleaning"
    # Checks pass again (not yet enough of them): the operator's word stands, it is set up.
    agent.work()
    agent.health.observe(world.vfs[0], True, None)
    world.server.claim("d0")
    assert [(d.action, d.ok) for d in agent.work()] == [("setup", True)]


@pytest.mark.parametrize("state_kept", [True, False])
def test_a_type_changed_while_held_is_not_trusted_without_a_record_of_the_setup(
    world: World, state_kept: bool
) -> None:
    """The type's config changed while the device was held (its cleanup command dropped, say):
    with its record of the setup the agent cleans with what set the device up; without one (a
    lost state file) it refuses, and the device is quarantined rather than called clean."""
    world.server.claim("d0")
    assert [(d.action, d.ok) for d in world.make().work()] == [("setup", True)]
    world.server.release()
    world.server.devices["d0"].type_changed = True
    if not state_kept:
        world.config.state_file.unlink()
    done = world.make().work()
    if state_kept:
        assert [(d.action, d.ok) for d in done] == [("cleanup", True)]
        assert world.server.devices["d0"].state == "available"
        return
    assert [(d.action, d.ok) for d in done] == [("cleanup", False)]
    assert "changed while" in world.server.posted[-1]["error"]
    assert world.server.devices["d0"].state == "quarantined"
