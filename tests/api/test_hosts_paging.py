"""``GET /v1/hosts`` in pages: keyset by name (``limit``, ``after``), the total in a header,
the next page in ``Link``; without ``limit`` every host, as before. Device counts and the
types' counts come from the kept per-host counts and agree with the devices."""

from __future__ import annotations

import re
from typing import Any

from fastapi.testclient import TestClient

from devassign import schemas
from devassign.domain import Role
from devassign.store import Store
from tests.conftest import Clock, vf

NAMES = [f"compute-{i:02d}" for i in range(7)]


def _fleet(api: TestClient) -> None:
    """Seven hosts, compute-03 with one device fewer, reported in an order that is not by name."""
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}).status_code == 201
    for name in reversed(NAMES):
        devices = [vf("0000:3b:02.1"), vf("0000:3b:02.2")]
        if name != "compute-03":
            devices.append(vf("0000:3b:02.3"))
        r = api.put(f"/v1/hosts/{name}/inventory", json={"generation": 1, "devices": devices})
        assert r.status_code == 200, r.text


def _next(r: Any) -> str | None:
    found = re.fullmatch(r'<([^>]+)>; rel="next"', r.headers.get("link", ""))
    return found.group(1) if found else None


def test_pages_walk_every_host_once_by_name_with_the_total_and_a_next_link(api: TestClient) -> None:
    _fleet(api)
    seen: list[str] = []
    url: str | None = "/v1/hosts?limit=3"
    pages = 0
    while url is not None:
        r = api.get(url)
        assert r.status_code == 200, r.text
        assert r.headers["x-total-count"] == "7"
        seen += [h["name"] for h in r.json()]
        url = _next(r)
        pages += 1
    assert seen == NAMES and pages == 3
    # The last page is short and has no next link; a page after the last name is empty.
    last = api.get("/v1/hosts", params={"limit": 3, "after": "compute-06"})
    assert last.json() == [] and "link" not in last.headers and last.headers["x-total-count"] == "7"


def test_after_is_a_name_not_a_position(api: TestClient) -> None:
    _fleet(api)
    # A name that no host has still starts the page after it: hosts come and go between pages.
    r = api.get("/v1/hosts", params={"limit": 2, "after": "compute-02x"})
    assert [h["name"] for h in r.json()] == ["compute-03", "compute-04"]
    assert "after=compute-04" in (_next(r) or "")


def test_without_a_limit_every_host_comes_back_as_a_plain_list(api: TestClient) -> None:
    _fleet(api)
    r = api.get("/v1/hosts")
    assert r.status_code == 200 and isinstance(r.json(), list)
    assert [h["name"] for h in r.json()] == NAMES
    assert r.headers["x-total-count"] == "7" and "link" not in r.headers


def test_device_counts_come_from_the_kept_counts_and_match_the_devices(api: TestClient) -> None:
    _fleet(api)
    listed = {h["name"]: h["device_count"] for h in api.get("/v1/hosts", params={"limit": 100}).json()}
    assert listed == {n: 2 if n == "compute-03" else 3 for n in NAMES}
    # A device gone from the report is removed: not counted any more, on the list or alone.
    r = api.put("/v1/hosts/compute-00/inventory", json={"generation": 2, "devices": [vf("0000:3b:02.1")]})
    assert r.json()["removed"] == ["0000:3b:02.2", "0000:3b:02.3"]
    assert api.get("/v1/hosts", params={"limit": 1}).json()[0]["device_count"] == 1
    assert api.get("/v1/hosts/compute-00").json()["device_count"] == 1
    devices = api.get("/v1/devices", params={"host": "compute-00"}).json()
    assert [d["state"] for d in devices] == ["available", "removed", "removed"]


def test_type_counts_follow_claims_down_hosts_and_taints(api: TestClient, clock: Clock) -> None:
    _fleet(api)
    counts = api.get("/v1/resource-types/NIC_VF_1G").json()["counts"]
    assert (counts["total"], counts["available"], counts["down"], counts["reserved"]) == (20, 20, 0, 0)
    r = api.post("/v1/hosts/compute-05/taints", json={"effect": "NoSchedule", "reason": "PSU swap"})
    assert r.status_code == 201, r.text
    claim = {"consumer": "vm-1", "project": "p", "extra_specs": {"hardware_resource:NIC_VF_1G": "2"}}
    assert api.post("/v1/claims", json=claim).status_code == 201
    held = api.get("/v1/allocations/vm-1").json()["host"]
    assert held != "compute-05"
    counts = api.get("/v1/resource-types").json()[0]["counts"]
    assert (counts["total"], counts["reserved"], counts["tainted"], counts["available"]) == (20, 2, 3, 15)
    # Every host but compute-06 goes silent: the free devices of the others are down.
    clock.advance(60)
    assert api.post("/v1/hosts/compute-06/heartbeat").status_code == 204
    clock.advance(60)
    free = 1 if held == "compute-06" else 3
    counts = api.get("/v1/resource-types/NIC_VF_1G").json()["counts"]
    assert (counts["available"], counts["tainted"], counts["down"]) == (free, 0, 18 - free)
    assert (counts["total"], counts["reserved"]) == (20, 2)
    assert [h["status"] for h in api.get("/v1/hosts", params={"limit": 100}).json()] == ["down"] * 6 + ["up"]


def test_an_agent_pages_through_its_own_host_only(secure_api: TestClient, store: Store) -> None:
    admin = {
        "Authorization": f"Bearer {store.create_token(schemas.TokenCreate(role=Role.ADMIN), 'test').token}"
    }
    _fleet_secure(secure_api, admin)
    agent_token = store.create_token(schemas.TokenCreate(role=Role.AGENT, host="compute-04"), "test").token
    agent = {"Authorization": f"Bearer {agent_token}"}
    r = secure_api.get("/v1/hosts", params={"limit": 1}, headers=agent)
    assert [h["name"] for h in r.json()] == ["compute-04"]
    assert r.headers["x-total-count"] == "1" and "link" not in r.headers
    assert secure_api.get("/v1/hosts", params={"limit": 1, "after": "compute-04"}, headers=agent).json() == []


def _fleet_secure(api: TestClient, admin: dict[str, str]) -> None:
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}, headers=admin).status_code == 201
    for name in NAMES:
        body = {"generation": 1, "devices": [vf("0000:3b:02.1")]}
        assert api.put(f"/v1/hosts/{name}/inventory", json=body, headers=admin).status_code == 200


def test_bad_paging_parameters_are_400(api: TestClient) -> None:
    for params in ({"limit": 0}, {"limit": 100_001}, {"limit": "x"}, {"after": "h" * 254}):
        r = api.get("/v1/hosts", params=params)
        assert r.status_code == 400, (params, r.text)
        assert r.json()["error"]["code"] == "invalid_request"
