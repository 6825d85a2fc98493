"""The inventory API as a user drives it: types, reports, hosts, devices, events, errors."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.conftest import Clock, vf


def _type(api: TestClient, name: str = "NIC_VF_1G", **body: Any) -> dict[str, Any]:
    r = api.post("/v1/resource-types", json={"name": name, "description": f"{name} devices", **body})
    assert r.status_code == 201, r.text
    return r.json()


def _report(api: TestClient, host: str, generation: int, devices: list[dict[str, Any]], **extra: Any) -> Any:
    return api.put(
        f"/v1/hosts/{host}/inventory", json={"generation": generation, "devices": devices, **extra}
    )


def test_first_use_flow_type_report_devices_and_counts(api: TestClient) -> None:
    created = _type(api)
    assert created["counts"]["total"] == 0
    r = _report(api, "compute-1", 1, [vf("0000:3b:02.1"), vf("0000:3b:02.2", numa_node=1)])
    assert r.status_code == 200, r.text
    assert r.json()["added"] == ["0000:3b:02.1", "0000:3b:02.2"]
    assert r.json()["refused"] == []

    types = api.get("/v1/resource-types").json()
    assert [(t["name"], t["counts"]["total"], t["counts"]["available"]) for t in types] == [
        ("NIC_VF_1G", 2, 2)
    ]
    devices = api.get("/v1/devices", params={"host": "compute-1"}).json()
    assert [(d["address"], d["state"], d["numa_node"]) for d in devices] == [
        ("0000:3b:02.1", "available", 0),
        ("0000:3b:02.2", "available", 1),
    ]
    one = api.get(f"/v1/devices/{devices[0]['id']}").json()
    assert one["parent"] == "0000:3b:00.0" and one["vendor_id"] == "8086"
    hosts = api.get("/v1/hosts").json()
    assert [(h["name"], h["status"], h["device_count"], h["generation"]) for h in hosts] == [
        ("compute-1", "up", 2, 1)
    ]


def test_unknown_type_is_refused_per_device_and_the_rest_taken(api: TestClient) -> None:
    _type(api)
    r = _report(api, "compute-1", 1, [vf("0000:3b:02.1"), vf("0000:3b:02.2", type="NOPE")])
    body = r.json()
    assert r.status_code == 200
    assert body["added"] == ["0000:3b:02.1"]
    assert [(x["address"], x["code"]) for x in body["refused"]] == [("0000:3b:02.2", "unknown_type")]
    assert "devassign type create NOPE" in body["refused"][0]["reason"]
    # and a warning in the answer, which is where an agent's log looks
    assert [w for w in body["warnings"] if w.startswith("0000:3b:02.2 refused: unknown resource type")], body
    refused = api.get("/v1/events", params={"host": "compute-1"}).json()
    assert any(e["action"] == "device_refused" and e["device"] == "0000:3b:02.2" for e in refused)
    # The same report again still says what is refused (it is not skipped as unchanged), and
    # once the type exists the same report takes the device.
    again = _report(api, "compute-1", 2, [vf("0000:3b:02.1"), vf("0000:3b:02.2", type="NOPE")]).json()
    assert [x["address"] for x in again["refused"]] == ["0000:3b:02.2"]
    # ... but the event log says it once, not at every report
    for generation in (3, 4):
        _report(api, "compute-1", generation, [vf("0000:3b:02.1"), vf("0000:3b:02.2", type="NOPE")])
    logged = api.get("/v1/events", params={"host": "compute-1"}).json()
    assert sum(e["action"] == "device_refused" for e in logged) == 1
    # another reason is said again
    _report(api, "compute-1", 5, [vf("0000:3b:02.1"), vf("0000:3b:02.2", type="NOPE2")])
    logged = api.get("/v1/events", params={"host": "compute-1"}).json()
    assert sum(e["action"] == "device_refused" for e in logged) == 2
    _type(api, "NOPE")
    taken = _report(api, "compute-1", 6, [vf("0000:3b:02.1"), vf("0000:3b:02.2", type="NOPE")]).json()
    assert taken["added"] == ["0000:3b:02.2"] and taken["refused"] == []


def test_report_is_idempotent_and_stale_generation_is_refused(api: TestClient) -> None:
    _type(api)
    devices = [vf("0000:3b:02.1")]
    assert _report(api, "h1", 5, devices).status_code == 200
    again = _report(api, "h1", 5, devices)
    assert again.status_code == 200
    assert again.json()["added"] == [] and again.json()["updated"] == []
    stale = _report(api, "h1", 4, [])
    assert stale.status_code == 409
    err = stale.json()["error"]
    assert err["code"] == "stale_generation" and err["current_generation"] == 5
    # Nothing was lost: the device is still there.
    assert len(api.get("/v1/devices").json()) == 1


def test_changed_attribute_updates_the_device(api: TestClient) -> None:
    _type(api)
    _report(api, "h1", 1, [vf("0000:3b:02.1", driver="iavf")])
    r = _report(api, "h1", 2, [vf("0000:3b:02.1", driver="vfio-pci", attributes={"physnet": "p1"})])
    assert r.json()["updated"] == ["0000:3b:02.1"]
    d = api.get("/v1/devices").json()[0]
    assert d["driver"] == "vfio-pci" and d["attributes"] == {"physnet": "p1"}


def test_vanished_free_device_is_removed_and_comes_back(api: TestClient) -> None:
    _type(api)
    _report(api, "h1", 1, [vf("0000:3b:02.1"), vf("0000:3b:02.2")])
    r = _report(api, "h1", 2, [vf("0000:3b:02.1")])
    assert r.json()["removed"] == ["0000:3b:02.2"]
    states = {d["address"]: d["state"] for d in api.get("/v1/devices").json()}
    assert states == {"0000:3b:02.1": "available", "0000:3b:02.2": "removed"}
    counts = api.get("/v1/resource-types/NIC_VF_1G").json()["counts"]
    assert (counts["total"], counts["available"], counts["removed"]) == (1, 1, 1)
    _report(api, "h1", 3, [vf("0000:3b:02.1"), vf("0000:3b:02.2")])
    states = {d["address"]: d["state"] for d in api.get("/v1/devices").json()}
    assert states == {"0000:3b:02.1": "available", "0000:3b:02.2": "available"}


def test_unhealthy_report_marks_free_device_unhealthy(api: TestClient) -> None:
    _type(api)
    _report(api, "h1", 1, [vf("0000:3b:02.1")])
    _report(api, "h1", 2, [vf("0000:3b:02.1", healthy=False)])
    d = api.get("/v1/devices").json()[0]
    assert (d["state"], d["healthy"]) == ("unhealthy", False)
    assert api.get("/v1/resource-types").json()[0]["counts"]["unhealthy"] == 1
    _report(api, "h1", 3, [vf("0000:3b:02.1")])
    assert api.get("/v1/devices").json()[0]["state"] == "available"


def test_host_goes_down_by_the_servers_clock(api: TestClient, clock: Clock) -> None:
    _type(api)
    _report(api, "h1", 1, [vf("0000:3b:02.1")])
    clock.advance(60)
    assert api.get("/v1/hosts/h1").json()["status"] == "up"
    assert api.post("/v1/hosts/h1/heartbeat").status_code == 204
    clock.advance(91)
    assert api.get("/v1/hosts/h1").json()["status"] == "down"
    api.app.state.store.sweep()  # type: ignore[attr-defined]
    actions = [e["action"] for e in api.get("/v1/events", params={"host": "h1"}).json()]
    assert actions[0] == "host_down"
    assert api.post("/v1/hosts/h1/heartbeat").status_code == 204
    assert api.get("/v1/hosts/h1").json()["status"] == "up"
    assert api.get("/v1/events", params={"host": "h1"}).json()[0]["action"] == "host_up"


def test_heartbeat_of_unknown_host_asks_for_a_report(api: TestClient) -> None:
    r = api.post("/v1/hosts/ghost/heartbeat")
    assert r.status_code == 404 and r.json()["error"]["code"] == "host_not_found"


def test_renamed_host_keeps_its_row_by_host_id(api: TestClient) -> None:
    """A host id stays with its first name: the rename is an admin's, then the agent follows."""
    _type(api)
    _report(api, "old-name", 1, [vf("0000:3b:02.1")], host_id="id-1")
    r = _report(api, "new-name", 2, [vf("0000:3b:02.1")], host_id="id-1")
    assert r.status_code == 409 and r.json()["error"]["code"] == "host_id_mismatch"
    assert "devassign host rename OLD new-name" in r.json()["error"]["message"]
    assert api.post("/v1/hosts/old-name/rename", json={"new_name": "new-name"}).status_code == 200
    r = _report(api, "new-name", 2, [vf("0000:3b:02.1")], host_id="id-1")
    assert r.status_code == 200, r.text
    assert r.json()["added"] == []  # the same row, with its device
    assert [h["name"] for h in api.get("/v1/hosts").json()] == ["new-name"]
    other = _report(api, "new-name", 3, [], host_id="id-2")
    assert other.status_code == 409 and other.json()["error"]["code"] == "host_id_mismatch"


