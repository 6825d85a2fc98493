"""vGPU 17+: an operator writes a vGPU type to a free VF's ``nvidia/current_vgpu_type`` by hand
(for a guest devassign does not manage). The device for that VF and type is one nobody was
given: its health check says so, no claim gets it, and no tenant's setup adopts the VF nor
its cleanup takes the type away from under the operator's guest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from devassign.agent.config import parse_config
from tests.e2e.agents import Clock, in_process_agent
from tests.fixtures.sysfs import host

PF = "0000:3b:00.0"
TYPES = {1428: ("NVIDIA H200X-141C", 1), 1427: ("NVIDIA H200X-70C", 2)}


def _current(root: Path, vf: str) -> str:
    return (root / "devices/pci0000:00" / vf / "nvidia/current_vgpu_type").read_text().strip()


def test_a_vf_given_a_vgpu_type_by_hand_is_not_handed_out(tmp_path: Path, api: TestClient) -> None:
    h = host(tmp_path / "sys", vfio=True)
    vfs = h.vgpu_gpu(PF, vfs=2, types=TYPES, vf_iommu_group_start=40)
    assert api.post("/v1/resource-types", json={"name": "V70", "description": "70C"}).status_code == 201
    rules: list[dict[str, Any]] = [{"type": "V70", "match": {"vgpu_type": "NVIDIA H200X-70C"}}]
    config = parse_config(
        {"host": "h200-1", "device": rules, "state_file": str(tmp_path / "state.json"), "health_interval": 60}
    )
    clock = Clock()
    agent = in_process_agent(config, h.root, api, clock)
    assert not agent.step().errors

    mine = f"{vfs[0]}/vgpu/1427"
    (h.root / "devices/pci0000:00" / vfs[0] / "nvidia/current_vgpu_type").write_text("1427\n")
    clock.now += 61
    assert not agent.step().errors
    dev = next(d for d in api.get("/v1/devices", params={"host": "h200-1"}).json() if d["address"] == mine)
    assert (dev["state"], dev["healthy"]) == ("unhealthy", False), dev
    assert "nobody" in dev["health_reason"]

    made = api.post("/v1/claims", json={"consumer": "vm-1", "extra_specs": {"hardware_resource:V70": "1"}})
    assert made.status_code == 201, made.text
    assert made.json()["devices"][0]["address"] == f"{vfs[1]}/vgpu/1427"
    clock.now += 2
    assert [w.ok for w in agent.step().work] == [True]
    assert api.delete("/v1/allocations/vm-1").status_code == 204
    clock.now += 2
    assert [(w.action, w.ok) for w in agent.step().work] == [("cleanup", True)]
    assert (_current(h.root, vfs[0]), _current(h.root, vfs[1])) == ("1427", "0")
