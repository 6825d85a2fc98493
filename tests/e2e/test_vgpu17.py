"""vGPU 17 and later end to end (an H200: no mdev, a vGPU type written to each VF's
``nvidia/current_vgpu_type``): the agent over a simulated GPU whose VFs list what they can take
now, the server's API in process, claims, setups, the libvirt XML, cleanups."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from devassign.agent.config import parse_config
from tests.e2e.agents import Clock, in_process_agent
from tests.fixtures.sysfs import host

PF = "0000:3b:00.0"
TYPES = {1428: ("NVIDIA H200X-141C", 1), 1427: ("NVIDIA H200X-70C", 2), 1425: ("NVIDIA H200X-35C", 4)}
RESOURCE = {"NVIDIA H200X-141C": "VGPU_H200_141C", "NVIDIA H200X-70C": "VGPU_H200_70C",
            "NVIDIA H200X-35C": "VGPU_H200_35C"}  # fmt: skip


def _counts(api: TestClient) -> dict[str, tuple[int, int]]:
    types = api.get("/v1/resource-types").json()
    return {t["name"]: (t["counts"]["available"], t["counts"]["partitioned"]) for t in types}


def _current(root: Path, vf: str) -> str:
    return (root / "devices/pci0000:00" / vf / "nvidia/current_vgpu_type").read_text().strip()


def _claim(api: TestClient, consumer: str, type_name: str) -> Any:
    return api.post(
        "/v1/claims", json={"consumer": consumer, "extra_specs": {f"hardware_resource:{type_name}": "1"}}
    )


def test_an_h200_runs_vgpus_without_mdev(tmp_path: Path, api: TestClient) -> None:
    h = host(tmp_path / "sys", vfio=True)
    vfs = h.vgpu_gpu(PF, vfs=4, types=TYPES, vf_iommu_group_start=40)
    for name in RESOURCE.values():
        assert api.post("/v1/resource-types", json={"name": name, "description": name}).status_code == 201
    rules: list[dict[str, Any]] = [{"type": r, "match": {"vgpu_type": n}} for n, r in RESOURCE.items()]
    config = parse_config({"host": "h200-1", "device": rules, "state_file": str(tmp_path / "state.json")})
    clock = Clock()
    agent = in_process_agent(config, h.root, api, clock)
    first = agent.step()
    assert not first.errors and first.report is not None and len(first.report.added) == 12
    # Four VFs offer each type; the GPU's 141 GB hold one 141C, two 70C or four 35C.
    assert _counts(api) == {"VGPU_H200_141C": (1, 3), "VGPU_H200_70C": (2, 2), "VGPU_H200_35C": (4, 0)}
    capacity = api.get("/v1/capacity", params={"spec": "hardware_resource:VGPU_H200_70C=1"}).json()
    assert capacity["total"] == 2

    made = _claim(api, "vm-1", "VGPU_H200_70C")
    assert made.status_code == 201, made.text
    vf = next(d for d in api.get("/v1/devices").json() if d["consumer"] == "vm-1")["parent"]
    clock.now += 2
    assert [w.ok for w in agent.step().work] == [True]
    assert _current(h.root, vf) == "1427"
    xml = api.get("/v1/allocations/vm-1/libvirt").text
    bus, slot_fn = vf.split(":")[1], vf.split(":")[2]
    assert '<hostdev mode="subsystem" type="pci" managed="no">' in xml and f'bus="0x{bus}"' in xml
    assert f'slot="0x{slot_fn.split(".")[0]}"' in xml

    clock.now += 31  # the next report: the VFs now list only 70C where room is left
    assert not agent.step().errors
    assert _counts(api) == {"VGPU_H200_141C": (0, 4), "VGPU_H200_70C": (1, 2), "VGPU_H200_35C": (0, 4)}
    assert _claim(api, "vm-2", "VGPU_H200_35C").status_code == 409
    assert _claim(api, "vm-3", "VGPU_H200_70C").status_code == 201
    clock.now += 2
    assert [w.ok for w in agent.step().work] == [True]
    assert _claim(api, "vm-4", "VGPU_H200_70C").status_code == 409

    for consumer in ("vm-1", "vm-3"):
        assert api.delete(f"/v1/allocations/{consumer}").status_code in (200, 204)
    clock.now += 2
    assert [(w.action, w.ok) for w in agent.step().work] == [("cleanup", True)] * 2
    assert {_current(h.root, v) for v in vfs} == {"0"}
    clock.now += 31
    assert not agent.step().errors
    assert _counts(api) == {"VGPU_H200_141C": (1, 3), "VGPU_H200_70C": (2, 2), "VGPU_H200_35C": (4, 0)}
    assert _claim(api, "vm-5", "VGPU_H200_141C").status_code == 201
