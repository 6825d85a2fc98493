"""The server's side of the device lifecycle: agents' work and results, clearing, libvirt XML."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from lxml import etree

from tests.conftest import Clock, vf

# The request params these tests send, declared by the type (a type accepts none otherwise).
VF_PARAMS = {"mac": {"type": "mac"}, "vlan": {"type": "integer", "min": 1, "max": 4094}}


def _setup(api: TestClient, devices: list[dict[str, Any]], **type_body: Any) -> None:
    body = {"name": "NIC_VF_1G", "params": VF_PARAMS, **type_body}
    assert api.post("/v1/resource-types", json=body).status_code == 201
    r = api.put("/v1/hosts/c1/inventory", json={"generation": 1, "devices": devices})
    assert r.status_code == 200 and not r.json()["refused"], r.text


def _claim(api: TestClient, consumer: str, count: int = 1, **params: Any) -> dict[str, Any]:
    body = {
        "consumer": consumer,
        "requests": [{"name": "nic", "type": "NIC_VF_1G", "count": count, "params": params}],
    }
    r = api.post("/v1/claims", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def _work(api: TestClient) -> list[dict[str, Any]]:
    r = api.get("/v1/hosts/c1/work")
    assert r.status_code == 200, r.text
    return r.json()["items"]


def _results(api: TestClient, *results: dict[str, Any]) -> list[dict[str, Any]]:
    r = api.post("/v1/hosts/c1/work", json={"results": list(results)})
    assert r.status_code == 200, r.text
    return r.json()


def _state(api: TestClient, device_id: str) -> str:
    return str(api.get(f"/v1/devices/{device_id}").json()["state"])


def test_setup_then_release_then_cleanup(api: TestClient, clock: Clock) -> None:
    _setup(api, [vf("0000:3b:02.1"), vf("0000:3b:02.2")])
    one_mac = api.post(
        "/v1/claims",
        json={
            "consumer": "vm-1",
            "requests": [
                {"name": "n", "type": "NIC_VF_1G", "count": 2, "params": {"mac": "52:54:00:00:00:01"}}
            ],
        },
    )
    assert one_mac.status_code == 400 and "one device" in one_mac.json()["error"]["message"]
    alloc = _claim(api, "vm-1", count=2, vlan=100)
    work = _work(api)
    assert [w["action"] for w in work] == ["setup", "setup"]
    assert work[0]["params"] == {"vlan": 100}
    assert work[0]["companions"] == [work[1]["device"]["address"]]
    ids = [d["id"] for d in alloc["devices"]]
    out = _results(
        api,
        *({"device_id": i, "action": "setup", "ok": True, "facts": {"original_driver": "iavf"}} for i in ids),
    )
    assert [o["state"] for o in out] == ["assigned", "assigned"]
    assert api.get("/v1/allocations/vm-1").json()["state"] == "assigned"
    assert _work(api) == []
    # A confirmed allocation does not expire.
    clock.advance(3600)
    api.post("/v1/hosts/c1/heartbeat")
    assert api.app.state.store.sweep() == []  # type: ignore[attr-defined]

    assert api.get("/v1/allocations/vm-1").json()["release_reason"] is None
    assert api.delete("/v1/allocations/vm-1").status_code == 204
    ended = api.get("/v1/allocations/vm-1").json()
    assert (ended["release_reason"], ended["release_detail"]) == ("released", None)
    work = _work(api)
    assert [w["action"] for w in work] == ["cleanup", "cleanup"]
    assert work[0]["facts"] == {"original_driver": "iavf"}
    out = _results(api, *({"device_id": i, "action": "cleanup", "ok": True} for i in ids))
    assert [o["state"] for o in out] == ["available", "available"]
    assert api.get("/v1/devices/" + ids[0]).json()["consumer"] is None
    # The devices can be claimed again.
    _claim(api, "vm-2", count=2)


def test_setup_failure_releases_the_whole_allocation(api: TestClient) -> None:
    _setup(api, [vf("0000:3b:02.1"), vf("0000:3b:02.2")])
    alloc = _claim(api, "vm-1", count=2)
    a, b = (d["id"] for d in alloc["devices"])
    _results(api, {"device_id": a, "action": "setup", "ok": True})
    out = _results(api, {"device_id": b, "action": "setup", "ok": False, "error": "vfio bind failed"})
    assert out[0]["state"] == "cleaning"
    assert (_state(api, a), _state(api, b)) == ("cleaning", "cleaning")
    assert api.get("/v1/allocations").json() == []
    events = api.get("/v1/events", params={"consumer": "vm-1"}).json()
    assert any("vfio bind failed" in e["message"] for e in events)
    # The allocation says why it ended, not only the event log: a client polling it for
    # ``assigned`` saw ``released`` as after its own release.
    ended = api.get("/v1/allocations/vm-1").json()
    assert (ended["state"], ended["release_reason"]) == ("released", "setup_failed")
    b_address = next(d["address"] for d in alloc["devices"] if d["id"] == b)
    assert ended["release_detail"] == f"setup of {b_address} failed: vfio bind failed"
    # A late result for a device no longer reserved is ignored, not applied.
    late = _results(api, {"device_id": a, "action": "setup", "ok": True})
    assert late[0]["applied"] is False and _state(api, a) == "cleaning"


def test_cleanup_failure_quarantines_until_cleared(api: TestClient) -> None:
    _setup(api, [vf("0000:3b:02.1")])
    dev = _claim(api, "vm-1")["devices"][0]["id"]
    _results(api, {"device_id": dev, "action": "setup", "ok": True})
    api.delete("/v1/allocations/vm-1")
    out = _results(api, {"device_id": dev, "action": "cleanup", "ok": False, "error": "FLR timed out"})
    assert out[0]["state"] == "quarantined"
    shown = api.get(f"/v1/devices/{dev}").json()
    assert shown["state"] == "quarantined" and "FLR timed out" in shown["quarantine_reason"]
    refused = api.post(
        "/v1/claims", json={"consumer": "vm-2", "extra_specs": {"hardware_resource:NIC_VF_1G": "1"}}
    )
    assert refused.status_code == 409
    # Why the host has none free, and what brings it back: not only "has 0 free".
    message = refused.json()["error"]["message"]
    assert "1 of them only because devices are quarantined after a failed cleanup" in message, message
    named = api.post(
        "/v1/explain", json={"hosts": ["c1"], "extra_specs": {"hardware_resource:NIC_VF_1G": "1"}}
    )
    (verdict,) = named.json()["hosts"]
    assert "1 more quarantined after a failed cleanup" in verdict["message"], verdict
    cleared = api.post(f"/v1/devices/{dev}/clear", json={"reason": "reseated the card"})
    assert cleared.status_code == 200 and cleared.json()["state"] == "cleaning"
    named = api.post(
        "/v1/explain", json={"hosts": ["c1"], "extra_specs": {"hardware_resource:NIC_VF_1G": "1"}}
    )
    assert "1 more being cleaned" in named.json()["hosts"][0]["message"]
    again = api.post(f"/v1/devices/{dev}/clear", json={})
    assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_state"
    _results(api, {"device_id": dev, "action": "cleanup", "ok": True})
    assert _state(api, dev) == "available"


def test_one_time_use_stays_quarantined_after_cleanup(api: TestClient) -> None:
    _setup(api, [vf("0000:3b:02.1")], config={"one_time_use": True})
    dev = _claim(api, "vm-1")["devices"][0]["id"]
    api.delete("/v1/allocations/vm-1")
    _results(api, {"device_id": dev, "action": "cleanup", "ok": True})
    assert _state(api, dev) == "quarantined"
    assert api.post(f"/v1/devices/{dev}/clear", json={}).json()["state"] == "available"


def test_libvirt_xml_for_a_consumer(api: TestClient) -> None:
    _setup(api, [vf("0000:3b:02.1")])
    _claim(api, "vm-1", mac="52:54:00:00:00:01", vlan=100)
    r = api.get("/v1/allocations/vm-1/libvirt")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/xml")
    root = etree.fromstring(f"<devices>{r.text}</devices>".encode())
    iface = root.find("interface")
    assert iface is not None and iface.get("type") == "hostdev"
    assert iface.find("mac").get("address") == "52:54:00:00:00:01"  # type: ignore[union-attr]
    assert iface.find("vlan/tag").get("id") == "100"  # type: ignore[union-attr]
    assert api.get("/v1/allocations/nobody/libvirt").status_code == 404


def test_work_is_only_for_the_hosts_agent(secure_api: TestClient, store: Any) -> None:
    from devassign import schemas
    from devassign.domain import Role

    agent = store.create_token(schemas.TokenCreate(role=Role.AGENT, host="c2"), actor="t").token
    r = secure_api.get("/v1/hosts/c1/work", headers={"Authorization": f"Bearer {agent}"})
    assert r.status_code == 403


def test_a_result_for_an_older_holder_is_ignored(api: TestClient) -> None:
    _setup(api, [vf("0000:3b:02.1")])
    dev = _claim(api, "vm-1")["devices"][0]["id"]
    api.delete("/v1/allocations/vm-1")
    _results(api, {"device_id": dev, "action": "cleanup", "ok": True, "consumer": "vm-1"})
    _claim(api, "vm-2")
    late = _results(
        api, {"device_id": dev, "action": "setup", "ok": False, "error": "old", "consumer": "vm-1"}
    )
    assert late[0]["applied"] is False and "vm-2" in late[0]["note"]
    assert _state(api, dev) == "reserved"


def test_a_reserved_device_gone_before_its_setup_releases_the_claim_at_once(api: TestClient) -> None:
    """The host took the device for itself (or it was pulled) between the claim and its setup:
    the claim waited for its reservation to lapse (minutes), its device missing, before the
    client learnt it would never be set up."""
    _setup(api, [vf("0000:3b:02.1"), vf("0000:3b:02.2")])
    alloc = _claim(api, "vm-1")
    (held,) = alloc["devices"]
    others = [vf(a) for a in ("0000:3b:02.1", "0000:3b:02.2") if a != held["address"]]
    r = api.put("/v1/hosts/c1/inventory", json={"generation": 2, "devices": others})
    assert r.status_code == 200, r.text
    assert any(w.startswith("vm-1 released:") for w in r.json()["warnings"]), r.json()["warnings"]
    ended = api.get("/v1/allocations/vm-1").json()
    assert (ended["state"], ended["release_reason"]) == ("released", "device_missing")
    assert held["address"] in ended["release_detail"] and "before its setup" in ended["release_detail"]
    assert _state(api, held["id"]) == "missing"
    assert _work(api) == []  # nothing to set up
    # Back: cleaned before anyone gets it (the host had it meanwhile).
    back = api.put(
        "/v1/hosts/c1/inventory", json={"generation": 3, "devices": [*others, vf(held["address"])]}
    )
    assert back.status_code == 200, back.text
    assert _state(api, held["id"]) == "cleaning"


def test_an_assigned_device_gone_stays_its_holders(api: TestClient) -> None:
    """Only a setup that can never run ends the claim: a set-up device that leaves the report
    is missing, still its holder's (its guest may have it)."""
    _setup(api, [vf("0000:3b:02.1")])
    dev = _claim(api, "vm-1")["devices"][0]["id"]
    _results(api, {"device_id": dev, "action": "setup", "ok": True})
    assert api.put("/v1/hosts/c1/inventory", json={"generation": 2, "devices": []}).status_code == 200
    assert api.get("/v1/allocations/vm-1").json()["state"] == "assigned"
    assert _state(api, dev) == "missing"
