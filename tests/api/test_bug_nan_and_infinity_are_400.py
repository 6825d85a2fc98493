"""NaN, Infinity and 1e400 (which Python's JSON decoder accepts) are not JSON numbers.

They were a 500 on PostgreSQL (JSONB refuses them) and, on SQLite, were stored and read back
as ``null``: the value was silently lost. Now they are a 400 that says what to send.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.conftest import vf


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_numbers_are_refused_everywhere(api: TestClient, literal: str) -> None:
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}).status_code == 201
    assert api.put(
        "/v1/hosts/h1/inventory", json={"generation": 1, "devices": [vf("0000:3b:02.0")]}
    ).is_success
    device = '{"address": "0000:3b:02.0", "kind": "sriov_vf", "type": "NIC_VF_1G", "attributes": {"x": LIT}}'
    cases = [
        ("PUT", "/v1/hosts/h1/inventory", '{"generation": 2, "devices": [DEVICE]}'.replace("DEVICE", device)),
        ("POST", "/v1/resource-types", '{"name": "T", "config": {"x": [LIT]}}'),
        ("PATCH", "/v1/resource-types/NIC_VF_1G", '{"config": {"x": LIT}}'),
        (
            "POST",
            "/v1/hosts/h1/work",
            '{"results": [{"device_id": "x", "action": "setup", "ok": true, "facts": {"x": LIT}}]}',
        ),
    ]
    for method, path, template in cases:
        text = template.replace("LIT", literal)
        r = api.request(method, path, content=text.encode(), headers={"content-type": "application/json"})
        assert r.status_code == 400, (path, r.text)
        err = r.json()["error"]
        assert err["code"] == "invalid_request" and "finite" in err["message"], err["message"]
    assert api.get("/v1/devices").json()[0]["attributes"] == {}
    assert api.get("/v1/resource-types/NIC_VF_1G").json()["config"] == {}
    assert [t["name"] for t in api.get("/v1/resource-types").json()] == ["NIC_VF_1G"]
