"""vGPU 17+: an operator gives a free VF another vGPU type by hand. A tenant's claim of one of
that VF's devassign types fails at setup (the VF runs another type) and says so; the cleanup
that follows never set anything on the VF, so it leaves the operator's type as it is instead
of writing 0 over it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from devassign.agent.config import parse_config
from tests.e2e.agents import Clock, in_process_agent
from tests.fixtures.sysfs import host

PF = "0000:3b:00.0"
TYPES = {1427: ("NVIDIA H200X-70C", 2), 1425: ("NVIDIA H200X-35C", 4)}


def test_the_cleanup_after_a_failed_setup_leaves_a_vgpu_type_set_by_hand(
    tmp_path: Path, api: TestClient
) -> None:
    h = host(tmp_path / "sys", vfio=True)
    (vf,) = h.vgpu_gpu(PF, vfs=1, types=TYPES, vf_iommu_group_start=40)
    assert api.post("/v1/resource-types", json={"name": "V70", "description": "70C"}).status_code == 201
    rules: list[dict[str, Any]] = [{"type": "V70", "match": {"vgpu_type": "NVIDIA H200X-70C"}}]
    config = parse_config({"host": "h200-1", "device": rules, "state_file": str(tmp_path / "state.json")})
    clock = Clock()
    agent = in_process_agent(config, h.root, api, clock)
    assert not agent.step().errors

    current = h.root / "devices/pci0000:00" / vf / "nvidia/current_vgpu_type"
    current.write_text("1425\n")  # by hand, for a guest devassign does not manage

    made = api.post("/v1/claims", json={"consumer": "vm-1", "extra_specs": {"hardware_resource:V70": "1"}})
    assert made.status_code == 201, made.text
    clock.now += 2
    done = agent.step().work
    assert (done[0].action, done[0].ok) == ("setup", False)
    assert "already runs vGPU type 1425" in (done[0].error or "")
    clock.now += 2
    agent.step()
    assert current.read_text().strip() == "1425", "the cleanup wrote over the operator's vGPU type"
    events = api.get("/v1/events", params={"consumer": "vm-1"}).json()
    assert any(e["action"] == "device_setup_failed" and "1425" in e["message"] for e in events)
