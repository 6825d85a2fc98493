"""A cleanup that exits 0 but leaves the device as its check finds it wrong (a scrub that left
the last holder's data) ends ``unhealthy``. An operator's ``device clear`` of that device does
not finish the cleanup: it runs again before anyone gets the device. A device whose check
failed while free (a link down) is still vouched for at once."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from devassign.domain import mdev_address
from tests.conftest import Clock, vf

A = "0000:3b:02.0"


def _ok(r: Any, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json() if r.content else None


def _device(api: TestClient) -> dict[str, Any]:
    found: dict[str, Any] = api.get("/v1/devices", params={"host": "hx"}).json()[0]
    return found


def _work(api: TestClient, *results: dict[str, Any]) -> None:
    _ok(api.post("/v1/hosts/hx/work", json={"results": list(results)}))


def test_clearing_a_device_whose_check_after_cleanup_failed_cleans_it_again(api: TestClient) -> None:
    _ok(api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}), 201)
    _ok(api.put("/v1/hosts/hx/inventory", json={"generation": 1, "devices": [vf(A)]}))
    claim = {"consumer": "vm1", "requests": [{"name": "n", "type": "NIC_VF_1G"}]}
    dev = _ok(api.post("/v1/claims", json=claim), 201)["devices"][0]
    _work(api, {"device_id": dev["id"], "action": "setup", "ok": True})
    _ok(api.delete("/v1/allocations/vm1"), 204)
    dirty = {"healthy": False, "health_reason": "scrub left data behind"}
    _work(api, {"device_id": dev["id"], "action": "cleanup", "ok": True, **dirty})
    assert (_device(api)["state"], _device(api)["health_reason"]) == ("unhealthy", "scrub left data behind")

    cleared = _ok(api.post(f"/v1/devices/{dev['id']}/clear", json={"reason": "looked fine"}))
    assert cleared["state"] == "cleaning"
    assert _ok(api.post("/v1/claims", json={**claim, "consumer": "vm2"}), 409)["error"]["code"]
    todo = _ok(api.get("/v1/hosts/hx/work"))
    assert [(w["device"]["address"], w["action"]) for w in todo["items"]] == [(A, "cleanup")]
    _work(api, {"device_id": dev["id"], "action": "cleanup", "ok": True})
    assert _device(api)["state"] == "available"
    # A check that fails on the free device, then a clear: vouched for at once, as before.
    _ok(api.put("/v1/hosts/hx/inventory", json={"generation": 2, "devices": [{**vf(A), **dirty}]}))
    assert _device(api)["state"] == "unhealthy"
    assert _ok(api.post(f"/v1/devices/{dev['id']}/clear", json={}))["state"] == "available"


def test_a_cleanup_says_whether_the_type_changed_since_the_claim(api: TestClient, clock: Clock) -> None:
    """So that an agent without its record of the setup (a lost state file) does not clean
    with a config other than the one that set the device up."""
    config = {"setup": ["/usr/bin/true"], "cleanup": ["/usr/bin/true"]}
    _ok(api.post("/v1/resource-types", json={"name": "TOKEN", "handler": "command", "config": config}), 201)
    token = {"address": "usb:1050:0407:A1", "kind": "usb", "type": "TOKEN"}
    _ok(api.put("/v1/hosts/hx/inventory", json={"generation": 1, "devices": [token]}))
    claim = {"consumer": "vm1", "requests": [{"name": "t", "type": "TOKEN"}]}
    dev = _ok(api.post("/v1/claims", json=claim), 201)["devices"][0]
    _work(api, {"device_id": dev["id"], "action": "setup", "ok": True})
    _ok(api.delete("/v1/allocations/vm1"), 204)
    assert [w["type_changed"] for w in _ok(api.get("/v1/hosts/hx/work"))["items"]] == [False]
    clock.advance(5)
    _ok(api.patch("/v1/resource-types/TOKEN", json={"description": "YubiKeys"}))  # not its config
    _ok(api.patch("/v1/resource-types/TOKEN", json={"config": config}))  # the same config again
    assert [w["type_changed"] for w in _ok(api.get("/v1/hosts/hx/work"))["items"]] == [False]
    _ok(api.patch("/v1/resource-types/TOKEN", json={"config": {"setup": ["/usr/bin/true"], "cleanup": None}}))
    assert [w["type_changed"] for w in _ok(api.get("/v1/hosts/hx/work"))["items"]] == [True]
    # A device never set up (released before its setup ran) has no setup to undo.
    _work(api, {"device_id": dev["id"], "action": "cleanup", "ok": True})
    again = _ok(api.post("/v1/claims", json={**claim, "consumer": "vm2"}), 201)["devices"][0]
    clock.advance(5)
    _ok(api.patch("/v1/resource-types/TOKEN", json={"config": config}))
    _ok(api.delete("/v1/allocations/vm2"), 204)
    items = _ok(api.get("/v1/hosts/hx/work"))["items"]
    assert [(w["device"]["id"], w["type_changed"]) for w in items] == [(again["id"], False)]


def test_a_vgpu_slot_cleared_while_its_gpus_room_is_taken_is_refused_then_cleared(api: TestClient) -> None:
    """A vGPU slot whose check after cleanup failed gave its framebuffer back; other slots took
    it. A clear that cleaned it again would hold that framebuffer a third time on a GPU with
    room for two: refused (409) until a slot is released, then cleaned again as ever."""
    gpu = "0000:d8:00.0"
    _ok(api.post("/v1/resource-types", json={"name": "VGPU_8Q"}), 201)
    slots = [
        {
            "address": mdev_address(gpu, "nvidia-8q", i),
            "kind": "mdev_type",
            "type": "VGPU_8Q",
            "parent": gpu,
            "pool_counters": {"framebuffer_mb": 16384},
            "consumes": {"framebuffer_mb": 8192},
            "mode": "8Q",
            "attributes": {"mdev_type": "nvidia-8q"},
        }
        for i in range(3)
    ]
    _ok(api.put("/v1/hosts/hx/inventory", json={"generation": 1, "devices": slots}))
    claim = {"requests": [{"name": "g", "type": "VGPU_8Q"}]}
    first = _ok(api.post("/v1/claims", json={**claim, "consumer": "vm1"}), 201)["devices"][0]
    _ok(api.delete("/v1/allocations/vm1"), 204)
    dirty = {"healthy": False, "health_reason": "scrub left data behind"}
    _work(api, {"device_id": first["id"], "action": "cleanup", "ok": True, **dirty})
    for vm in ("vm2", "vm3"):
        _ok(api.post("/v1/claims", json={**claim, "consumer": vm}), 201)
    refused = _ok(api.post(f"/v1/devices/{first['id']}/clear", json={}), 409)["error"]
    assert refused["code"] == "invalid_state", refused
    assert f"{gpu} has 0 of 16384 framebuffer_mb left" in refused["message"], refused
    audit = _ok(api.get("/v1/audit"))
    assert not audit["findings"], audit
    states = {d["id"]: d["state"] for d in api.get("/v1/devices", params={"host": "hx"}).json()}
    assert states[first["id"]] == "unhealthy"
    _ok(api.delete("/v1/allocations/vm2"), 204)
    # vm2's slot is cleaning (it holds its share until done): still no room.
    _ok(api.post(f"/v1/devices/{first['id']}/clear", json={}), 409)
    for item in _ok(api.get("/v1/hosts/hx/work"))["items"]:
        if item["action"] == "cleanup":
            _work(api, {"device_id": item["device"]["id"], "action": "cleanup", "ok": True})
    assert _ok(api.post(f"/v1/devices/{first['id']}/clear", json={}))["state"] == "cleaning"
    assert not _ok(api.get("/v1/audit"))["findings"]
