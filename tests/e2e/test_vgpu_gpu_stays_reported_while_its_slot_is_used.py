"""A time-sliced GPU offered whole and in vGPU slots, while one of its slots is in use.

The mdev the agent makes for a held slot is its own: the GPU stays in the report, and the
server counts it ``partitioned`` (its slot is held) for as long as the slot is used, instead of
retiring it (``removed``) and adding it back after the cleanup, which made the type's totals
jump with every vGPU. A whole-GPU claim gets nothing meanwhile. An mdev made by someone else
still keeps the GPU out of the report (``mdev_in_use``).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from devassign.agent.config import parse_config
from devassign.agent.worker import Agent
from tests.e2e.agents import Clock, in_process_agent
from tests.fixtures.sysfs import host

GPU = "0000:3b:00.0"
TYPES = {  # type id: (name, framebuffer, max instances), as the vGPU manager describes a T4's
    "nvidia-222": ("GRID T4-1B", "1024M", 16),
    "nvidia-230": ("GRID T4-4Q", "4096M", 4),
}
RESOURCE = {"nvidia-222": "VGPU_T4_1B", "nvidia-230": "VGPU_T4_4Q"}


def _world(tmp_path: Path, api: TestClient) -> tuple[Agent, Clock]:
    h = host(tmp_path / "sys", vfio=True)
    h.mdev_parent(
        GPU,
        types={
            t: {
                "name": name,
                "available": most,
                "description": f"num_heads=4, frl_config=60, framebuffer={fb}, "
                f"max_resolution=5120x2880, max_instance={most}",
            }
            for t, (name, fb, most) in TYPES.items()
        },
        iommu_group=12,
    )
    for name in [*RESOURCE.values(), "GPU_T4"]:
        assert api.post("/v1/resource-types", json={"name": name, "description": name}).status_code == 201
    rules: list[dict[str, Any]] = [{"type": r, "match": {"mdev_type": t}} for t, r in RESOURCE.items()]
    rules.append({"type": "GPU_T4", "match": {"vendor_id": "10de", "product_id": "1eb8"}})
    config = parse_config({"host": "gpu-1", "device": rules, "state_file": str(tmp_path / "state.json")})
    clock = Clock()
    agent = in_process_agent(config, h.root, api, clock)
    assert not agent.step().errors
    return agent, clock


def _gpu_counts(api: TestClient) -> dict[str, int]:
    (t,) = [t for t in api.get("/v1/resource-types").json() if t["name"] == "GPU_T4"]
    return {k: v for k, v in t["counts"].items() if v}


def _gpu(api: TestClient) -> dict[str, Any]:
    (d,) = [d for d in api.get("/v1/devices", params={"host": "gpu-1"}).json() if d["address"] == GPU]
    return d


def _claim(api: TestClient, consumer: str, type_name: str) -> int:
    spec = {f"hardware_resource:{type_name}": "1"}
    return api.post("/v1/claims", json={"consumer": consumer, "extra_specs": spec}).status_code


def _step(agent: Agent, clock: Clock, seconds: float) -> Any:
    clock.now += seconds
    out = agent.step()
    assert not out.errors, out.errors
    return out


def test_the_gpu_of_a_used_vgpu_slot_stays_reported_and_counts_as_partitioned(
    tmp_path: Path, api: TestClient
) -> None:
    agent, clock = _world(tmp_path, api)
    assert _gpu_counts(api) == {"total": 1, "available": 1}

    assert _claim(api, "vm-1", "VGPU_T4_4Q") == 201
    assert [w.ok for w in _step(agent, clock, 2).work] == [True]  # its mdev is made
    assert len(agent.ops.sysfs.listdir("bus/mdev/devices")) == 1
    for _ in range(3):  # full reports while the slot is used: the GPU stays, carved
        out = _step(agent, clock, 40)
        assert out.report is not None and GPU not in out.report.removed
        assert _gpu(api)["state"] == "available"
        assert _gpu_counts(api) == {"total": 1, "partitioned": 1}
    assert _claim(api, "vm-whole", "GPU_T4") == 409  # never the GPU whole beside its slot

    assert api.delete("/v1/allocations/vm-1").status_code in (200, 204)
    assert [w.action for w in _step(agent, clock, 2).work] == ["cleanup"]
    assert agent.ops.sysfs.listdir("bus/mdev/devices") == []
    _step(agent, clock, 40)
    assert _gpu_counts(api) == {"total": 1, "available": 1}
    events = api.get("/v1/events", params={"device": GPU}).json()
    assert not [e for e in events if e["action"] == "device_removed"], events

    assert _claim(api, "vm-whole", "GPU_T4") == 201  # free again: the whole GPU goes out
    assert [w.ok for w in _step(agent, clock, 2).work] == [True]


def test_an_mdev_made_by_someone_else_keeps_the_gpu_out_of_the_report(
    tmp_path: Path, api: TestClient
) -> None:
    agent, clock = _world(tmp_path, api)
    sysfs = agent.ops.sysfs
    theirs = str(uuid.UUID(int=7))
    sysfs.write(f"bus/pci/devices/{GPU}/mdev_supported_types/nvidia-230/create", theirs)
    _step(agent, clock, 40)
    assert _gpu(api)["state"] == "removed"
    assert _claim(api, "vm-whole", "GPU_T4") == 409

    # ... and beside one of the agent's own, too
    sysfs.write(f"bus/mdev/devices/{theirs}/remove", "1")
    _step(agent, clock, 40)
    assert _gpu(api)["state"] == "available"
    assert _claim(api, "vm-1", "VGPU_T4_4Q") == 201
    assert [w.ok for w in _step(agent, clock, 2).work] == [True]
    _step(agent, clock, 40)
    assert _gpu_counts(api) == {"total": 1, "partitioned": 1}
    sysfs.write(f"bus/pci/devices/{GPU}/mdev_supported_types/nvidia-230/create", theirs)
    _step(agent, clock, 40)
    assert _gpu(api)["state"] == "removed"
