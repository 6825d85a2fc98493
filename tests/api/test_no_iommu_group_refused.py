"""A PCI function without an IOMMU group (the IOMMU is off) is refused for the types whose
handler passes it through with VFIO; before, it was offered, every claim of it was accepted
and then its setup failed."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

NO_GROUP = {
    "address": "0000:3b:00.0",
    "kind": "pci",
    "type": "GPU_A100",
    "attributes": {"no_iommu_group": True},
}


def _type(api: TestClient, name: str, **body: Any) -> None:
    r = api.post("/v1/resource-types", json={"name": name, "description": name, **body})
    assert r.status_code == 201, r.text


def _report(api: TestClient, generation: int, devices: list[dict[str, Any]]) -> dict[str, Any]:
    r = api.put("/v1/hosts/h1/inventory", json={"generation": generation, "devices": devices})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def refused(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(x["address"], x["code"]) for x in body["refused"]]


def test_a_function_without_an_iommu_group_is_refused_for_a_vfio_type(api: TestClient) -> None:
    _type(api, "GPU_A100")
    _type(api, "NIC_VF", handler="sriov_vf")
    vf = {**NO_GROUP, "address": "0000:5e:10.0", "kind": "sriov_vf", "parent": "0000:5e:00.0"}
    vf["type"] = "NIC_VF"
    first = _report(api, 1, [NO_GROUP, vf])  # a new host's first report
    assert refused(first) == [("0000:3b:00.0", "no_iommu_group"), ("0000:5e:10.0", "no_iommu_group")]
    assert "intel_iommu=on" in first["refused"][0]["reason"]
    again = _report(api, 2, [NO_GROUP, vf])
    assert refused(again) == refused(first)
    assert api.get("/v1/devices").json() == []


def test_a_type_whose_handler_needs_no_vfio_takes_it(api: TestClient) -> None:
    _type(api, "GPU_A100", handler="noop")
    body = _report(api, 1, [NO_GROUP])
    assert body["refused"] == []
    assert [d["address"] for d in api.get("/v1/devices").json()] == ["0000:3b:00.0"]


def test_a_device_with_its_group_or_of_an_older_agent_is_taken(api: TestClient) -> None:
    _type(api, "GPU_A100")
    grouped = {**NO_GROUP, "iommu_group": 12, "attributes": {}}
    older = {**NO_GROUP, "address": "0000:af:00.0", "attributes": {}}  # no such attribute yet
    assert _report(api, 1, [grouped, older])["refused"] == []
