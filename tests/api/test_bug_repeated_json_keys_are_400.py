"""A key repeated within one JSON object is refused, not silently "last one wins".

Python's decoder kept the last ``consumer`` of ``{"consumer": "a", "consumer": "b"}``; a proxy
or policy check in front of the server that keeps the first would have approved one consumer
(or project, or host) and the server acted on another. Now it is a 400 that names the key, and
nothing is written.
"""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.conftest import vf


def _send(api: TestClient, method: str, path: str, text: str) -> dict:
    r = api.request(method, path, content=text.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 400, (path, r.status_code, r.text)
    return r.json()["error"]


def test_repeated_keys_are_refused_and_nothing_changes(api: TestClient) -> None:
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}).status_code == 201
    assert api.put(
        "/v1/hosts/h1/inventory", json={"generation": 1, "devices": [vf("0000:3b:02.0")]}
    ).is_success
    claim = '{"consumer": "vm-a", "consumer": "vm-b", "extra_specs": {"hardware_resource:NIC_VF_1G": "1"}}'
    err = _send(api, "POST", "/v1/claims", claim)
    assert err["code"] == "invalid_request"
    assert "'consumer' appears twice" in err["message"], err["message"]
    # nested objects too: a repeated attribute inside a device of a report
    report = (
        '{"generation": 2, "devices": [{"address": "0000:3b:02.0", "kind": "sriov_vf",'
        ' "type": "NIC_VF_1G", "attributes": {"x": 1, "x": 2}}]}'
    )
    err = _send(api, "PUT", "/v1/hosts/h1/inventory", report)
    assert "'x' appears twice" in err["message"], err["message"]
    assert api.get("/v1/allocations").json() == []
    assert api.get("/v1/devices").json()[0]["attributes"] == {}


def test_malformed_json_says_what_the_decoder_found(api: TestClient) -> None:
    err = _send(api, "POST", "/v1/claims", '{"consumer": }')
    assert err["code"] == "invalid_request"
    assert "not valid JSON at character 13" in err["message"], err["message"]
    assert "Expecting value" in err["message"], err["message"]


def test_the_same_key_in_different_objects_is_fine(api: TestClient) -> None:
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}).status_code == 201
    text = (
        '{"generation": 1, "devices": [{"address": "0000:3b:02.0", "kind": "sriov_vf", "type": "NIC_VF_1G"},'
        ' {"address": "0000:3b:02.1", "kind": "sriov_vf", "type": "NIC_VF_1G"}]}'
    )
    r = api.put("/v1/hosts/h1/inventory", content=text.encode(), headers={"content-type": "application/json"})
    assert r.is_success, r.text
