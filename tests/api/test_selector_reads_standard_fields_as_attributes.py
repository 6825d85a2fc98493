"""A device's standard fields (numa_node, vendor_id, driver, parent, ...) are among its
attributes as users read them: ``device.attributes.numa_node`` is ``device.numa_node``, in a
selector and in a constraint, and a reported attribute of the same name wins. The selector
results are cached by the fields a selector reads, so two devices that differ only in a
standard field never share a cached answer."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.conftest import vf


def _fleet(api: TestClient) -> None:
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}).status_code == 201
    devices = [vf("0000:3b:02.1", numa_node=0), vf("0000:3b:02.2", numa_node=1)]
    assert api.put("/v1/hosts/c1/inventory", json={"generation": 1, "devices": devices}).status_code == 200


def _picked(api: TestClient, found: dict) -> list[str]:
    by_id = {d["id"]: d["address"] for d in api.get("/v1/devices").json()}
    return [by_id[i] for i in found["placements"][0]["devices"]["nic"]["ids"]]


def _explain(api: TestClient, selector: str, count: int = 1) -> dict:
    body = {"requests": [{"name": "nic", "type": "NIC_VF_1G", "count": count, "selector": selector}]}
    r = api.post("/v1/explain", json=body)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize(
    "selector",
    [
        "device.attributes.numa_node == 1",
        'device.attributes["numa_node"] == 1',
        "device.attributes.vendor_id == '8086' && device.attributes.numa_node == 1",
        "device.attributes.driver == 'iavf' && device.attributes.numa_node > 0",
        "device.attributes.parent == '0000:3b:00.0' && device.attributes.address.endsWith('.2')",
        "device.attributes.kind == 'sriov_vf' && device.attributes.numa_node == 1",
    ],
)
def test_a_selector_reads_standard_fields_under_attributes(api: TestClient, selector: str) -> None:
    _fleet(api)
    found = _explain(api, selector)
    assert found["fits"], found["summary"]
    assert _picked(api, found) == ["0000:3b:02.2"]
    assert not _explain(api, selector, count=2)["fits"]  # only the device on node 1 is picked


def test_the_cache_does_not_mix_two_devices_of_one_shape(api: TestClient) -> None:
    """Both VFs have the same attributes; only numa_node differs. Asked in turn for node 0
    and node 1, each answer picks its own device."""
    _fleet(api)
    for node, address in ((0, "0000:3b:02.1"), (1, "0000:3b:02.2"), (0, "0000:3b:02.1")):
        found = _explain(api, f"device.attributes.numa_node == {node}")
        assert _picked(api, found) == [address]


def test_a_whole_map_selector_sees_the_standard_fields(api: TestClient) -> None:
    _fleet(api)
    found = _explain(api, "device.attributes.exists(k, k == 'numa_node' && device.attributes[k] == 1)")
    assert (
        found["fits"]
        and not _explain(api, "'numa_node' in device.attributes && device.numa_node == 5")["fits"]
    )


def test_a_reported_attribute_of_the_same_name_wins(api: TestClient) -> None:
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}).status_code == 201
    dev = vf("0000:3b:02.1", numa_node=0)
    dev["attributes"] = {"numa_node": 7}
    assert api.put("/v1/hosts/c1/inventory", json={"generation": 1, "devices": [dev]}).status_code == 200
    assert _explain(api, "device.attributes.numa_node == 7")["fits"]
    assert _explain(api, "device.numa_node == 0")["fits"]


def test_a_constraint_on_attributes_numa_node_is_the_numa_node(api: TestClient) -> None:
    _fleet(api)
    body = {
        "requests": [{"name": "a", "type": "NIC_VF_1G"}, {"name": "b", "type": "NIC_VF_1G"}],
        "constraints": [{"requests": ["a", "b"], "match": "attributes.numa_node"}],
    }
    r = api.post("/v1/explain", json=body)
    assert r.status_code == 200, r.text
    assert not r.json()["fits"], "the two VFs are on NUMA nodes 0 and 1: no two on one node"
    body["constraints"] = [{"requests": ["a", "b"], "distinct": "attributes.numa_node"}]
    assert api.post("/v1/explain", json=body).json()["fits"]
