"""``GET /v1/capacity`` with more specs than a claim may hold (32) was a 500: the route built
a claim body that failed validation outside the request's validation. Now a 400 that says
the limit."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_capacity_with_33_specs_is_400(api: TestClient) -> None:
    specs = [f"hardware_resource:T{i}=1" for i in range(33)]
    r = api.get("/v1/capacity", params={"spec": specs})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_spec" and "at most 32" in err["message"]


def test_capacity_with_32_specs_answers(api: TestClient) -> None:
    for i in range(32):
        assert api.post("/v1/resource-types", json={"name": f"T{i}"}).status_code == 201
    r = api.get("/v1/capacity", params={"spec": [f"hardware_resource:T{i}=1" for i in range(32)]})
    assert r.status_code == 200, r.text
