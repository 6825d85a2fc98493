"""A MIG slot released while its setup ran: the setup made the GPU instance, the server
ignored its result (the slot was cleaning by then), and a health check before the cleanup
sees an instance on a slot nobody holds. That failure is the leftover the cleanup removes:
once the cleanup passes, the slot is available again at once, not after ``health_passes``."""

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


def test_a_slot_released_during_its_setup_is_available_once_cleaned(tmp_path: Path, api: TestClient) -> None:
    h = host(tmp_path / "sys", vfio=True)
    h.pci(GPU, "10de", "20b2", cls="030200", numa=0, iommu_group=12, driver="nvidia")
    smi = FakeNvidiaSmi(tmp_path / "smi.json", {GPU: "20b2"})
    assert api.post("/v1/resource-types", json={"name": "MIG_1G", "description": "1g"}).status_code == 201
    rules: list[dict[str, Any]] = [{"type": "MIG_1G", "match": {"mig_profile": "1g.10gb"}}]
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
    slot = made.json()["devices"][0]["address"]

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
    dev = next(d for d in api.get("/v1/devices", params={"host": "a100-1"}).json() if d["address"] == slot)
    assert (dev["state"], dev["healthy"]) == ("available", True), dev
