"""A time-sliced NVIDIA GPU end to end: the agent over a simulated T4 whose driver behaves as the
vGPU manager's (one vGPU type at a time: creating a 4Q makes every other type show 0 available
instances), the server's API in process, claims, setups that create the mdevs, cleanups.

The slots stay what the GPU offers when empty, whatever runs now, so no device comes and goes
with the mode; the server knows what fits from the pool's counters and mode, and a setup never
meets a type the driver would refuse.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from devassign.agent.config import parse_config
from tests.e2e.agents import Clock, in_process_agent
from tests.fixtures.sysfs import host

GPU = "0000:3b:00.0"
TYPES = {  # type id: (name, framebuffer, max instances), as the vGPU manager describes a T4's
    "nvidia-222": ("GRID T4-1B", "1024M", 16),
    "nvidia-230": ("GRID T4-4Q", "4096M", 4),
    "nvidia-231": ("GRID T4-8Q", "8192M", 2),
}
RESOURCE = {"nvidia-222": "VGPU_T4_1B", "nvidia-230": "VGPU_T4_4Q", "nvidia-231": "VGPU_T4_8Q"}


def _description(fb: str, most: int) -> str:
    return f"num_heads=4, frl_config=60, framebuffer={fb}, max_resolution=5120x2880, max_instance={most}"


def _counts(api: TestClient) -> dict[str, tuple[int, int]]:
    return {
        t["name"]: (t["counts"]["available"], t["counts"]["partitioned"])
        for t in api.get("/v1/resource-types").json()
    }


def _available_instances(root: Path) -> dict[str, int]:
    base = root / "devices/pci0000:00" / GPU / "mdev_supported_types"
    return {t: int((base / t / "available_instances").read_text()) for t in TYPES}


def test_a_t4_runs_one_vgpu_type_from_discovery_to_cleanup(tmp_path: Path, api: TestClient) -> None:
    h = host(tmp_path / "sys", vfio=True)
    h.mdev_parent(
        GPU,
        types={
            t: {"name": name, "available": most, "description": _description(fb, most)}
            for t, (name, fb, most) in TYPES.items()
        },
        iommu_group=12,
    )
    for name in RESOURCE.values():
        assert api.post("/v1/resource-types", json={"name": name, "description": name}).status_code == 201
    rules: list[dict[str, Any]] = [{"type": r, "match": {"mdev_type": t}} for t, r in RESOURCE.items()]
    config = parse_config({"host": "gpu-1", "device": rules, "state_file": str(tmp_path / "state.json")})
    clock = Clock()
    agent = in_process_agent(config, h.root, api, clock)
    assert not agent.step().errors
    assert _counts(api) == {"VGPU_T4_1B": (16, 0), "VGPU_T4_4Q": (4, 0), "VGPU_T4_8Q": (2, 0)}
    slot = api.get("/v1/devices", params={"type": "VGPU_T4_4Q"}).json()[0]
    assert (slot["pool"], slot["pool_counters"], slot["consumes"], slot["mode"]) == (
        GPU,
        {"framebuffer_mb": 16384},
        {"framebuffer_mb": 4096},
        "GRID T4-4Q",
    )

    def claim(consumer: str, type_name: str) -> int:
        r = api.post(
            "/v1/claims", json={"consumer": consumer, "extra_specs": {f"hardware_resource:{type_name}": "1"}}
        )
        return r.status_code

    assert claim("vm-1", "VGPU_T4_4Q") == 201
    clock.now += 2
    assert [w.ok for w in agent.step().work] == [True]
    assert _available_instances(h.root) == {"nvidia-222": 0, "nvidia-230": 3, "nvidia-231": 0}
    clock.now += 31  # the next full report: the same slots, nothing removed or added
    out = agent.step()
    assert out.report is not None and not out.report.removed and not out.report.added
    assert _counts(api) == {"VGPU_T4_1B": (0, 16), "VGPU_T4_4Q": (3, 0), "VGPU_T4_8Q": (0, 2)}
    assert claim("vm-2", "VGPU_T4_1B") == 409

    for i in range(3):
        assert claim(f"vm-4q-{i}", "VGPU_T4_4Q") == 201
    clock.now += 2
    assert [w.ok for w in agent.step().work] == [True, True, True]
    assert _available_instances(h.root)["nvidia-230"] == 0
    assert claim("vm-5", "VGPU_T4_4Q") == 409

    for consumer in ("vm-1", "vm-4q-0", "vm-4q-1", "vm-4q-2"):
        assert api.delete(f"/v1/allocations/{consumer}").status_code in (200, 204)
    clock.now += 2
    assert [w.action for w in agent.step().work] == ["cleanup"] * 4
    assert _available_instances(h.root) == {"nvidia-222": 16, "nvidia-230": 4, "nvidia-231": 2}
    assert _counts(api) == {"VGPU_T4_1B": (16, 0), "VGPU_T4_4Q": (4, 0), "VGPU_T4_8Q": (2, 0)}
    assert claim("vm-6", "VGPU_T4_8Q") == 201
