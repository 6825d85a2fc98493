"""Intel GVT-g: an iGPU's mdev types draw on one aperture and set of fences, and each type's
``available_instances`` is what is left for that type alone (2 x V5_4 or 4 x V5_8, never both).
The agent reports another vendor's types of one parent as modes of it, one at a time, so the
two types' full counts are never handed out together."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from devassign.agent.config import parse_config
from devassign.agent.inventory import build_inventory
from devassign.hostio import Sysfs
from tests.fixtures.sysfs import host

IGPU = "0000:00:02.0"
DESC4 = "low_gm_size: 128MB\nhigh_gm_size: 512MB\nfence: 4\nresolution: 1920x1200\nweight: 4"
DESC8 = "low_gm_size: 64MB\nhigh_gm_size: 384MB\nfence: 4\nresolution: 1024x768\nweight: 2"


def test_two_gvtg_types_of_one_gpu_are_never_held_together(tmp_path: Path, api: TestClient) -> None:
    h = host(tmp_path / "sys", vfio=True)
    h.mdev_parent(
        IGPU,
        "8086",
        "5912",
        driver="i915",
        cls="030000",
        iommu_group=1,
        types={
            "i915-GVTg_V5_4": {"name": "GVTg_V5_4", "available": 2, "description": DESC4},
            "i915-GVTg_V5_8": {"name": "GVTg_V5_8", "available": 4, "description": DESC8},
        },
    )
    rules = [
        {"type": "GVTG_4", "match": {"mdev_type": "i915-GVTg_V5_4"}},
        {"type": "GVTG_8", "match": {"mdev_type": "i915-GVTg_V5_8"}},
    ]
    config = parse_config({"host": "h", "device": rules})
    reported = build_inventory(Sysfs(h.root), config, None, None).reported()
    assert {(d.pool, d.mode) for d in reported} == {(IGPU, "i915-GVTg_V5_4"), (IGPU, "i915-GVTg_V5_8")}
    for name in ("GVTG_4", "GVTG_8"):
        assert api.post("/v1/resource-types", json={"name": name}).status_code == 201
    body = {"generation": 1, "devices": [d.model_dump(mode="json") for d in reported]}
    r = api.put("/v1/hosts/h1/inventory", json=body)
    assert r.status_code == 200 and not r.json()["refused"], r.text

    def claim(consumer: str, spec: str) -> int:
        r = api.post("/v1/claims", json={"consumer": consumer, "extra_specs": spec_of(spec)})
        return r.status_code

    def spec_of(spec: str) -> dict[str, str]:
        name, n = spec.split("=")
        return {f"hardware_resource:{name}": n}

    assert claim("vm-a", "GVTG_4=1") == 201
    assert claim("vm-b", "GVTG_8=1") == 409  # the GPU runs V5_4 now
    counts = {t["name"]: t["counts"] for t in api.get("/v1/resource-types").json()}
    assert counts["GVTG_4"]["available"] == 1 and counts["GVTG_8"]["available"] == 0, counts
    assert claim("vm-c", "GVTG_4=1") == 201
    assert claim("vm-d", "GVTG_4=1") == 409  # two were all it offered
