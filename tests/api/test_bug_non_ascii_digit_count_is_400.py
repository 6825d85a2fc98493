"""A count written with a non-ASCII digit ("²", "٣") passed ``str.isdigit`` and then made
``int()`` fail (500) or read as another number; counts are ASCII digits, else a 400."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient


@pytest.mark.parametrize("count", ["²", "٣", "1²", "¹⁰"])
def test_non_ascii_digit_counts_are_invalid_spec(api: TestClient, count: str) -> None:
    assert api.post("/v1/resource-types", json={"name": "GPU"}).status_code == 201
    r = api.post("/v1/explain", json={"extra_specs": {"hardware_resource:GPU": count}})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_spec"
    assert "whole number" in r.json()["error"]["message"]
    r = api.post("/v1/claims", json={"consumer": "vm1", "extra_specs": {"hardware_resource:GPU": count}})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_spec", r.text
    r = api.get("/v1/capacity", params={"spec": f"hardware_resource:GPU={count}"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_spec", r.text
    assert api.get("/v1/allocations").json() == []
