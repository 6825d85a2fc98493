"""A NUL character in any text of a request body is a 400 that names the field, on both
backends (PostgreSQL cannot store NUL in text or JSON: it was a 500 there), and nothing of
the request is stored."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import vf

NUL = "a\x00b"


def _setup(api: TestClient) -> None:
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}).status_code == 201
    r = api.put("/v1/hosts/h1/inventory", json={"generation": 1, "devices": [vf("0000:3b:02.0")]})
    assert r.status_code == 200, r.text


def _claim(**extra: Any) -> dict[str, Any]:
    request: dict[str, Any] = {"name": "nic", "type": "NIC_VF_1G", **extra.pop("request", {})}
    return {"consumer": "vm1", "requests": [request], **extra}


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/v1/resource-types", {"name": "T", "description": NUL}, "description"),
        ("POST", "/v1/resource-types", {"name": "T", "config": {"reset": NUL}}, "config.reset"),
        ("POST", "/v1/resource-types", {"name": "T", "config": {NUL: 1}}, "config"),
        (
            "POST",
            "/v1/resource-types",
            {"name": "T", "attribute_schema": {"a": [NUL]}},
            "attribute_schema.a.0",
        ),
        ("PATCH", "/v1/resource-types/NIC_VF_1G", {"description": NUL}, "description"),
        ("PUT", "/v1/hosts/h2/inventory", {"generation": 1, "host_id": NUL, "devices": []}, "host_id"),
        (
            "PUT",
            "/v1/hosts/h2/inventory",
            {"generation": 1, "devices": [vf("0000:3b:02.1", driver=NUL)]},
            "driver",
        ),
        (
            "PUT",
            "/v1/hosts/h2/inventory",
            {"generation": 1, "devices": [vf("0000:3b:02.1", parent=NUL)]},
            "parent",
        ),
        (
            "PUT",
            "/v1/hosts/h2/inventory",
            {"generation": 1, "devices": [vf("0000:3b:02.1", attributes={"x": {"y": NUL}})]},
            "attributes.x.y",
        ),
        (
            "PUT",
            "/v1/hosts/h2/inventory",
            {"generation": 1, "devices": [vf("0000:3b:02.1", type=NUL)]},
            "type",
        ),
        ("POST", "/v1/claims", _claim(consumer=NUL), "consumer"),
        ("POST", "/v1/claims", _claim(project=NUL), "project"),
        ("POST", "/v1/claims", _claim(idempotency_key=NUL), "idempotency_key"),
        ("POST", "/v1/claims", _claim(request={"params": {"mac": NUL}}), "params.mac"),
        ("POST", "/v1/claims", _claim(request={"selector": f"device.driver == '{NUL}'"}), "selector"),
        ("POST", "/v1/explain", _claim(hosts=[NUL]), "hosts.0"),
        ("POST", "/v1/tokens", {"role": "admin", "name": NUL}, "name"),
        ("POST", "/v1/tokens", {"role": "member", "project": NUL}, "project"),
        ("POST", "/v1/devices/x/clear", {"reason": NUL}, "reason"),
        (
            "POST",
            "/v1/hosts/h1/work",
            {"results": [{"device_id": "x", "action": "setup", "ok": False, "error": NUL}]},
            "error",
        ),
        (
            "POST",
            "/v1/hosts/h1/work",
            {"results": [{"device_id": "x", "action": "setup", "ok": True, "facts": {"f": [NUL]}}]},
            "facts.f.0",
        ),
    ],
)
def test_nul_in_body_text_is_400_naming_the_field(
    api: TestClient, method: str, path: str, body: dict[str, Any], field: str
) -> None:
    _setup(api)
    before = (
        api.get("/v1/resource-types").json(),
        api.get("/v1/hosts").json(),
        api.get("/v1/devices").json(),
    )
    r = api.request(method, path, json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request"
    assert field in err["message"] and "NUL" in err["message"], err["message"]
    after = (api.get("/v1/resource-types").json(), api.get("/v1/hosts").json(), api.get("/v1/devices").json())
    assert after == before
    assert api.get("/v1/allocations").json() == []
