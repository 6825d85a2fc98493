"""A report's integers beyond the database columns (generation: BIGINT, iommu_group:
INTEGER) are a 400 that says the range; they were a 500 (OverflowError on SQLite, "out of
range" on PostgreSQL) and the host stays as it was."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.conftest import vf


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"generation": 2**63, "devices": []}, "generation"),
        ({"generation": 2**70, "devices": []}, "generation"),
        ({"generation": 2, "devices": [vf("0000:3b:02.0", iommu_group=2**31)]}, "iommu_group"),
        ({"generation": 2, "devices": [vf("0000:3b:02.0", iommu_group=2**70)]}, "iommu_group"),
        ({"generation": 2, "devices": [vf("0000:3b:02.0", numa_node=10**30)]}, "numa_node"),
    ],
)
def test_out_of_range_report_integers_are_400(api: TestClient, body: dict[str, object], field: str) -> None:
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}).status_code == 201
    assert api.put(
        "/v1/hosts/h1/inventory", json={"generation": 1, "devices": [vf("0000:3b:02.0")]}
    ).is_success
    r = api.put("/v1/hosts/h1/inventory", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request" and field in err["message"] and "less than" in err["message"]
    assert api.get("/v1/hosts/h1").json()["generation"] == 1
    assert [d["iommu_group"] for d in api.get("/v1/devices").json()] == [None]


def test_largest_generation_and_iommu_group_are_taken(api: TestClient) -> None:
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}).status_code == 201
    body = {"generation": 2**63 - 1, "devices": [vf("0000:3b:02.0", iommu_group=2**31 - 1)]}
    r = api.put("/v1/hosts/h1/inventory", json=body)
    assert r.status_code == 200, r.text
    assert api.get("/v1/hosts/h1").json()["generation"] == 2**63 - 1
    assert api.get("/v1/devices").json()[0]["iommu_group"] == 2**31 - 1