def test_type_lifecycle_update_and_delete_rules(api: TestClient) -> None:
    _type(api)
    dup = api.post("/v1/resource-types", json={"name": "NIC_VF_1G"})
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "type_exists"
    r = api.patch("/v1/resource-types/NIC_VF_1G", json={"description": "new words"})
    assert r.status_code == 200 and r.json()["description"] == "new words"
    _report(api, "h1", 1, [vf("0000:3b:02.1")])
    busy = api.delete("/v1/resource-types/NIC_VF_1G")
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "type_in_use"
    _type(api, "UNUSED")
    assert api.delete("/v1/resource-types/UNUSED").status_code == 204
    missing = api.get("/v1/resource-types/UNUSED")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "type_not_found"


def test_device_filters(api: TestClient) -> None:
    _type(api)
    _type(api, "GPU_A100")
    gpu = {"address": "0000:af:00.0", "kind": "pci", "type": "GPU_A100", "vendor_id": "10de"}
    _report(api, "h1", 1, [vf("0000:3b:02.1"), gpu])
    _report(api, "h2", 1, [vf("0000:3b:02.1")])
    assert len(api.get("/v1/devices").json()) == 3
    assert [d["host"] for d in api.get("/v1/devices", params={"type": "NIC_VF_1G"}).json()] == ["h1", "h2"]
    assert [d["type"] for d in api.get("/v1/devices", params={"host": "h1", "type": "GPU_A100"}).json()] == [
        "GPU_A100"
    ]
    assert api.get("/v1/devices", params={"state": "reserved"}).json() == []
    bad = api.get("/v1/devices", params={"state": "sleeping"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"


def test_allocations_empty_and_unknown_consumer(api: TestClient) -> None:
    assert api.get("/v1/allocations").json() == []
    r = api.get("/v1/allocations/nobody")
    assert r.status_code == 404 and r.json()["error"]["code"] == "allocation_not_found"


def test_openapi_is_served(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    assert "/v1/hosts/{host}/inventory" in spec["paths"]
    assert "/v1/resource-types" in spec["paths"]


def test_device_without_reset_is_refused_unless_the_type_accepts_it(api: TestClient) -> None:
    _type(api, "GPU")
    _type(api, "OLD_GPU", config={"reset": "none-ok"})
    noreset = {"address": "0000:af:00.0", "kind": "pci", "type": "GPU", "attributes": {"resettable": False}}
    r = _report(api, "h1", 1, [noreset, {**noreset, "address": "0000:b0:00.0", "type": "OLD_GPU"}])
    body = r.json()
    assert [(x["address"], x["code"]) for x in body["refused"]] == [("0000:af:00.0", "no_reset")]
    assert "none-ok" in body["refused"][0]["reason"]
    assert body["added"] == ["0000:b0:00.0"] and body["accepted"] == 1


def test_health_reasons_recovering_reports_and_an_operators_clear(api: TestClient) -> None:
    _type(api)
    a = "0000:3b:02.1"
    _report(api, "h1", 1, [vf(a)])
    _report(api, "h1", 2, [vf(a, healthy=False, health_reason="the link of PF x (ens1f0) is down")])
    d = api.get("/v1/devices").json()[0]
    assert (d["state"], d["health_reason"]) == ("unhealthy", "the link of PF x (ens1f0) is down")
    events = [
        e for e in api.get("/v1/events", params={"device": a}).json() if e["action"] == "device_unhealthy"
    ]
    assert len(events) == 1 and events[0]["message"].endswith(
        "is unhealthy: the link of PF x (ens1f0) is down"
    )
    # Checks pass again, not yet enough of them: the server keeps the device unhealthy.
    recovering = vf(
        a, healthy=False, health_reason="the link of PF x (ens1f0) is down", health_recovering=True
    )
    _report(api, "h1", 3, [recovering])
    assert api.get("/v1/devices").json()[0]["state"] == "unhealthy"
    # The operator vouches for it: available now, and the recovering report does not undo it.
    cleared = api.post(f"/v1/devices/{d['id']}/clear", json={"reason": "cable replaced"})
    assert cleared.status_code == 200, cleared.text
    assert (cleared.json()["state"], cleared.json()["healthy"], cleared.json()["health_reason"]) == (
        "available",
        True,
        None,
    )
    _report(api, "h1", 4, [recovering])
    assert api.get("/v1/devices").json()[0]["state"] == "available"
    # The same failing report as before the clear is applied again, not skipped as unchanged.
    _report(api, "h1", 5, [vf(a, healthy=False, health_reason="the link of PF x (ens1f0) is down")])
    _report(api, "h1", 6, [vf(a, healthy=False, health_reason="the link of PF x (ens1f0) is down")])
    assert api.get("/v1/devices").json()[0]["state"] == "unhealthy"
    _report(api, "h1", 7, [vf(a)])
    assert api.get("/v1/devices").json()[0]["state"] == "available"
    actions = [e["action"] for e in reversed(api.get("/v1/events", params={"device": a}).json())]
    assert [x for x in actions if x.startswith("device_h") or x == "device_unhealthy"] == [
        "device_unhealthy",
        "device_health_cleared",
        "device_unhealthy",
        "device_healthy",
    ]
    # A healthy, available device has nothing to clear: 409 with the stable code, nothing changes.
    again = api.post(f"/v1/devices/{d['id']}/clear", json={})
    assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_state"
    assert "only quarantined, unhealthy or missing" in again.json()["error"]["message"]
    too_long = _report(api, "h1", 8, [vf(a, healthy=False, health_reason="x" * 1001)])
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "invalid_request"


def test_a_refused_device_takes_its_iommu_group_mates_with_it(api: TestClient) -> None:
    """A GPU whose audio function the server refuses (no type yet; no reset) could be claimed
    but never set up without it: it is refused too, and taken once its mate is."""
    _type(api, "GPU_RTX")
    gpu = {"address": "0000:e1:00.0", "kind": "pci", "type": "GPU_RTX", "iommu_group": 70}
    audio = {"address": "0000:e1:00.1", "kind": "pci", "type": "GPU_RTX_AUDIO", "iommu_group": 70}
    other = {"address": "0000:e2:00.0", "kind": "pci", "type": "GPU_RTX", "iommu_group": 71}
    body = _report(api, "h1", 1, [gpu, audio, other]).json()
    refused = {x["address"]: x for x in body["refused"]}
    assert (refused["0000:e1:00.1"]["code"], refused["0000:e1:00.0"]["code"]) == (
        "unknown_type",
        "iommu_group_mate_refused",
    ), refused
    assert "0000:e1:00.1" in refused["0000:e1:00.0"]["reason"], refused
    assert body["added"] == ["0000:e2:00.0"]
    claimed = api.post(
        "/v1/claims", json={"consumer": "vm-1", "extra_specs": {"hardware_resource:GPU_RTX": "2"}}
    )
    assert claimed.status_code == 409, claimed.text  # one GPU_RTX can be offered, not two
    _type(api, "GPU_RTX_AUDIO")
    again = _report(api, "h1", 2, [gpu, audio, other]).json()
    assert again["refused"] == [] and sorted(again["added"]) == ["0000:e1:00.0", "0000:e1:00.1"]
    # The same for a mate without reset, once the GPU was in the inventory: it is removed.
    mute = {**audio, "attributes": {"resettable": False}}
    third = _report(api, "h1", 3, [gpu, mute, other]).json()
    assert {x["address"]: x["code"] for x in third["refused"]} == {
        "0000:e1:00.1": "no_reset",
        "0000:e1:00.0": "iommu_group_mate_refused",
    }
    states = {d["address"]: d["state"] for d in api.get("/v1/devices", params={"host": "h1"}).json()}
    assert states == {"0000:e1:00.0": "removed", "0000:e1:00.1": "removed", "0000:e2:00.0": "available"}


def test_a_type_change_waiting_for_a_held_device_is_applied_by_its_cleanup(api: TestClient) -> None:
    """A held device the host now reports as another type kept its old type after its
    cleanup, and was claimed as that type until the agent's next report."""
    for name in ("TOK", "TOK2"):
        _type(api, name)
    token = {"address": "usb:0529:0620:12345", "kind": "usb", "type": "TOK"}
    first = _report(api, "h1", 1, [token])
    assert first.status_code == 200 and not first.json()["refused"], first.text
    held = api.post("/v1/claims", json={"consumer": "vm-1", "extra_specs": {"hardware_resource:TOK": "1"}})
    assert held.status_code == 201, held.text
    device = held.json()["devices"][0]["id"]
    answer = _report(api, "h1", 2, [{**token, "type": "TOK2"}]).json()
    assert any("type change to TOK2 waits" in w for w in answer["warnings"]), answer
    assert api.delete("/v1/allocations/vm-1").status_code == 204
    cleaned = {"device_id": device, "action": "cleanup", "ok": True}
    assert api.post("/v1/hosts/h1/work", json={"results": [cleaned]}).status_code == 200
    [now] = api.get("/v1/devices", params={"host": "h1"}).json()
    assert (now["type"], now["state"]) == ("TOK2", "available")
    as_old = api.post("/v1/claims", json={"consumer": "vm-2", "extra_specs": {"hardware_resource:TOK": "1"}})
    assert as_old.status_code == 409, as_old.text
    counts = {t["name"]: t["counts"]["available"] for t in api.get("/v1/resource-types").json()}
    assert counts["TOK"] == 0 and counts["TOK2"] == 1
    as_new = api.post("/v1/claims", json={"consumer": "vm-2", "extra_specs": {"hardware_resource:TOK2": "1"}})
    assert as_new.status_code == 201, as_new.text


def test_a_type_change_reported_back_while_held_leaves_nothing_waiting(api: TestClient) -> None:
    for name in ("TOK", "TOK2"):
        _type(api, name)
    token = {"address": "usb:0529:0620:12345", "kind": "usb", "type": "TOK"}
    _report(api, "h1", 1, [token])
    held = api.post("/v1/claims", json={"consumer": "vm-1", "extra_specs": {"hardware_resource:TOK": "1"}})
    device = held.json()["devices"][0]["id"]
    _report(api, "h1", 2, [{**token, "type": "TOK2"}])
    _report(api, "h1", 3, [token])  # the host reports its old type again
    assert api.delete("/v1/allocations/vm-1").status_code == 204
    cleaned = {"device_id": device, "action": "cleanup", "ok": True}
    assert api.post("/v1/hosts/h1/work", json={"results": [cleaned]}).status_code == 200
    [now] = api.get("/v1/devices", params={"host": "h1"}).json()
    assert (now["type"], now["state"]) == ("TOK", "available")


# The type that waits for a held device survives what rewrites the device's facts.
TOKEN = {"address": "usb:0529:0620:12345", "kind": "usb", "type": "TOK"}


def _held_token(api: TestClient) -> str:
    for name in ("TOK", "TOK2"):
        _type(api, name)
    assert not _report(api, "h1", 1, [TOKEN]).json()["refused"]
    held = api.post("/v1/claims", json={"consumer": "vm-1", "extra_specs": {"hardware_resource:TOK": "1"}})
    assert held.status_code == 201, held.text
    return held.json()["devices"][0]["id"]


def _work_result(api: TestClient, **result: object) -> None:
    r = api.post("/v1/hosts/h1/work", json={"results": [result]})
    assert r.status_code == 200 and r.json()[0]["applied"], r.text if r.status_code != 200 else r.json()


def test_a_setup_result_after_the_type_change_keeps_the_waiting_type(api: TestClient) -> None:
    device = _held_token(api)
    _report(api, "h1", 2, [{**TOKEN, "type": "TOK2"}])  # reported as TOK2 while reserved
    _work_result(api, device_id=device, action="setup", ok=True, facts={"bus": "1-2"})
    assert api.delete("/v1/allocations/vm-1").status_code == 204
    _work_result(api, device_id=device, action="cleanup", ok=True)
    [now] = api.get("/v1/devices", params={"host": "h1"}).json()
    assert (now["type"], now["state"]) == ("TOK2", "available")


def test_a_clear_of_a_quarantined_device_keeps_the_waiting_type(api: TestClient) -> None:
    device = _held_token(api)
    assert api.delete("/v1/allocations/vm-1").status_code == 204
    _work_result(api, device_id=device, action="cleanup", ok=False, error="scrub failed")
    _report(api, "h1", 2, [{**TOKEN, "type": "TOK2"}])  # reported as TOK2 while quarantined
    r = api.post(f"/v1/devices/{device}/clear", json={"reason": "checked"})
    assert r.status_code == 200, r.text
    _work_result(api, device_id=device, action="cleanup", ok=True)
    [now] = api.get("/v1/devices", params={"host": "h1"}).json()
    assert (now["type"], now["state"]) == ("TOK2", "available")


def test_a_waiting_type_deleted_and_its_id_reused_is_not_applied(api: TestClient) -> None:
    device = _held_token(api)  # TOK id 1, TOK2 id 2
    _report(api, "h1", 2, [{**TOKEN, "type": "TOK2"}])  # marker: type id of TOK2
    assert api.delete("/v1/resource-types/TOK2").status_code == 204  # nothing has that type yet
    _type(api, "GPU_OTHER")  # SQLite reuses the highest rowid: the same id as TOK2 had
    assert api.delete("/v1/allocations/vm-1").status_code == 204
    _work_result(api, device_id=device, action="cleanup", ok=True)
    [now] = api.get("/v1/devices", params={"host": "h1"}).json()
    assert (now["type"], now["state"]) == ("TOK", "available"), now


def test_devices_whose_parents_make_a_loop_are_refused_and_the_rest_taken(api: TestClient) -> None:
    """A device that was its own parent was refused, two devices each other's parent were
    stored: the walks above and below a held device ran on a parent tree that was none."""
    _type(api)
    a, b, c, d = (vf(f"0000:3b:02.{i}") for i in range(4))
    a["parent"], b["parent"] = b["address"], a["address"]  # a loop of two
    c["parent"], d["parent"] = None, c["address"]  # a tree
    r = _report(api, "h1", 1, [a, b, c, d])
    assert r.status_code == 200, r.text
    refused = {x["address"]: x for x in r.json()["refused"]}
    assert set(refused) == {a["address"], b["address"]}
    assert all(x["code"] == "parent_loop" for x in refused.values())
    assert f"{a['address']} -> {b['address']} -> {a['address']}" in refused[a["address"]]["reason"]
    assert sorted(x["address"] for x in api.get("/v1/devices", params={"host": "h1"}).json()) == [
        c["address"],
        d["address"],
    ]


def test_the_kernels_numa_node_of_minus_one_is_no_node(api: TestClient) -> None:
    """A report read straight from sysfs says -1 on a machine without NUMA: the whole report
    was a 400 for it."""
    _type(api)
    r = _report(api, "h1", 1, [vf("0000:3b:02.0", numa_node=-1)])
    assert r.status_code == 200, r.text
    (dev,) = api.get("/v1/devices", params={"host": "h1"}).json()
    assert dev["numa_node"] is None
    assert _report(api, "h1", 2, [vf("0000:3b:02.0", numa_node=-2)]).status_code == 400
