"""A device held whole keeps its parent and its children from claims (a PF and its VFs, a VF
and the vGPU slots carved on it): the scheduler and ``capacity`` never offer them, and the
counts of ``GET /v1/resource-types`` must say so right after the claim (``partitioned``, not
``available``), not only once something recounts the host."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from tests.api.test_vf_under_a_held_vgpu_is_not_counted_available import h200_host

PF = "0000:3b:00.0"


def _counts(api: TestClient) -> dict[str, dict[str, int]]:
    return {t["name"]: t["counts"] for t in api.get("/v1/resource-types").json()}


def _capacity(api: TestClient, type_name: str) -> int:
    answer = api.get("/v1/capacity", params={"spec": f"hardware_resource:{type_name}=1"})
    assert answer.status_code == 200, answer.text
    return int(answer.json()["total"])


def _claim(api: TestClient, consumer: str, type_name: str, n: int = 1) -> list[str]:
    spec = {f"hardware_resource:{type_name}": str(n)}
    answer = api.post("/v1/claims", json={"consumer": consumer, "extra_specs": spec})
    assert answer.status_code == 201, answer.text
    return [d["address"] for d in answer.json()["devices"]]


def _audited(api: TestClient) -> list[object]:
    """What the audit finds: counts that differ from a recount of the hosts among them."""
    answer = api.get("/v1/audit")
    assert answer.status_code == 200, answer.text
    return list(answer.json()["findings"])


def _nic_host(api: TestClient) -> None:
    for name in ("NIC_PF", "NIC_VF"):
        assert api.post("/v1/resource-types", json={"name": name}).status_code == 201
    devices = [{"address": PF, "kind": "sriov_pf", "type": "NIC_PF"}] + [
        {"address": f"0000:3b:02.{i}", "kind": "sriov_vf", "type": "NIC_VF", "parent": PF} for i in range(3)
    ]
    answer = api.put("/v1/hosts/c1/inventory", json={"generation": 1, "devices": devices})
    assert answer.status_code == 200, answer.text


def test_a_pf_held_whole_takes_its_vfs_out_of_the_counts(api: TestClient) -> None:
    _nic_host(api)
    assert _claim(api, "vm-1", "NIC_PF") == [PF]
    counts = _counts(api)["NIC_VF"]
    assert (counts["available"], counts["partitioned"]) == (0, 3), counts
    assert _capacity(api, "NIC_VF") == 0
    spec = {"hardware_resource:NIC_VF": "1"}
    refused = api.post("/v1/claims", json={"consumer": "vm-2", "extra_specs": spec})
    assert refused.status_code == 409, refused.text
    # Counting the host again (as the audit would) finds nothing to repair.
    assert _audited(api) == []


def test_a_held_vf_takes_its_pf_out_of_the_counts(api: TestClient) -> None:
    _nic_host(api)
    assert _counts(api)["NIC_PF"]["available"] == 1
    _claim(api, "vm-1", "NIC_VF")
    counts = _counts(api)
    assert (counts["NIC_PF"]["available"], counts["NIC_PF"]["partitioned"]) == (0, 1), counts
    assert (counts["NIC_VF"]["available"], counts["NIC_VF"]["partitioned"]) == (2, 0), counts
    assert _capacity(api, "NIC_PF") == 0
    # A second VF changes nothing for the PF, which stays counted once.
    _claim(api, "vm-2", "NIC_VF")
    counts = _counts(api)
    assert (counts["NIC_PF"]["available"], counts["NIC_PF"]["partitioned"]) == (0, 1), counts
    assert _audited(api) == []


def test_a_vf_held_whole_takes_the_vgpu_slot_on_it_out_of_the_counts(tmp_path: Path, api: TestClient) -> None:
    """An H200 on vGPU 17+: each VF carries one slot of each vGPU type (its parent the VF,
    its pool the GPU). A VF given whole leaves its slots to nobody."""
    h200_host(tmp_path, api, "VGPU_35C")
    assert _counts(api)["VGPU_35C"]["available"] == _capacity(api, "VGPU_35C") == 4

    _claim(api, "vm-1", "NV_VF")
    counts = _counts(api)["VGPU_35C"]
    assert counts["available"] == _capacity(api, "VGPU_35C") == 3, counts
    assert counts["partitioned"] == 1
    assert _audited(api) == []
