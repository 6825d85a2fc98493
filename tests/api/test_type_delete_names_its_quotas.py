"""Deleting a type removes the quotas set on it; the operator is told which, in the event."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_deleting_a_type_says_which_quotas_went_with_it(api: TestClient) -> None:
    assert api.post("/v1/resource-types", json={"name": "GPU"}).status_code == 201
    assert api.post("/v1/resource-types", json={"name": "FPGA"}).status_code == 201
    for project, limit in (("p1", 2), ("p2", 0)):
        assert api.put(f"/v1/quotas/{project}/GPU", json={"limit": limit}).status_code == 204
    assert api.put("/v1/quotas/p1/FPGA", json={"limit": 1}).status_code == 204
    assert api.delete("/v1/resource-types/GPU").status_code == 204
    assert [(q["project"], q["type"]) for q in api.get("/v1/quotas").json()] == [("p1", "FPGA")]
    [event] = [e for e in api.get("/v1/events").json() if e["action"] == "type_deleted"]
    assert "quotas for 2 project(s): p1, p2" in event["message"], event
    assert event["detail"]["quotas_removed"] == {"p1": 2, "p2": 0}


def test_deleting_a_type_without_quotas_says_nothing_of_them(api: TestClient) -> None:
    assert api.post("/v1/resource-types", json={"name": "GPU"}).status_code == 201
    assert api.delete("/v1/resource-types/GPU").status_code == 204
    [event] = [e for e in api.get("/v1/events").json() if e["action"] == "type_deleted"]
    assert event["message"] == "type GPU deleted"
