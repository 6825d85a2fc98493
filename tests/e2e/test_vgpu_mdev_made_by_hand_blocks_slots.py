"""An operator creates a vGPU mdev by hand on a time-sliced GPU whose slots devassign offers.

The GPU runs one vGPU type at a time and has only so much framebuffer, so the slots that mdev
leaves impossible must not be claimed: a claim would get a slot whose setup the driver refuses.
Free slots the GPU cannot create now (beyond its ``available_instances``, highest first) fail
their health check while the mdev is there; the mdevs devassign made for its tenants never
count as made by hand; once the operator removes it, the slots come back.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from devassign.agent.config import parse_config
from devassign.agent.worker import Agent
from devassign.lifecycle.simulated import SimulatedSysfs
from tests.e2e.agents import Clock, in_process_agent
from tests.fixtures.sysfs import host

GPU = "0000:3b:00.0"
TYPES = {  # type id: (name, framebuffer, max instances), as the vGPU manager describes a T4's
    "nvidia-222": ("GRID T4-1B", "1024M", 16),
    "nvidia-230": ("GRID T4-4Q", "4096M", 4),
    "nvidia-231": ("GRID T4-8Q", "8192M", 2),
}
RESOURCE = {"nvidia-222": "VGPU_T4_1B", "nvidia-230": "VGPU_T4_4Q", "nvidia-231": "VGPU_T4_8Q"}
THEIRS = str(uuid.UUID(int=7))


def _world(tmp_path: Path, api: TestClient) -> tuple[Agent, Clock, SimulatedSysfs]:
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
    for name in RESOURCE.values():
        assert api.post("/v1/resource-types", json={"name": name, "description": name}).status_code == 201
    rules: list[dict[str, Any]] = [{"type": r, "match": {"mdev_type": t}} for t, r in RESOURCE.items()]
    config = parse_config(
        {"host": "gpu-1", "device": rules, "state_file": str(tmp_path / "state.json"), "health_interval": 60}
    )
    clock = Clock()
    agent = in_process_agent(config, h.root, api, clock)
    assert not agent.step().errors
    return agent, clock, SimulatedSysfs(h.root)


def _by_hand(sysfs: SimulatedSysfs, mtype: str, action: str = "create") -> None:
    types = f"bus/pci/devices/{GPU}/mdev_supported_types"
    if action == "create":
        sysfs.write(f"{types}/{mtype}/create", THEIRS)
    else:
        sysfs.write(f"bus/mdev/devices/{THEIRS}/remove", "1")


def _out_of_service(api: TestClient) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in api.get("/v1/devices", params={"host": "gpu-1"}).json():
        if d["state"] == "unhealthy":
            out[d["type"]] = out.get(d["type"], 0) + 1
    return out


def _claim(api: TestClient, consumer: str, type_name: str) -> int:
    spec = {f"hardware_resource:{type_name}": "1"}
    return api.post("/v1/claims", json={"consumer": consumer, "extra_specs": spec}).status_code


def test_an_mdev_made_by_hand_on_an_idle_gpu_keeps_the_types_it_excludes_from_claims(
    tmp_path: Path, api: TestClient
) -> None:
    agent, clock, sysfs = _world(tmp_path, api)
    _by_hand(sysfs, "nvidia-222")  # a 1B, for something on the host
    clock.now += 61
    assert not agent.step().errors
    # The GPU runs 1B now: no 4Q or 8Q can be made, and one 1B fewer.
    assert _out_of_service(api) == {"VGPU_T4_4Q": 4, "VGPU_T4_8Q": 2, "VGPU_T4_1B": 1}
    assert _claim(api, "vm-1", "VGPU_T4_4Q") == 409
    assert _claim(api, "vm-2", "VGPU_T4_1B") == 201
    clock.now += 2
    assert [w.ok for w in agent.step().work] == [True]

    _by_hand(sysfs, "nvidia-222", "remove")
    for _ in range(4):
        clock.now += 61
        assert not agent.step().errors
    assert _out_of_service(api) == {}


def test_devassigns_own_mdevs_are_not_made_by_hand_and_one_more_takes_the_last_free_slot(
    tmp_path: Path, api: TestClient
) -> None:
    agent, clock, sysfs = _world(tmp_path, api)
    assert _claim(api, "vm-1", "VGPU_T4_4Q") == 201
    clock.now += 2
    assert [w.ok for w in agent.step().work] == [True]
    clock.now += 61
    assert not agent.step().errors
    assert _out_of_service(api) == {}  # devassign's own 4Q runs: its counts keep the rest

    _by_hand(sysfs, "nvidia-230")  # a second 4Q, by hand: two 4Q are left, not three
    clock.now += 61
    assert not agent.step().errors
    assert _out_of_service(api).get("VGPU_T4_4Q") == 1
    assert [_claim(api, f"vm-{i}", "VGPU_T4_4Q") for i in (2, 3, 4)] == [201, 201, 409]
    clock.now += 2
    assert [w.ok for w in agent.step().work] == [True, True]  # no setup the driver refuses
