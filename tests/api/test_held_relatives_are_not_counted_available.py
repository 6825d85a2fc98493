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


VF = "0000:3b:02.0"
SLOT = f"{VF}/vgpu/1"


def _three_levels(api: TestClient) -> None:
    """A PF, its VF, and a vGPU slot carved on the VF whose pool is the VF (the default)."""
    for name in ("G_PF", "G_VF", "G_SLOT"):
        assert api.post("/v1/resource-types", json={"name": name}).status_code == 201
    devices = [
        {"address": PF, "kind": "sriov_pf", "type": "G_PF", "iommu_group": 1},
        {"address": VF, "kind": "sriov_vf", "type": "G_VF", "parent": PF, "iommu_group": 2},
        {"address": SLOT, "kind": "mdev_type", "type": "G_SLOT", "parent": VF},
    ]
    answer = api.put("/v1/hosts/c1/inventory", json={"generation": 1, "devices": devices})
    assert answer.status_code == 200 and not answer.json()["refused"], answer.text


def _refused(api: TestClient, consumer: str, *type_names: str) -> None:
    requests = [{"name": f"r{i}", "type": t} for i, t in enumerate(type_names)]
    answer = api.post("/v1/claims", json={"consumer": consumer, "requests": requests})
    assert answer.status_code == 409, answer.text


def test_a_pf_held_whole_keeps_the_vgpu_slot_on_its_vf_from_claims(api: TestClient) -> None:
    """However deep: a slot on a VF of a PF held whole is no claim's, and is not counted."""
    _three_levels(api)
    assert _claim(api, "vm-1", "G_PF") == [PF]
    counts = _counts(api)
    assert (counts["G_SLOT"]["available"], counts["G_VF"]["available"]) == (0, 0), counts
    assert _capacity(api, "G_SLOT") == 0
    _refused(api, "vm-2", "G_SLOT")
    assert _audited(api) == []


def test_a_held_vgpu_slot_keeps_the_pf_of_its_vf_from_claims(api: TestClient) -> None:
    _three_levels(api)
    assert _claim(api, "vm-1", "G_SLOT") == [SLOT]
    counts = _counts(api)
    assert (counts["G_PF"]["available"], counts["G_PF"]["partitioned"]) == (0, 1), counts
    assert _capacity(api, "G_PF") == 0
    _refused(api, "vm-2", "G_PF")
    assert _audited(api) == []


def test_one_claim_never_holds_a_pf_and_a_slot_on_its_vf(api: TestClient) -> None:
    _three_levels(api)
    _refused(api, "vm-1", "G_PF", "G_SLOT")
    assert {d["state"] for d in api.get("/v1/devices").json()} == {"available"}


def test_a_device_that_names_itself_as_parent_is_refused(api: TestClient) -> None:
    """It could never be claimed (its parent always in the same claim): a 400, as for a pool."""
    assert api.post("/v1/resource-types", json={"name": "NIC_VF"}).status_code == 201
    device = {"address": VF, "kind": "sriov_vf", "type": "NIC_VF", "parent": VF}
    answer = api.put("/v1/hosts/c1/inventory", json={"generation": 1, "devices": [device]})
    assert answer.status_code == 400 and "its own parent" in answer.text, answer.text
