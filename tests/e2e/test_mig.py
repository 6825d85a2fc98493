"""MIG end to end on an A100 80GB: the agent offers every placement of the GPU's memory slices
(from the built-in table), the scheduler never overlaps them and places small instances where
they leave the largest ones possible, setup creates the GPU instance through ``nvidia-smi mig``
(a fake that keeps state like the real one), cleanup destroys it, and the GPU is whole or in
MIG instances, never both."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from devassign.agent.config import parse_config
from devassign.lifecycle.host import HostOps, RecordingNetlink
from devassign.lifecycle.simulated import SimulatedSysfs
from devassign.testing.nvidia_smi import FakeNvidiaSmi
from tests.e2e.agents import Clock, in_process_agent
from tests.fixtures.sysfs import host

GPU = "0000:3b:00.0"
PROFILES = {
    "1g.10gb": "MIG_1G",
    "2g.20gb": "MIG_2G",
    "3g.40gb": "MIG_3G",
    "4g.40gb": "MIG_4G",
    "7g.80gb": "MIG_7G",
}


def _available(api: TestClient) -> dict[str, int]:
    return {t["name"]: t["counts"]["available"] for t in api.get("/v1/resource-types").json()}


def _claim(api: TestClient, consumer: str, type_name: str) -> Any:
    return api.post(
        "/v1/claims", json={"consumer": consumer, "extra_specs": {f"hardware_resource:{type_name}": "1"}}
    )


def _capacity(api: TestClient, type_name: str) -> int:
    total: int = api.get("/v1/capacity", params={"spec": f"hardware_resource:{type_name}=1"}).json()["total"]
    return total


def test_mig_placements_from_discovery_to_cleanup(tmp_path: Path, api: TestClient) -> None:
    h = host(tmp_path / "sys", vfio=True)
    h.pci(GPU, "10de", "20b2", cls="030200", numa=0, iommu_group=12, driver="nvidia")
    smi = FakeNvidiaSmi(tmp_path / "smi.json", {GPU: "20b2"})
    for name in ("GPU_A100", *PROFILES.values()):
        assert api.post("/v1/resource-types", json={"name": name, "description": name}).status_code == 201
    rules: list[dict[str, Any]] = [{"type": t, "match": {"mig_profile": p}} for p, t in PROFILES.items()]
    rules.append({"type": "GPU_A100", "match": {"vendor_id": "10de", "product_id": "20b2"}})
    config = parse_config({"host": "a100-1", "device": rules, "state_file": str(tmp_path / "state.json")})
    clock = Clock()
    agent = in_process_agent(
        config, h.root, api, clock, ops=HostOps(SimulatedSysfs(h.root), RecordingNetlink(), smi)
    )
    assert not agent.step().errors
    empty = {"GPU_A100": 1, "MIG_1G": 7, "MIG_2G": 3, "MIG_3G": 2, "MIG_4G": 1, "MIG_7G": 1}
    assert _available(api) == empty
    assert {t: _capacity(api, t) for t in PROFILES.values()} == {
        "MIG_1G": 7, "MIG_2G": 3, "MIG_3G": 2, "MIG_4G": 1, "MIG_7G": 1,
    }  # fmt: skip

    # A 1g goes where it costs the larger profiles least: the last slice a 1g can take.
    made = _claim(api, "job-1", "MIG_1G")
    assert made.status_code == 201, made.text
    assert made.json()["devices"][0]["address"] == f"{GPU}/mig/1g.10gb@6"
    clock.now += 2
    assert [w.ok for w in agent.step().work] == [True]
    assert [(i.profile_id, i.start) for i in smi.instances(GPU)] == [(19, 6)]
    assert _available(api) == {"GPU_A100": 0, "MIG_1G": 6, "MIG_2G": 3, "MIG_3G": 1, "MIG_4G": 1, "MIG_7G": 0}
    assert _capacity(api, "MIG_3G") == 1

    assert _claim(api, "job-2", "MIG_4G").status_code == 201  # slices 0-3
    assert _claim(api, "job-3", "MIG_3G").status_code == 409  # 3g@0 overlaps it, 3g@4 the 1g
    assert _claim(api, "job-4", "MIG_2G").status_code == 201  # 2g@4: slices 4-5
    assert _claim(api, "whole", "GPU_A100").status_code == 409
    clock.now += 2
    assert [w.ok for w in agent.step().work] == [True, True]
    assert sorted((i.profile_id, i.start) for i in smi.instances(GPU)) == [(5, 0), (14, 4), (19, 6)]
    assert _available(api) == {"GPU_A100": 0, "MIG_1G": 0, "MIG_2G": 0, "MIG_3G": 0, "MIG_4G": 0, "MIG_7G": 0}

    for consumer in ("job-1", "job-2", "job-4"):
        assert api.delete(f"/v1/allocations/{consumer}").status_code in (200, 204)
    clock.now += 2
    assert [(w.action, w.ok) for w in agent.step().work] == [("cleanup", True)] * 3
    assert smi.instances(GPU) == []
    assert _available(api) == empty
    assert _claim(api, "job-5", "MIG_7G").status_code == 201
    clock.now += 2
    assert [w.ok for w in agent.step().work] == [True]
    assert [(i.profile_id, i.start) for i in smi.instances(GPU)] == [(0, 0)]


def test_b200_placements_go_by_profile_name(tmp_path: Path, api: TestClient) -> None:
    """A B200: its profiles' nvidia-smi ids are not published, so its slots carry the profile
    name, setup creates ``-cgi 3g.90gb:4`` and cleanup finds the instance by name and start."""
    h = host(tmp_path / "sys", vfio=True)
    h.pci(GPU, "10de", "2901", cls="030200", numa=0, iommu_group=12, driver="nvidia")
    smi = FakeNvidiaSmi(tmp_path / "smi.json", {GPU: "2901"})
    profiles = {"1g.23gb": "B200_1G", "3g.90gb": "B200_3G", "7g.180gb": "B200_7G"}
    for name in profiles.values():
        assert api.post("/v1/resource-types", json={"name": name, "description": name}).status_code == 201
    rules: list[dict[str, Any]] = [{"type": t, "match": {"mig_profile": p}} for p, t in profiles.items()]
    config = parse_config({"host": "b200-1", "device": rules, "state_file": str(tmp_path / "state.json")})
    clock = Clock()
    agent = in_process_agent(
        config, h.root, api, clock, ops=HostOps(SimulatedSysfs(h.root), RecordingNetlink(), smi)
    )
    assert not agent.step().errors
    assert _available(api) == {"B200_1G": 7, "B200_3G": 2, "B200_7G": 1}

    assert _claim(api, "train", "B200_3G").status_code == 201
    assert _claim(api, "eval", "B200_3G").status_code == 201
    # Two 3g take all eight memory slices: the seventh compute slice is left, but no memory.
    assert _capacity(api, "B200_1G") == 0 and _capacity(api, "B200_7G") == 0
    clock.now += 2
    assert [w.ok for w in agent.step().work] == [True, True]
    assert sorted(i.start for i in smi.instances(GPU)) == [0, 4]
    assert {c.argv[-2] for c in smi.calls if "-cgi" in c.argv} == {"3g.90gb:0", "3g.90gb:4"}
    for consumer in ("train", "eval"):
        assert api.delete(f"/v1/allocations/{consumer}").status_code == 204
    clock.now += 2
    assert [(w.action, w.ok) for w in agent.step().work] == [("cleanup", True)] * 2
    assert smi.instances(GPU) == []
    assert _available(api) == {"B200_1G": 7, "B200_3G": 2, "B200_7G": 1}
