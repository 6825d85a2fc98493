"""A change a report cannot make while its device is held (its type) waits, and the same report,
unchanged, applies it once the device is free: an unchanged report is otherwise skipped, and the
change waited until the agent's report changed for another reason."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.conftest import vf


def test_a_type_change_that_waited_is_applied_by_the_same_report_once_free(api: TestClient) -> None:
    for name in ("NIC_VF_1G", "NIC_VF_10G"):
        assert api.post("/v1/resource-types", json={"name": name}).status_code == 201
    assert (
        api.put("/v1/hosts/h1/inventory", json={"generation": 1, "devices": [vf("0000:3b:02.0")]}).status_code
        == 200
    )
    claim = api.post(
        "/v1/claims", json={"consumer": "vm-1", "requests": [{"name": "n", "type": "NIC_VF_1G"}]}
    )
    assert claim.status_code == 201
    retyped = {"generation": 2, "devices": [{**vf("0000:3b:02.0"), "type": "NIC_VF_10G"}]}
    answer = api.put("/v1/hosts/h1/inventory", json=retyped).json()
    assert any("type change to NIC_VF_10G waits" in w for w in answer["warnings"]), answer
    assert api.get("/v1/devices", params={"host": "h1"}).json()[0]["type"] == "NIC_VF_1G"
    assert api.delete("/v1/allocations/vm-1").status_code == 204
    dev = claim.json()["devices"][0]["id"]
    done = api.post(
        "/v1/hosts/h1/work", json={"results": [{"device_id": dev, "action": "cleanup", "ok": True}]}
    )
    assert done.json()[0]["state"] == "available"
    assert api.put("/v1/hosts/h1/inventory", json=retyped).status_code == 200  # the same report
    assert api.get("/v1/devices", params={"host": "h1"}).json()[0]["type"] == "NIC_VF_10G"
