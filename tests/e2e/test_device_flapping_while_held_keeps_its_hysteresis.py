"""A GPU that flaps while a tenant holds it (its config space reads 0xFF, then answers, then
0xFF again) is failing hardware, not an assignment undone behind the agent's back: after its
holder releases it and its cleanup passes, it still needs ``health_passes`` passing checks in
a row before anyone else gets it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from devassign.agent.config import parse_config
from tests.e2e.agents import Clock, in_process_agent
from tests.fixtures.sysfs import host

GPU = "0000:3b:00.0"


def _gpu(api: TestClient) -> dict[str, Any]:
    found = [d for d in api.get("/v1/devices", params={"host": "flappy"}).json() if d["address"] == GPU]
    assert len(found) == 1
    return found[0]


def test_a_gpu_flapping_while_held_is_not_available_right_after_its_cleanup(
    tmp_path: Path, api: TestClient
) -> None:
    h = host(tmp_path / "sys", vfio=True)
    h.pci(GPU, "10de", "1eb8", cls="030200", numa=0, iommu_group=5, driver="nvidia")
    assert api.post("/v1/resource-types", json={"name": "GPU_T4", "description": "T4"}).status_code == 201
    config = parse_config(
        {
            "host": "flappy",
            "state_file": str(tmp_path / "state.json"),
            "health_interval": 60,
            "health_passes": 3,
            "device": [{"type": "GPU_T4", "match": {"vendor_id": "10de", "product_id": "1eb8"}}],
        }
    )
    clock = Clock()
    agent = in_process_agent(config, h.root, api, clock)
    assert not agent.step().errors
    spec = {"hardware_resource:GPU_T4": "1"}
    assert api.post("/v1/claims", json={"consumer": "vm-1", "extra_specs": spec}).status_code == 201
    assert [w.ok for w in agent.step().work] == [True]

    # Flaps while held: dead, answers again, dead again, answers again.
    for dead in (True, False, True, False):
        if dead:
            h.fall_off_bus(GPU)
        else:
            h.config_space(GPU, "10de", "1eb8")
        clock.now += 61
        assert not agent.step().errors
    assert _gpu(api)["healthy"] is False

    assert api.delete("/v1/allocations/vm-1").status_code == 204
    clock.now += 2
    assert [(w.action, w.ok) for w in agent.step().work] == [("cleanup", True)]
    gpu = _gpu(api)
    assert gpu["state"] == "unhealthy", gpu
    assert api.post("/v1/claims", json={"consumer": "vm-2", "extra_specs": spec}).status_code == 409

    # Enough passes in a row, and it is back.
    for _ in range(3):
        clock.now += 61
        assert not agent.step().errors
    assert _gpu(api)["state"] == "available"
