"""Work results name their item's ticket (the holding, and the clears since): a result of an
earlier round of work on a device is ignored, whatever consumer it names. Without it, a failed
cleanup the agent resent after an operator's clear quarantined the device again (the clear
silently undone), and a cleanup-ok of an earlier holding could end a later holding's cleanup
that never ran when the same consumer name claimed the device again."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.conftest import vf


def _post(api: TestClient, *results: dict[str, Any]) -> list[dict[str, Any]]:
    r = api.post("/v1/hosts/c1/work", json={"results": list(results)})
    assert r.status_code == 200, r.text
    return list(r.json())


def _item(api: TestClient, device_id: str) -> dict[str, Any]:
    items = api.get("/v1/hosts/c1/work").json()["items"]
    return next(i for i in items if i["device"]["id"] == device_id)


def _result(item: dict[str, Any], ok: bool, **more: Any) -> dict[str, Any]:
    """What the agent posts for ``item``: its device, action, consumer and ticket."""
    return {
        "device_id": item["device"]["id"],
        "action": item["action"],
        "ok": ok,
        "consumer": item["device"]["consumer"],
        "ticket": item["ticket"],
        **more,
    }


def _world(api: TestClient) -> str:
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}).status_code == 201
    r = api.put("/v1/hosts/c1/inventory", json={"generation": 1, "devices": [vf("0000:3b:02.1")]})
    assert r.status_code == 200
    claim = {"consumer": "vm-1", "requests": [{"name": "nic", "type": "NIC_VF_1G"}]}
    return str(api.post("/v1/claims", json=claim).json()["devices"][0]["id"])


def test_a_second_delivery_of_a_failed_cleanup_does_not_undo_a_clear(api: TestClient) -> None:
    dev = _world(api)
    assert _post(api, _result(_item(api, dev), True))[0]["state"] == "assigned"
    assert api.delete("/v1/allocations/vm-1").status_code == 204
    failed = _result(_item(api, dev), False, error="FLR timed out")
    assert _post(api, failed)[0]["state"] == "quarantined"  # applied; the agent lost the answer
    cleared = api.post(f"/v1/devices/{dev}/clear", json={"reason": "reseated the card"})
    assert cleared.status_code == 200 and cleared.json()["state"] == "cleaning"
    again = _post(api, failed)[0]  # the agent's second delivery of the same result
    assert (again["applied"], again["state"]) == (False, "cleaning"), again
    assert "earlier round" in again["note"]
    # The cleared cleanup is asked for, with a ticket of its own; a second clear gives another.
    item = _item(api, dev)
    assert item["action"] == "cleanup" and item["cleared"] and item["ticket"] != failed["ticket"]
    assert _post(api, _result(item, False, error="still stuck"))[0]["state"] == "quarantined"
    assert api.post(f"/v1/devices/{dev}/clear", json={}).status_code == 200
    second = _item(api, dev)
    assert second["ticket"] not in (failed["ticket"], item["ticket"])
    assert _post(api, _result(item, False, error="still stuck"))[0]["applied"] is False
    assert _post(api, _result(second, True))[0]["state"] == "available"


def test_a_cleanup_of_an_earlier_holding_does_not_end_a_later_one(api: TestClient) -> None:
    """vm-1 holds, releases; the device is cleaned; vm-1 (the same name) claims it again and
    releases it again. The first cleanup's ok, resent late, must not count for the second."""
    dev = _world(api)
    _post(api, _result(_item(api, dev), True))
    assert api.delete("/v1/allocations/vm-1").status_code == 204
    first = _result(_item(api, dev), True)
    assert _post(api, first)[0]["state"] == "available"
    claim = {"consumer": "vm-1", "requests": [{"name": "nic", "type": "NIC_VF_1G"}]}
    assert api.post("/v1/claims", json=claim).status_code == 201
    _post(api, _result(_item(api, dev), True))
    assert api.delete("/v1/allocations/vm-1").status_code == 204
    late = _post(api, first)[0]
    assert (late["applied"], late["state"]) == (False, "cleaning"), late
    assert api.get(f"/v1/devices/{dev}").json()["state"] == "cleaning"
