"""A resource type's attribute schema is enforced: a reported device of the type whose attributes
do not meet it is refused (``attributes_invalid``), visibly, and the rest of the report taken; a
schema that is not one, or reaches outside itself, is a 400 when the type is created."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

SCHEMA = {
    "type": "object",
    "required": ["memory_mib"],
    "properties": {
        "memory_mib": {"type": "integer", "minimum": 1},
        "rack": {"type": "string", "pattern": "^(a+)+$"},
    },
}


def _gpu(address: str, **attributes: Any) -> dict[str, Any]:
    return {
        "address": address,
        "kind": "pci",
        "type": "GPU_BIG",
        "iommu_group": int(address[5:7], 16),
        "attributes": {"resettable": True, **attributes},
    }


def test_devices_that_do_not_meet_their_types_schema_are_refused(api: TestClient) -> None:
    made = api.post("/v1/resource-types", json={"name": "GPU_BIG", "attribute_schema": SCHEMA})
    assert made.status_code == 201, made.text
    report = {
        "generation": 1,
        "devices": [
            _gpu("0000:3b:00.0", memory_mib=81920),
            _gpu("0000:5e:00.0", memory_mib="80GB"),
            _gpu("0000:86:00.0"),
            _gpu("0000:af:00.0", memory_mib=1, rack="a" * 64 + "!"),  # a backtracking pattern: bounded
        ],
    }
    answer = api.put("/v1/hosts/h1/inventory", json=report)
    assert answer.status_code == 200, answer.text
    refused = {r["address"]: r for r in answer.json()["refused"]}
    assert set(refused) == {"0000:5e:00.0", "0000:86:00.0", "0000:af:00.0"}
    assert {r["code"] for r in refused.values()} == {"attributes_invalid"}
    assert (
        "memory_mib" in refused["0000:5e:00.0"]["reason"] and "integer" in refused["0000:5e:00.0"]["reason"]
    )
    assert "required" in refused["0000:86:00.0"]["reason"]
    listed = api.get("/v1/devices", params={"host": "h1"}).json()
    assert [d["address"] for d in listed] == ["0000:3b:00.0"]
    # The batch of `host load` judges devices the same way.
    batch = {"reports": [{"host": "h2", "report": report}]}
    loaded = api.post("/v1/reports", json=batch).json()
    assert {r["code"] for r in loaded["results"][0]["result"]["refused"]} == {"attributes_invalid"}


def test_a_schema_that_is_none_or_reaches_outside_is_refused_at_creation(api: TestClient) -> None:
    for schema in (
        {"type": "objectx"},
        {"$ref": "http://169.254.169.254/latest/meta-data"},
        {"properties": {"x": {"$ref": "file:///etc/passwd"}}},
    ):
        r = api.post("/v1/resource-types", json={"name": "T_BAD", "attribute_schema": schema})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request", (schema, r.text)
        assert "attribute_schema" in r.text
    assert api.get("/v1/resource-types/T_BAD").status_code == 404
