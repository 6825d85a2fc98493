"""Selector results are cached by the fields a selector reads; a standard field named through a
string with an escape (``"numa\\x5fnode"`` is ``"numa_node"`` in CEL) must count as read."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.conftest import vf


def _fleet(api: TestClient) -> None:
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}).status_code == 201
    devices = [vf("0000:3b:02.1", numa_node=0), vf("0000:3b:02.2", numa_node=1)]
    assert api.put("/v1/hosts/c1/inventory", json={"generation": 1, "devices": devices}).status_code == 200


def _picked(api: TestClient, selector: str, count: int = 1) -> tuple[bool, list[str]]:
    body = {"requests": [{"name": "nic", "type": "NIC_VF_1G", "count": count, "selector": selector}]}
    r = api.post("/v1/explain", json=body)
    assert r.status_code == 200, r.text
    found = r.json()
    if not found["fits"]:
        return False, []
    by_id = {d["id"]: d["address"] for d in api.get("/v1/devices").json()}
    return True, [by_id[i] for i in found["placements"][0]["devices"]["nic"]["ids"]]


@pytest.mark.parametrize(
    "selector",
    [
        r'device.attributes["numa\x5fnode"] == 1',
        r'device.attributes["numa\u005fnode"] == 1',
        r'device.attributes["numa\137node"] == 1',
    ],
)
def test_an_escaped_standard_field_name_is_not_answered_from_another_devices_cache(
    api: TestClient, selector: str
) -> None:
    _fleet(api)
    # Only the VF on node 1 is selected, and never two of them.
    assert _picked(api, selector) == (True, ["0000:3b:02.2"])
    assert _picked(api, selector, count=2) == (False, [])
