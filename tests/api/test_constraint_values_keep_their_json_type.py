"""A constraint compares attribute values as JSON has them: ``true`` is not the number 1 (in
Python they are equal), while 1 and 1.0 are one number."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient


def _host(api: TestClient, values: list[Any]) -> None:
    assert api.post("/v1/resource-types", json={"name": "T"}).status_code == 201
    devices = [
        {"address": f"0000:0{i}:00.0", "kind": "pci", "type": "T", "iommu_group": i, "attributes": {"x": v}}
        for i, v in enumerate(values)
    ]
    r = api.put("/v1/hosts/h1/inventory", json={"generation": 1, "devices": devices})
    assert r.status_code == 200 and not r.json()["refused"], r.text


def _fits(api: TestClient, mode: str) -> bool:
    body = {
        "requests": [{"name": "a", "type": "T"}, {"name": "b", "type": "T"}],
        "constraints": [{"requests": ["a", "b"], mode: "attributes.x"}],
    }
    r = api.post("/v1/explain", json=body)
    assert r.status_code == 200, r.text
    return bool(r.json()["fits"])


def test_true_and_1_are_different_values(api: TestClient) -> None:
    _host(api, [1, True])
    assert not _fits(api, "match")
    assert _fits(api, "distinct")


def test_1_and_1_point_0_are_one_number(api: TestClient) -> None:
    _host(api, [1, 1.0])
    assert _fits(api, "match")
    assert not _fits(api, "distinct")
