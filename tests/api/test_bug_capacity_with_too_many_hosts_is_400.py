"""``GET /v1/capacity`` with more than 1000 ``host`` parameters was a 500 (the route built a
claim body whose validation failed outside the request's validation); now a 400."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_capacity_with_1001_hosts_is_400(api: TestClient) -> None:
    assert api.post("/v1/resource-types", json={"name": "GPU"}).status_code == 201
    params = {"spec": "hardware_resource:GPU=1", "host": [f"h{i}" for i in range(1001)]}
    r = api.get("/v1/capacity", params=params)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request" and "hosts" in err["message"] and "1000" in err["message"]


def test_capacity_with_1000_hosts_answers(api: TestClient) -> None:
    assert api.post("/v1/resource-types", json={"name": "GPU"}).status_code == 201
    params = {"spec": "hardware_resource:GPU=1", "host": [f"h{i}" for i in range(1000)]}
    r = api.get("/v1/capacity", params=params)
    assert r.status_code == 200, r.text
    assert r.json()["total"] == 0
