"""A MIG slot released while its setup ran leaves no other slot out of service.

The setup made the GPU instance, the server ignored its result (the slot was cleaning by
then), and a health check runs before the cleanup. The instance is the agent's own (it set
the slot up and has not cleaned it yet), not one made by hand: the slots whose memory slices
it takes are kept from claims by their pool's counters while the slot is cleaning, as before,
and are not called unhealthy; so once the cleanup passes, every slot is available at once,
not after ``health_passes`` passing checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from devassign.agent.config import parse_config
from devassign.agent.worker import Agent
from devassign.lifecycle.executor import ActionResult
from devassign.lifecycle.host import HostOps, RecordingNetlink
from devassign.lifecycle.simulated import SimulatedSysfs
from devassign.schemas import WorkItem
from devassign.testing.nvidia_smi import FakeNvidiaSmi
from tests.e2e.agents import Clock, in_process_agent
from tests.fixtures.sysfs import host

GPU = "0000:3b:00.0"


def _a100_with_a_1g_claimed(tmp_path: Path, api: TestClient) -> tuple[Agent, Clock, FakeNvidiaSmi, Any]:
    """An A100 whose 1g and 7g slots an agent reports, and a claim of a 1g slot (not set up yet)."""
    h = host(tmp_path / "sys", vfio=True)
    h.pci(GPU, "10de", "20b2", cls="030200", numa=0, iommu_group=12, driver="nvidia")
    smi = FakeNvidiaSmi(tmp_path / "smi.json", {GPU: "20b2"})
    for name in ("MIG_1G", "MIG_7G"):
        assert api.post("/v1/resource-types", json={"name": name, "description": name}).status_code == 201
    rules: list[dict[str, Any]] = [
        {"type": "MIG_1G", "match": {"mig_profile": "1g.10gb"}},
        {"type": "MIG_7G", "match": {"mig_profile": "7g.80gb"}},
    ]
    config = parse_config(
        {
            "host": "a100-1",
            "device": rules,
            "state_file": str(tmp_path / "state.json"),
            "health_interval": 60,
            "health_passes": 3,
        }
    )
    clock = Clock()
    agent = in_process_agent(
        config, h.root, api, clock, ops=HostOps(SimulatedSysfs(h.root), RecordingNetlink(), smi)
    )
    assert not agent.step().errors
    made = api.post(
        "/v1/claims", json={"consumer": "job-1", "extra_specs": {"hardware_resource:MIG_1G": "1"}}
    )
    assert made.status_code == 201, made.text
    return agent, clock, smi, made


def test_a_slot_released_during_its_setup_leaves_the_slots_it_overlaps_healthy(
    tmp_path: Path, api: TestClient
) -> None:
    agent, clock, smi, _ = _a100_with_a_1g_claimed(tmp_path, api)

    real = Agent._action

    def released_meanwhile(self: Agent, action: Any, item: WorkItem) -> ActionResult:
        if action == "setup":  # the tenant lets go while the agent is at it
            assert api.delete("/v1/allocations/job-1").status_code == 204
        return real(self, action, item)

    agent._action = released_meanwhile.__get__(agent)  # type: ignore[method-assign]
    clock.now += 2
    done = agent.step().work
    assert [(w.action, w.ok, w.applied) for w in done] == [("setup", True, False)]
    assert len(smi.instances(GPU)) == 1

    clock.now += 61  # a health check before the cleanup
    done = agent.step().work
    assert [(w.action, w.ok) for w in done] == [("cleanup", True)]
    assert smi.instances(GPU) == []
    devices = api.get("/v1/devices", params={"host": "a100-1"}).json()
    whole = [d for d in devices if d["attributes"].get("mig_profile") == "7g.80gb"]
    assert whole
    assert all((d["state"], d["healthy"]) == ("available", True) for d in devices), [
        (d["address"], d["state"], d.get("health_reason")) for d in devices if d["state"] != "available"
    ]
    got = api.post("/v1/claims", json={"consumer": "job-2", "extra_specs": {"hardware_resource:MIG_7G": "1"}})
    assert got.status_code == 201, got.text


def test_a_slot_whose_cleanup_failed_leaves_the_slots_it_overlaps_healthy(
    tmp_path: Path, api: TestClient
) -> None:
    """A cleanup that cannot destroy the instance (processes still on the GPU) quarantines the
    slot; its instance is still the agent's own, so the slots it overlaps stay healthy (the
    quarantined slot keeps them from claims), and all are available once it is cleaned."""
    agent, clock, smi, made = _a100_with_a_1g_claimed(tmp_path, api)
    slot = made.json()["devices"][0]
    clock.now += 2
    assert [w.ok for w in agent.step().work] == [True]

    smi.set_flag(GPU, "busy")  # a process of the tenant's still holds the instance
    assert api.delete("/v1/allocations/job-1").status_code == 204
    clock.now += 2
    assert [(w.action, w.ok, w.state) for w in agent.step().work] == [("cleanup", False, "quarantined")]
    clock.now += 61  # health checks while the slot is quarantined
    assert not agent.step().errors
    devices = api.get("/v1/devices", params={"host": "a100-1"}).json()
    assert [d["address"] for d in devices if d["state"] not in ("available", "quarantined")] == []

    smi.set_flag(GPU, "busy", False)
    assert api.post(f"/v1/devices/{slot['id']}/clear", json={"reason": "processes gone"}).status_code == 200
    clock.now += 2
    assert [(w.action, w.ok) for w in agent.step().work] == [("cleanup", True)]
    devices = api.get("/v1/devices", params={"host": "a100-1"}).json()
    assert all((d["state"], d["healthy"]) == ("available", True) for d in devices), [
        (d["address"], d["state"], d.get("health_reason")) for d in devices if d["state"] != "available"
    ]
