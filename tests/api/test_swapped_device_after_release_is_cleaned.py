"""Another device reported at a held device's address keeps the held row missing while its
allocation lives. Once the holder is released, the very same report (the agent has nothing
new to say) must bring the device back through cleaning: a report skipped as unchanged left
it missing, out of service for good, though the agent reported it every 30 s."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.conftest import vf

ADDRESS = "0000:3b:02.1"


def _state(api: TestClient) -> str:
    (dev,) = api.get("/v1/devices", params={"address": ADDRESS}).json()
    return str(dev["state"])


def test_the_device_in_a_released_holders_slot_is_cleaned_on_the_same_report(api: TestClient) -> None:
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}).status_code == 201
    first = {"generation": 1, "host_id": "m-1", "devices": [vf(ADDRESS)]}
    assert api.put("/v1/hosts/h1/inventory", json=first).status_code == 200
    claim = {"consumer": "vm-1", "hosts": ["h1"], "requests": [{"name": "n", "type": "NIC_VF_1G"}]}
    made = api.post("/v1/claims", json=claim)
    assert made.status_code == 201
    # Set up: the holder has it (a reserved device that leaves ends its claim at once).
    done = {"results": [{"device_id": made.json()["devices"][0]["id"], "action": "setup", "ok": True}]}
    assert api.post("/v1/hosts/h1/work", json=done).status_code == 200

    swapped = {"generation": 1, "host_id": "m-1", "devices": [vf(ADDRESS, product_id="1889")]}
    r = api.put("/v1/hosts/h1/inventory", json=swapped)
    assert r.status_code == 200 and any("another device" in w for w in r.json()["warnings"])
    assert _state(api) == "missing"
    assert api.put("/v1/hosts/h1/inventory", json=swapped).status_code == 200
    assert _state(api) == "missing"

    assert api.delete("/v1/allocations/vm-1").status_code == 204
    assert api.put("/v1/hosts/h1/inventory", json=swapped).status_code == 200
    assert _state(api) == "cleaning", "the device at a released holder's address stays missing"
