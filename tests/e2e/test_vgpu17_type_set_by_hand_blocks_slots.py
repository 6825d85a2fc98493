"""An operator gives a VF of a vGPU 17+ GPU (an H200) a vGPU type by hand, for a guest devassign
does not manage. The GPU runs one type at a time and has only so much framebuffer, so the
slots that type leaves impossible must not be claimed (their setups would be refused): the
VF's other slots, and on the other VFs the slots whose type they no longer list as creatable,
fail their health check while it runs. Types devassign set for its own tenants never count as
set by hand. Once the operator clears it, the slots come back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from devassign.agent.config import parse_config
from devassign.agent.worker import Agent
from devassign.lifecycle.simulated import SimulatedSysfs
from tests.e2e.agents import Clock, in_process_agent
from tests.fixtures.sysfs import host

PF = "0000:3b:00.0"
TYPES = {1428: ("NVIDIA H200X-141C", 1), 1427: ("NVIDIA H200X-70C", 2), 1425: ("NVIDIA H200X-35C", 4)}
RESOURCE = {"NVIDIA H200X-141C": "VGPU_H200_141C", "NVIDIA H200X-70C": "VGPU_H200_70C",
            "NVIDIA H200X-35C": "VGPU_H200_35C"}  # fmt: skip


def _world(tmp_path: Path, api: TestClient) -> tuple[Agent, Clock, SimulatedSysfs, list[str]]:
    h = host(tmp_path / "sys", vfio=True)
    vfs = h.vgpu_gpu(PF, vfs=4, types=TYPES, vf_iommu_group_start=40)
    for name in RESOURCE.values():
        assert api.post("/v1/resource-types", json={"name": name, "description": name}).status_code == 201
    rules: list[dict[str, Any]] = [{"type": r, "match": {"vgpu_type": n}} for n, r in RESOURCE.items()]
    config = parse_config(
        {"host": "h200-1", "device": rules, "state_file": str(tmp_path / "state.json"), "health_interval": 60}
    )
    clock = Clock()
    agent = in_process_agent(config, h.root, api, clock)
    assert not agent.step().errors
    return agent, clock, SimulatedSysfs(h.root), vfs


def _unhealthy(api: TestClient) -> dict[tuple[str, str], str]:
    return {
        (d["parent"], d["type"]): d["health_reason"]
        for d in api.get("/v1/devices", params={"host": "h200-1"}).json()
        if d["state"] == "unhealthy"
    }


def _claim(api: TestClient, consumer: str, type_name: str) -> int:
    spec = {f"hardware_resource:{type_name}": "1"}
    return api.post("/v1/claims", json={"consumer": consumer, "extra_specs": spec}).status_code


def test_a_type_set_by_hand_keeps_the_slots_it_excludes_from_claims(tmp_path: Path, api: TestClient) -> None:
    agent, clock, sysfs, vfs = _world(tmp_path, api)
    sysfs.write(f"bus/pci/devices/{vfs[0]}/nvidia/current_vgpu_type", "1425")  # a 35C, by hand
    clock.now += 61
    assert not agent.step().errors
    out = _unhealthy(api)
    # Every slot of the VF it runs on, and the 141C and 70C slots of the other VFs (the GPU
    # runs 35C now); the other VFs' 35C slots stay in service.
    expected = {(vfs[0], t) for t in RESOURCE.values()} | {
        (vf, t) for vf in vfs[1:] for t in ("VGPU_H200_141C", "VGPU_H200_70C")
    }
    assert set(out) == expected, sorted(set(out) ^ expected)
    assert all("by hand" in why for why in out.values())
    assert _claim(api, "vm-1", "VGPU_H200_70C") == 409
    assert [_claim(api, f"vm-35-{i}", "VGPU_H200_35C") for i in range(3)] == [201, 201, 201]
    clock.now += 2
    assert [w.ok for w in agent.step().work] == [True, True, True]  # none refused by the driver

    for i in range(3):
        assert api.delete(f"/v1/allocations/vm-35-{i}").status_code in (200, 204)
    clock.now += 2
    assert all(w.ok for w in agent.step().work)
    sysfs.write(f"bus/pci/devices/{vfs[0]}/nvidia/current_vgpu_type", "0")
    for _ in range(4):
        clock.now += 61
        assert not agent.step().errors
    assert _unhealthy(api) == {}


def test_types_devassign_set_are_not_set_by_hand(tmp_path: Path, api: TestClient) -> None:
    agent, clock, _sysfs, _vfs = _world(tmp_path, api)
    assert _claim(api, "vm-1", "VGPU_H200_70C") == 201
    clock.now += 2
    assert [w.ok for w in agent.step().work] == [True]
    for _ in range(2):
        clock.now += 61
        assert not agent.step().errors
    assert _unhealthy(api) == {}
    assert _claim(api, "vm-2", "VGPU_H200_70C") == 201
    clock.now += 2
    assert [w.ok for w in agent.step().work] == [True]
