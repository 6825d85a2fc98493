"""IOMMU group mates of *another* type than the request's, under that type's quota.

docs/cli.md (``quota set``): "the IOMMU group mates a claim takes along count as their own
type; a host whose mates would pass the limit does not fit". The claim's read loads the
project's limits of the request's own types only (``Store.prepare_claim`` ->
``types_and_limits(project, types)``), so the scheduler never sees the mate type's limit: it
may choose the host whose mates pass it, and the claim's last check then refuses the whole
claim with a 403 although another host fits within every limit.
"""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.api.test_claims_api import _claim, _report, _setup


def test_a_host_whose_mates_of_another_type_pass_the_quota_does_not_fit(api: TestClient) -> None:
    """User-visible: project p1 may hold no NVMe drive. It asks for one GPU. h1's GPU shares
    its IOMMU group with an NVMe drive (a claim of it takes the drive along); h2's GPU is alone.
    Every claim must land on h2; today a claim that the scheduler sends to h1 is refused with
    ``403 quota_exceeded`` (NVME: limit 0) although h2's GPU was free all along."""
    _setup(api, "GPU", "NVME")
    _report(
        api,
        "h1",
        [
            {"address": "0000:af:00.0", "kind": "pci", "type": "GPU", "iommu_group": 7},
            {"address": "0000:af:00.1", "kind": "pci", "type": "NVME", "iommu_group": 7},
        ],
    )
    _report(api, "h2", [{"address": "0000:af:00.0", "kind": "pci", "type": "GPU", "iommu_group": 3}])
    assert api.put("/v1/quotas/p1/NVME", json={"limit": 0}).status_code == 204
    spec = {"hardware_resource:GPU": "1"}
    for i in range(12):
        r = _claim(api, f"vm-{i}", project="p1", extra_specs=spec)
        assert r.status_code == 201, (i, r.text)
        assert r.json()["host"] == "h2"
        assert api.delete(f"/v1/allocations/vm-{i}").status_code == 204
        dev = r.json()["devices"][0]["id"]
        ok = api.post(
            "/v1/hosts/h2/work", json={"results": [{"device_id": dev, "action": "cleanup", "ok": True}]}
        )
        assert ok.status_code == 200, ok.text


def test_a_refusal_by_the_mates_alone_says_what_they_would_add(api: TestClient) -> None:
    """Only h1 (its GPU with an NVMe drive in one IOMMU group) and NVME at limit 0: the 403's
    ``requested`` names the drive the claim would take along, not nothing."""
    _setup(api, "GPU", "NVME")
    _report(
        api,
        "h1",
        [
            {"address": "0000:af:00.0", "kind": "pci", "type": "GPU", "iommu_group": 7},
            {"address": "0000:af:00.1", "kind": "pci", "type": "NVME", "iommu_group": 7},
        ],
    )
    assert api.put("/v1/quotas/p1/NVME", json={"limit": 0}).status_code == 204
    r = _claim(api, "vm-1", project="p1", extra_specs={"hardware_resource:GPU": "1"})
    assert r.status_code == 403, r.text
    error = r.json()["error"]
    assert error["code"] == "quota_exceeded"
    assert error["requested"] == {"NVME": 1}
    assert "NVME: limit 0, in use 0, this claim 1" in error["message"]
    assert "IOMMU group mates" in error["message"]
