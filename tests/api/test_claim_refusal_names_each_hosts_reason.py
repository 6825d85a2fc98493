"""A claim that cannot be placed answers why, and for each host it names the reason that host
failed: the same as explain's, not "unknown" for a known host that is down or short."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.conftest import Clock, vf


def gpu(address: str) -> dict[str, Any]:
    return {
        "address": address,
        "kind": "pci",
        "type": "GPU_A100",
        "vendor_id": "10de",
        "product_id": "20b0",
        "numa_node": 0,
        "iommu_group": None,
        "driver": "vfio-pci",
        "parent": None,
        "attributes": {},
    }


def _setup(api: TestClient) -> None:
    for t in ("GPU_A100", "NIC_VF_1G"):
        assert api.post("/v1/resource-types", json={"name": t}).status_code == 201
    for host, devices in (("compute-1", [gpu("0000:3b:00.0")]), ("compute-2", [vf("0000:5e:02.1")])):
        r = api.put(f"/v1/hosts/{host}/inventory", json={"generation": 1, "devices": devices})
        assert r.status_code == 200 and not r.json()["refused"], r.text


def _named_host_verdict(api: TestClient, path: str, host: str) -> dict[str, Any]:
    body = {"consumer": "vm-1", "requests": [{"name": "gpu", "type": "GPU_A100"}], "hosts": [host]}
    r = api.post(path, json=body)
    exp = r.json()["error"]["explanation"] if path == "/v1/claims" else r.json()
    if path == "/v1/claims":
        assert r.status_code == 409, r.text
    return next(h for h in exp["hosts"] if h["host"] == host)


def test_a_refused_claim_gives_the_named_hosts_real_reason(api: TestClient) -> None:
    # compute-2 is known, up and has devices, but no GPU_A100: explain says not_enough_free;
    # the claim's own answer must say the same, not that the host is unknown.
    _setup(api)
    assert _named_host_verdict(api, "/v1/explain", "compute-2")["reason"] == "not_enough_free"
    verdict = _named_host_verdict(api, "/v1/claims", "compute-2")
    assert verdict["reason"] == "not_enough_free", verdict


def test_a_refused_claim_says_a_named_host_is_down(api: TestClient, clock: Clock) -> None:
    _setup(api)
    clock.advance(200)  # both hosts stop reporting: down after 90 s
    r = api.put("/v1/hosts/compute-2/inventory", json={"generation": 2, "devices": [vf("0000:5e:02.1")]})
    assert r.status_code == 200
    assert _named_host_verdict(api, "/v1/explain", "compute-1")["reason"] == "host_down"
    verdict = _named_host_verdict(api, "/v1/claims", "compute-1")
    assert verdict["reason"] == "host_down", verdict
