"""A device retired while it still owed a cleanup (missing when its consumer was released,
then cleared) is cleaned first if it comes back: also after its host was deleted and
registered again under the same name, whose rows (and their "cleaned first") the deletion
drops. It was handed to the next claim with its last holder's data on it."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import Clock, vf

A, B = "0000:3b:02.0", "0000:3b:02.1"


def _ok(r: Any, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json() if r.content else None


def _retired_uncleaned_then_deleted(api: TestClient) -> None:
    _ok(api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}), 201)
    _ok(api.put("/v1/hosts/hx/inventory", json={"generation": 1, "devices": [vf(A), vf(B)]}))
    claim = {"consumer": "vm1", "hosts": ["hx"], "requests": [{"name": "n", "type": "NIC_VF_1G", "count": 2}]}
    held = _ok(api.post("/v1/claims", json=claim), 201)["devices"]
    by_address = {d["address"]: d["id"] for d in held}
    setups = [{"device_id": d["id"], "action": "setup", "ok": True} for d in held]
    _ok(api.post("/v1/hosts/hx/work", json={"results": setups}))
    _ok(api.put("/v1/hosts/hx/inventory", json={"generation": 2, "devices": [vf(B)]}))  # A goes
    _ok(api.delete("/v1/allocations/vm1"), 204)
    cleanup = [{"device_id": by_address[B], "action": "cleanup", "ok": True}]
    _ok(api.post("/v1/hosts/hx/work", json={"results": cleanup}))
    _ok(api.post(f"/v1/devices/{by_address[A]}/clear", json={"reason": "gone for good"}))
    _ok(api.delete("/v1/hosts/hx", params={"force": "true"}), 204)
    logged = api.get("/v1/events", params={"host": "hx"}).json()
    deleted = [e for e in logged if e["action"] == "host_deleted"]
    assert A in deleted[0]["message"] and "cleaned first" in deleted[0]["message"]


def _states(api: TestClient) -> dict[str, str]:
    return {d["address"]: d["state"] for d in api.get("/v1/devices", params={"host": "hx"}).json()}


@pytest.mark.parametrize("how", ["report", "batch"])
def test_a_device_retired_uncleaned_is_cleaned_first_after_its_host_is_registered_again(
    api: TestClient, how: str
) -> None:
    _retired_uncleaned_then_deleted(api)
    report = {"generation": 1, "devices": [vf(A), vf(B)]}
    if how == "report":
        answer = _ok(api.put("/v1/hosts/hx/inventory", json=report))
    else:
        answer = _ok(api.post("/v1/reports", json={"reports": [{"host": "hx", "report": report}]}))
        answer = answer["results"][0]["result"]
    assert any(A in w and "cleaned before use" in w for w in answer["warnings"]), answer
    assert _states(api) == {A: "cleaning", B: "available"}
    # the next claim gets B only; A once its cleanup has run
    claim = {"consumer": "vm2", "hosts": ["hx"], "requests": [{"name": "n", "type": "NIC_VF_1G", "count": 2}]}
    assert api.post("/v1/claims", json=claim).status_code == 409
    one = {"consumer": "vm3", "hosts": ["hx"], "requests": [{"name": "n", "type": "NIC_VF_1G"}]}
    assert [d["address"] for d in _ok(api.post("/v1/claims", json=one), 201)["devices"]] == [B]


def test_a_host_deleted_with_nothing_owed_comes_back_as_it_reports(api: TestClient) -> None:
    _ok(api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}), 201)
    _ok(api.put("/v1/hosts/hx/inventory", json={"generation": 1, "devices": [vf(A)]}))
    _ok(api.delete("/v1/hosts/hx", params={"force": "true"}), 204)
    _ok(api.put("/v1/hosts/hx/inventory", json={"generation": 1, "devices": [vf(A), vf(B)]}))
    assert _states(api) == {A: "available", B: "available"}


def test_a_new_device_beside_one_retired_uncleaned_is_cleaned_first(api: TestClient) -> None:
    """The retired device may come back under another address (a card moved to another slot,
    a bus renumbered): a new device of its type on its host is cleaned before anyone gets it,
    as while it was missing."""
    _ok(api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}), 201)
    _ok(api.put("/v1/hosts/hx/inventory", json={"generation": 1, "devices": [vf(A), vf(B)]}))
    claim = {"consumer": "vm1", "hosts": ["hx"], "requests": [{"name": "n", "type": "NIC_VF_1G"}]}
    held = _ok(api.post("/v1/claims", json=claim), 201)["devices"][0]
    setup = {"device_id": held["id"], "action": "setup", "ok": True}
    _ok(api.post("/v1/hosts/hx/work", json={"results": [setup]}))
    rest = [vf(a) for a in (A, B) if a != held["address"]]
    _ok(api.put("/v1/hosts/hx/inventory", json={"generation": 2, "devices": rest}))
    _ok(api.delete("/v1/allocations/vm1"), 204)
    _ok(api.post(f"/v1/devices/{held['id']}/clear", json={"reason": "pulled for RMA"}))
    moved = "0000:3c:02.0"
    answer = _ok(api.put("/v1/hosts/hx/inventory", json={"generation": 3, "devices": [*rest, vf(moved)]}))
    assert any(moved in w and "cleaned before use" in w for w in answer["warnings"]), answer
    assert _states(api)[moved] == "cleaning"


def test_a_host_whose_agent_is_heard_is_deleted_only_by_force(api: TestClient, clock: Clock) -> None:
    """Decommissioning: drain, delete. With its agent still running, the host came back at the
    agent's next report, as a new host without the drain's taint, and took claims again."""
    _ok(api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}), 201)
    _ok(api.put("/v1/hosts/hx/inventory", json={"generation": 1, "devices": [vf(A)]}))
    _ok(api.post("/v1/hosts/hx/taints", json={"effect": "Drain", "reason": "decommission"}), 201)
    refused = _ok(api.delete("/v1/hosts/hx"), 409)["error"]
    assert refused["code"] == "invalid_state" and "was heard from 0 s ago" in refused["message"]
    assert "Stop the agent and revoke its token" in refused["message"]
    assert [t["effect"] for t in api.get("/v1/taints", params={"host": "hx"}).json()] == ["Drain"]
    clock.advance(3600)  # the agent stopped: the host is down
    _ok(api.delete("/v1/hosts/hx"), 204)
    _ok(api.put("/v1/hosts/hy/inventory", json={"generation": 1, "devices": [vf(A)]}))
    _ok(api.delete("/v1/hosts/hy", params={"force": "true"}), 204)
