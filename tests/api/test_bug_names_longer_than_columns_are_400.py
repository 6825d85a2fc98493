"""Names the API accepted but the database columns cannot hold were a 500 on PostgreSQL
(``value too long for type character varying``) and silently stored on SQLite. The API now
takes exactly what the columns hold: consumer and project 64 characters, idempotency key 128,
a token's project 64, a reported device's type 64."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import vf


def _claim(**extra: Any) -> dict[str, Any]:
    return {"consumer": "vm1", "requests": [{"name": "nic", "type": "NIC_VF_1G"}], **extra}


@pytest.fixture
def ready(api: TestClient) -> TestClient:
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}).status_code == 201
    r = api.put("/v1/hosts/h1/inventory", json={"generation": 1, "devices": [vf("0000:3b:02.0")]})
    assert r.status_code == 200, r.text
    return api


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/claims", _claim(consumer="c" * 65), "consumer"),
        ("/v1/claims", _claim(consumer="c" * 10_000), "consumer"),
        ("/v1/claims", _claim(project="p" * 65), "project"),
        ("/v1/claims", _claim(idempotency_key="k" * 129), "idempotency_key"),
        ("/v1/explain", _claim(consumer="c" * 255), "consumer"),
        ("/v1/tokens", {"role": "member", "project": "p" * 65}, "project"),
    ],
)
def test_too_long_names_are_400(ready: TestClient, path: str, body: dict[str, Any], field: str) -> None:
    r = ready.post(path, json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request" and field in err["message"] and "at most" in err["message"]
    assert ready.get("/v1/allocations").json() == []
    assert [d["state"] for d in ready.get("/v1/devices").json()] == ["available"]


def test_names_at_the_column_length_are_taken(ready: TestClient) -> None:
    body = _claim(consumer="c" * 64, project="p" * 64, idempotency_key="k" * 128)
    r = ready.post("/v1/claims", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["consumer"] == "c" * 64 and r.json()["project"] == "p" * 64
    assert ready.post("/v1/claims", json=body).status_code == 200  # the replay finds it
    r = ready.post("/v1/tokens", json={"role": "member", "project": "p" * 64})
    assert r.status_code == 201, r.text


def test_a_too_long_device_type_is_400_and_the_report_is_not_taken(ready: TestClient) -> None:
    body = {"generation": 2, "devices": [vf("0000:3b:02.0"), vf("0000:3b:02.1", type="T" * 65)]}
    r = ready.put("/v1/hosts/h1/inventory", json=body)
    assert r.status_code == 400, r.text
    assert "type" in r.json()["error"]["message"]
    assert ready.get("/v1/hosts/h1").json()["generation"] == 1
    assert len(ready.get("/v1/devices").json()) == 1
