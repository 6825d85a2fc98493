"""An H200 on vGPU 17+ whose VFs are offered both as vGPUs and whole: while a vGPU of a VF is
held (or cleaned), the VF is no claim's (the scheduler and ``capacity`` knew), and ``types``
must not count it ``available`` either."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from devassign.agent.config import parse_config
from devassign.agent.inventory import build_inventory
from devassign.hostio import Sysfs
from tests.fixtures.sysfs import host


def _counts(api: TestClient) -> dict[str, dict[str, int]]:
    return {t["name"]: t["counts"] for t in api.get("/v1/resource-types").json()}


def h200_host(tmp_path: Path, api: TestClient, vgpu_type: str) -> None:
    """Host h1: an H200 on vGPU 17+ with 4 VFs, reported by the agent's discovery with two
    types: ``vgpu_type`` (``VGPU_70C`` or ``VGPU_35C``, its slots) and ``NV_VF`` (the VFs whole)."""
    h = host(tmp_path / "sys", vfio=True)
    types = {1428: ("NVIDIA H200X-141C", 1), 1427: ("NVIDIA H200X-70C", 2), 1426: ("NVIDIA H200X-35C", 4)}
    h.vgpu_gpu("0000:3b:00.0", "2335", vfs=4, iommu_group=10, vf_iommu_group_start=20, types=types)
    rules = [
        {"type": vgpu_type, "match": {"vgpu_type": f"NVIDIA H200X-{vgpu_type.removeprefix('VGPU_')}"}},
        {"type": "NV_VF", "match": {"kind": "sriov_vf", "vendor_id": "10de"}},
    ]
    config = parse_config({"host": "h", "device": rules})
    reported = build_inventory(Sysfs(h.root), config, None, {}).reported()
    for name in (vgpu_type, "NV_VF"):
        assert api.post("/v1/resource-types", json={"name": name}).status_code == 201
    body = {"generation": 1, "devices": [d.model_dump(mode="json") for d in reported]}
    assert api.put("/v1/hosts/h1/inventory", json=body).status_code == 200


def test_a_vf_whose_vgpu_is_held_is_not_available(tmp_path: Path, api: TestClient) -> None:
    h200_host(tmp_path, api, "VGPU_70C")
    assert _counts(api)["NV_VF"]["available"] == 4

    spec = {"hardware_resource:VGPU_70C": "2"}
    assert api.post("/v1/claims", json={"consumer": "vm1", "extra_specs": spec}).status_code == 201
    capacity = api.get("/v1/capacity", params={"spec": "hardware_resource:NV_VF=1"}).json()
    counts = _counts(api)["NV_VF"]
    assert counts["available"] == capacity["total"] == 2, (counts, capacity)
    assert counts["partitioned"] == 2

    # Released, the vGPUs are cleaned first: their VFs stay out until then, in both.
    assert api.delete("/v1/allocations/vm1").status_code in (200, 204)
    capacity = api.get("/v1/capacity", params={"spec": "hardware_resource:NV_VF=1"}).json()
    assert _counts(api)["NV_VF"]["available"] == capacity["total"] == 2
