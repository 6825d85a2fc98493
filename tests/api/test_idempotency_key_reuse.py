"""An idempotency key names one request: resending it answers the allocation it made, but the
same key with another request is refused (409 ``idempotency_key_reused``), whether the cloud
still has room (the claim's own transaction finds the replay) or not (the refusal path looks
for it), for single claims and for gangs, and nothing is taken or released by the refusal."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.conftest import vf


def _setup(api: TestClient, n: int) -> None:
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}).status_code == 201
    devices = [vf(f"0000:3b:02.{i}") for i in range(n)]
    r = api.put("/v1/hosts/c1/inventory", json={"generation": 1, "devices": devices})
    assert r.status_code == 200, r.text


def _claim(api: TestClient, n: int, **body: Any) -> Any:
    spec = {"extra_specs": {"hardware_resource:NIC_VF_1G": str(n)}}
    return api.post("/v1/claims", json={"consumer": "vm-1", "idempotency_key": "k1", **spec, **body})


def _reserved(api: TestClient) -> int:
    return sum(1 for d in api.get("/v1/devices").json() if d["state"] == "reserved")


def test_the_same_key_with_another_count_is_refused_and_the_allocation_stays(api: TestClient) -> None:
    _setup(api, 4)
    first = _claim(api, 1)
    assert first.status_code == 201, first.text
    # Room for two more: the claim's transaction meets the live allocation.
    other = _claim(api, 2)
    assert other.status_code == 409, other.text
    error = other.json()["error"]
    assert error["code"] == "idempotency_key_reused"
    assert "k1" in error["message"] and "new key" in error["message"]
    # No room for ten: the refusal path meets it.
    too_many = _claim(api, 10)
    assert too_many.status_code == 409 and too_many.json()["error"]["code"] == "idempotency_key_reused"
    # Any other field counts too: the same count pinned to a host is another request.
    pinned = _claim(api, 1, hosts=["c1"])
    assert pinned.status_code == 409 and pinned.json()["error"]["code"] == "idempotency_key_reused"
    # The true replay still answers the allocation, and nothing moved.
    again = _claim(api, 1)
    assert again.status_code == 200 and again.json()["devices"] == first.json()["devices"]
    assert _reserved(api) == 1


def test_the_same_key_after_a_release_claims_again(api: TestClient) -> None:
    _setup(api, 4)
    assert _claim(api, 1).status_code == 201
    assert api.delete("/v1/allocations/vm-1").status_code == 204
    # Nothing live: the key names no allocation any more, a new request is a new claim.
    r = _claim(api, 2)
    assert r.status_code == 201, r.text
    assert len(r.json()["devices"]) == 2


def test_a_gang_resent_with_another_request_is_refused(api: TestClient) -> None:
    _setup(api, 8)
    body: dict[str, Any] = {
        "instances": ["vm-1", "vm-2"],
        "extra_specs": {"hardware_resource:NIC_VF_1G": "1"},
        "idempotency_key": "job-1",
    }
    made = api.post("/v1/gangs", json=body)
    assert made.status_code == 201, made.text
    other = api.post("/v1/gangs", json={**body, "extra_specs": {"hardware_resource:NIC_VF_1G": "2"}})
    assert other.status_code == 409, other.text
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    again = api.post("/v1/gangs", json=body)
    assert again.status_code == 200 and again.json() == made.json()
    assert _reserved(api) == 2
