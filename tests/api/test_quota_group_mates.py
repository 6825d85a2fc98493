"""IOMMU group mates count against the quota in the fit as in the claim: a host whose mates
would pass the quota does not fit, and another host within it is chosen."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.api.test_claims_api import _claim, _report, _setup


def test_quota_with_group_mates_refuses_although_another_host_fits(api: TestClient) -> None:
    _setup(api, "GPU")
    # h1: two GPUs behind a switch without ACS (one IOMMU group); h2: one GPU on its own.
    _report(
        api,
        "h1",
        [
            {"address": "0000:af:00.0", "kind": "pci", "type": "GPU", "iommu_group": 7},
            {"address": "0000:b0:00.0", "kind": "pci", "type": "GPU", "iommu_group": 7},
        ],
    )
    _report(api, "h2", [{"address": "0000:af:00.0", "kind": "pci", "type": "GPU", "iommu_group": 3}])
    assert api.put("/v1/quotas/p1/GPU", json={"limit": 1}).status_code == 204
    spec = {"hardware_resource:GPU": "1"}
    explained = api.post("/v1/explain", json={"project": "p1", "extra_specs": spec}).json()
    for i in range(12):
        r = _claim(api, f"vm-{i}", project="p1", extra_specs=spec)
        # one GPU on h2 is within the quota of 1: the claim must land there
        assert r.status_code == 201, (r.text, explained)
        assert r.json()["host"] == "h2"
        assert api.delete(f"/v1/allocations/vm-{i}").status_code in (200, 204)
        dev = r.json()["devices"][0]["id"]
        ok = api.post(
            "/v1/hosts/h2/work", json={"results": [{"device_id": dev, "action": "cleanup", "ok": True}]}
        )
        assert ok.status_code == 200, ok.text
