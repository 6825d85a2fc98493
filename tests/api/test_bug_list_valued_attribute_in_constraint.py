"""A constraint on an attribute whose value is a list or an object (``reset_methods``, which
every PCI device's agent reports, or anything an agent sends) answers, never a 500."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import vf


def _two(constraint: dict[str, Any]) -> dict[str, Any]:
    return {
        "consumer": "vm-1",
        "requests": [{"name": "a", "type": "NIC_VF_1G"}, {"name": "b", "type": "NIC_VF_1G"}],
        "constraints": [{"requests": ["a", "b"], **constraint}],
    }


@pytest.fixture
def world(api: TestClient) -> TestClient:
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}).status_code == 201
    values: list[Any] = [["flr"], ["flr"], ["pm", "bus"], {"a": [1, {"b": 2}]}]
    devices = [vf(f"0000:3b:02.{i}", attributes={"reset_methods": v}) for i, v in enumerate(values)]
    r = api.put("/v1/hosts/h1/inventory", json={"generation": 1, "devices": devices})
    assert r.status_code == 200 and not r.json()["refused"], r.text
    return api


@pytest.mark.parametrize("mode", ["match", "distinct"])
@pytest.mark.parametrize("route", ["/v1/explain", "/v1/claims"])
def test_a_list_valued_attribute_compares_whole(world: TestClient, mode: str, route: str) -> None:
    r = world.post(route, json=_two({mode: "attributes.reset_methods"}))
    assert r.status_code in (200, 201), r.text
    if route == "/v1/claims":
        got = {d["address"] for d in r.json()["devices"]}
        if mode == "match":
            assert got == {"0000:3b:02.0", "0000:3b:02.1"}  # the only two equal lists
        else:
            assert len(got) == 2


def test_a_gang_and_capacity_with_such_a_constraint_answer(world: TestClient) -> None:
    body = _two({"distinct": "attributes.reset_methods"})
    body.pop("consumer")
    r = world.post("/v1/gangs/explain", json={**body, "instances": ["g1", "g2"]})
    assert r.status_code < 500, r.text
    r = world.post("/v1/capacity", json=body)
    assert r.status_code < 500, r.text
