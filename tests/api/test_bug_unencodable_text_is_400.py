"""A lone surrogate (``"\\ud800"``: valid JSON, not encodable text) is a 400, not stored.

On SQLite it was stored and then every ``GET /v1/devices`` failed with a 500 (the answer
cannot be encoded); on PostgreSQL the report itself was a 500.
"""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.conftest import vf


def test_lone_surrogate_in_attributes_is_refused_and_devices_stay_listable(api: TestClient) -> None:
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}).status_code == 201
    assert api.put(
        "/v1/hosts/h1/inventory", json={"generation": 1, "devices": [vf("0000:3b:02.0")]}
    ).is_success
    for attributes in ('{"x": "\\ud800"}', '{"\\udc00": 1}'):
        body = (
            '{"generation": 2, "devices": [{"address": "0000:3b:02.0", "kind": "sriov_vf", '
            f'"type": "NIC_VF_1G", "attributes": {attributes}}}]}}'
        )
        r = api.put(
            "/v1/hosts/h1/inventory", content=body.encode(), headers={"content-type": "application/json"}
        )
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["code"] == "invalid_request" and "surrogate" in err["message"]
    r = api.get("/v1/devices")
    assert r.status_code == 200, r.text
    assert [d["attributes"] for d in r.json()] == [{}]
    assert api.get("/v1/hosts/h1").json()["generation"] == 1


def test_lone_surrogate_in_claim_and_type_is_400(api: TestClient) -> None:
    assert api.post("/v1/resource-types", json={"name": "GPU"}).status_code == 201
    for path, body in (
        ("/v1/resource-types", '{"name": "T", "description": "\\ud800"}'),
        ("/v1/resource-types", '{"name": "T", "config": {"k": ["\\udfff"]}}'),
        ("/v1/claims", '{"consumer": "\\ud800", "requests": [{"name": "g", "type": "GPU"}]}'),
        ("/v1/explain", '{"requests": [{"name": "g", "type": "GPU", "params": {"mac": "\\ud800"}}]}'),
    ):
        r = api.post(path, content=body.encode(), headers={"content-type": "application/json"})
        assert r.status_code == 400, (path, body, r.text)
        assert r.json()["error"]["code"] == "invalid_request"
    assert [t["name"] for t in api.get("/v1/resource-types").json()] == ["GPU"]
