"""The OpenAPI document describes every status the API really answers (found by fuzzing with
schemathesis' ``status_code_conformance``, ``python -m tests.fuzz``):

- ``413 body_too_large``: any route that takes a body refuses one over its size limit, at the
  edge; the document did not say so, so a client generated from it had no model for the error;
- ``503 database_busy``: any route may answer it while the database cannot serve (retry);
- ``200`` from ``POST /v1/claims``: a replay (same consumer and idempotency key) answers the
  allocation already made with 200, not 201; the document listed 201 only.
"""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.conftest import vf

ERROR_BODY = {"$ref": "#/components/schemas/ErrorBody"}


def test_every_route_with_a_body_documents_413_and_every_route_503(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    with_body = 0
    for path, operations in spec["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, op in operations.items():
            responses = op["responses"]
            assert responses["503"]["content"]["application/json"]["schema"] == ERROR_BODY, (method, path)
            if "requestBody" in op:
                with_body += 1
                assert responses["413"]["content"]["application/json"]["schema"] == ERROR_BODY, (method, path)
            else:
                assert "413" not in responses, (method, path)
    assert with_body >= 10


def test_an_oversized_body_is_the_documented_413_and_changes_nothing(api: TestClient) -> None:
    body = b'{"name": "T1", "description": "' + b"x" * (1024 * 1024 + 1) + b'"}'
    r = api.post("/v1/resource-types", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "body_too_large"
    documented = api.get("/openapi.json").json()["paths"]["/v1/resource-types"]["post"]["responses"]
    assert "413" in documented
    assert api.get("/v1/resource-types").json() == []


def test_a_claim_replay_is_the_documented_200(api: TestClient) -> None:
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}).status_code == 201
    report = {"generation": 1, "devices": [vf("0000:3b:02.0"), vf("0000:3b:02.1")]}
    assert api.put("/v1/hosts/h1/inventory", json=report).is_success
    claim = {
        "consumer": "vm-1",
        "project": "demo",
        "requests": [{"name": "nic", "type": "NIC_VF_1G"}],
        "idempotency_key": "k1",
    }
    first = api.post("/v1/claims", json=claim)
    assert first.status_code == 201, first.text
    replay = api.post("/v1/claims", json=claim)
    assert replay.status_code == 200, replay.text
    assert replay.json() == first.json()
    documented = api.get("/openapi.json").json()["paths"]["/v1/claims"]["post"]["responses"]
    assert documented["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Allocation"
    }
    # The replay claimed nothing more: one device held, one free.
    states = sorted(d["state"] for d in api.get("/v1/devices").json())
    assert states.count("available") == 1, states
    assert len(api.get("/v1/allocations").json()) == 1
