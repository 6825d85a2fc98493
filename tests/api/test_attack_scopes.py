"""A hostile agent or tenant tries to read past its scope, through the API and the dashboard.

Each test is an attack that once worked; it must now fail with a 4xx and change nothing.
"""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from devassign import schemas
from devassign.domain import Role
from devassign.store import Store
from tests.conftest import vf


def _token(store: Store, role: Role, **scope: str) -> dict[str, str]:
    secret = store.create_token(schemas.TokenCreate(role=role, **scope), "test").token
    return {"Authorization": f"Bearer {secret}"}


def _cloud(api: TestClient, store: Store) -> dict[str, dict[str, str]]:
    """Hosts compute-a and compute-b with two VFs each; project p holds cons-p on compute-a."""
    who = {
        "admin": _token(store, Role.ADMIN),
        "agent_a": _token(store, Role.AGENT, host="compute-a"),
        "agent_b": _token(store, Role.AGENT, host="compute-b"),
        "member_p": _token(store, Role.MEMBER, project="p"),
        "member_q": _token(store, Role.MEMBER, project="q"),
    }
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}, headers=who["admin"]).status_code == 201
    for host, agent in (("compute-a", "agent_a"), ("compute-b", "agent_b")):
        r = api.put(
            f"/v1/hosts/{host}/inventory",
            json={"generation": 1, "devices": [vf("0000:3b:02.1"), vf("0000:3b:02.2")]},
            headers=who[agent],
        )
        assert r.status_code == 200, r.text
    r = api.post(
        "/v1/claims",
        json={
            "consumer": "cons-p",
            "project": "p",
            "hosts": ["compute-a"],
            "requests": [{"name": "n", "type": "NIC_VF_1G"}],
        },
        headers=who["admin"],
    )
    assert r.status_code == 201, r.text
    return who


def _cookie(api: TestClient, headers: dict[str, str]) -> None:
    api.cookies.clear()
    api.cookies.set("devassign_token", headers["Authorization"].removeprefix("Bearer "))


def test_an_agent_cannot_read_another_host_on_the_dashboard(secure_api: TestClient, store: Store) -> None:
    who = _cloud(secure_api, store)
    _cookie(secure_api, who["agent_b"])
    for path in ("/ui/devices?host=compute-a", "/ui/hosts/compute-a", "/ui/events?host=compute-a"):
        r = secure_api.get(path)
        assert r.status_code == 403, (path, r.status_code)
        assert "0000:3b:02.1" not in r.text and "cons-p" not in r.text
    device = store.list_devices(host="compute-a")[0]
    assert secure_api.get(f"/ui/devices/{device.id}").status_code == 404
    page = secure_api.get("/ui/allocations").text
    assert "cons-p" not in page
    # and its own host is fine
    assert secure_api.get("/ui/devices?host=compute-b").status_code == 200


def test_the_api_refuses_the_same_reads(secure_api: TestClient, store: Store) -> None:
    who = _cloud(secure_api, store)
    assert secure_api.get("/v1/devices?host=compute-a", headers=who["agent_b"]).status_code == 403
    assert secure_api.get("/v1/events?host=compute-a", headers=who["agent_b"]).status_code == 403
    assert secure_api.get("/v1/allocations/cons-p", headers=who["agent_b"]).status_code == 404
    listed = secure_api.get("/v1/devices", headers=who["agent_b"]).json()
    assert {d["host"] for d in listed} == {"compute-b"}
    assert secure_api.get("/v1/allocations", headers=who["agent_b"]).json() == []


def test_agents_do_not_explain_read_quotas_capacity_or_release(secure_api: TestClient, store: Store) -> None:
    who = _cloud(secure_api, store)
    body = {"requests": [{"name": "n", "type": "NIC_VF_1G"}]}
    for agent in ("agent_a", "agent_b"):
        assert secure_api.post("/v1/explain", json=body, headers=who[agent]).status_code == 403
        assert secure_api.get("/v1/quotas", headers=who[agent]).status_code == 403
        r = secure_api.get("/v1/capacity?spec=hardware_resource:NIC_VF_1G=1", headers=who[agent])
        assert r.status_code == 403
        # even the allocation on its own host: releasing is the tenant's (or an admin's) call
        assert secure_api.delete("/v1/allocations/cons-p", headers=who[agent]).status_code == 403
    assert store.get_allocation("cons-p", None).state != "released"


def test_members_learn_why_but_not_where(secure_api: TestClient, store: Store) -> None:
    who = _cloud(secure_api, store)
    host_names = ("compute-a", "compute-b")
    devices = [d.id for d in store.list_devices(limit=100)]
    fits = secure_api.post(
        "/v1/explain", json={"requests": [{"name": "n", "type": "NIC_VF_1G"}]}, headers=who["member_q"]
    )
    assert fits.status_code == 200 and fits.json()["fits"] is True
    too_many = secure_api.post(
        "/v1/explain",
        json={"requests": [{"name": "n", "type": "NIC_VF_1G", "count": 3}]},
        headers=who["member_q"],
    )
    assert too_many.status_code == 200 and too_many.json()["fits"] is False
    why = too_many.json()
    assert why["reasons"] or why["funnel"], why  # reason codes, or the pre-filter's counts
    refused = secure_api.post(
        "/v1/claims",
        json={"consumer": "cons-q", "requests": [{"name": "n", "type": "NIC_VF_1G", "count": 3}]},
        headers=who["member_q"],
    )
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "no_valid_host"
    capacity = secure_api.get("/v1/capacity?spec=hardware_resource:NIC_VF_1G=1", headers=who["member_q"])
    assert capacity.status_code == 200 and "per_host" not in capacity.json()
    for r in (fits, too_many, refused, capacity):
        text = json.dumps(r.json())
        assert not any(h in text for h in host_names), text
        assert not any(d in text for d in devices), text
        assert "0000:3b" not in text
    # naming hosts is for operators
    aimed = {"requests": [{"name": "n", "type": "NIC_VF_1G"}], "hosts": ["compute-a"]}
    assert secure_api.post("/v1/explain", json=aimed, headers=who["member_q"]).status_code == 403
    assert (
        secure_api.post("/v1/claims", json={**aimed, "consumer": "c2"}, headers=who["member_q"]).status_code
        == 403
    )
    r = secure_api.get(
        "/v1/capacity?spec=hardware_resource:NIC_VF_1G=1&host=compute-a", headers=who["member_q"]
    )
    assert r.status_code == 403
    # an admin still gets the whole story
    full = secure_api.post(
        "/v1/explain", json={"requests": [{"name": "n", "type": "NIC_VF_1G"}]}, headers=who["admin"]
    )
    assert "compute-" in json.dumps(full.json())


def test_members_see_only_their_own_project(secure_api: TestClient, store: Store) -> None:
    who = _cloud(secure_api, store)
    secure_api.put("/v1/quotas/p/NIC_VF_1G", json={"limit": 3}, headers=who["admin"])
    assert secure_api.get("/v1/quotas?project=p", headers=who["member_q"]).status_code == 403
    assert all(q["project"] == "q" for q in secure_api.get("/v1/quotas", headers=who["member_q"]).json())
    assert secure_api.get("/v1/allocations?project=p", headers=who["member_q"]).status_code == 403
    assert secure_api.get("/v1/allocations/cons-p", headers=who["member_q"]).status_code == 404
    assert secure_api.delete("/v1/allocations/cons-p", headers=who["member_q"]).status_code == 404
    assert secure_api.get("/v1/allocations/cons-p/libvirt", headers=who["member_q"]).status_code == 404
    assert secure_api.get("/v1/events?consumer=cons-p", headers=who["member_q"]).json() == []
    _cookie(secure_api, who["member_q"])
    assert "cons-p" not in secure_api.get("/ui/allocations?project=p").text
    assert "cons-p" not in secure_api.get("/ui/events").text
    assert store.get_allocation("cons-p", None).state != "released"


def test_a_members_explain_page_names_no_host(secure_api: TestClient, store: Store) -> None:
    who = _cloud(secure_api, store)
    _cookie(secure_api, who["member_q"])
    for specs in ("hardware_resource:NIC_VF_1G=1", "hardware_resource:NIC_VF_1G=2"):
        r = secure_api.get("/ui/explain", params={"specs": specs})
        assert r.status_code == 200, r.text
        assert "compute-a" not in r.text and "compute-b" not in r.text and "0000:3b" not in r.text
        assert 'name="hosts"' not in r.text
    r = secure_api.get("/ui/explain", params={"specs": "hardware_resource:NIC_VF_1G=1", "hosts": "compute-a"})
    assert r.status_code == 400
    assert "cannot name hosts" in r.text


def test_handler_options_are_for_admins(secure_api: TestClient, store: Store) -> None:
    who = _cloud(secure_api, store)
    config = {"host_driver": "iavf", "reset": "none-ok"}
    r = secure_api.patch("/v1/resource-types/NIC_VF_1G", json={"config": config}, headers=who["admin"])
    assert r.status_code == 200, r.text
    assert secure_api.get("/v1/resource-types/NIC_VF_1G", headers=who["admin"]).json()["config"] == config
    for caller in ("member_q", "agent_b"):
        listed = secure_api.get("/v1/resource-types", headers=who[caller]).json()
        assert [t["config"] for t in listed] == [{}]
        one = secure_api.get("/v1/resource-types/NIC_VF_1G", headers=who[caller]).json()
        assert one["config"] == {} and one["counts"]["total"] == 4


def test_dashboard_pages_cannot_be_framed_and_forms_refuse_other_sites(
    secure_api: TestClient, store: Store
) -> None:
    who = _cloud(secure_api, store)
    for path in ("/ui/login", "/ui/"):
        r = secure_api.get(path, follow_redirects=False)
        assert r.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    secret = who["member_p"]["Authorization"].removeprefix("Bearer ")
    secure_api.cookies.clear()
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}, {"Origin": "null"}):
        r = secure_api.post("/ui/login", data={"token": secret}, headers=headers, follow_redirects=False)
        assert r.status_code == 403 and "set-cookie" not in r.headers, headers
    same = secure_api.post(
        "/ui/login", data={"token": secret}, headers={"Sec-Fetch-Site": "same-origin"}, follow_redirects=False
    )
    assert same.status_code == 303 and "devassign_token" in same.headers["set-cookie"]
    # A dashboard session cookie is not an API token.
    session = same.cookies.get("devassign_token") or ""
    if session.startswith("ds_"):
        assert (
            secure_api.get("/v1/allocations", headers={"Authorization": f"Bearer {session}"}).status_code
            == 401
        )
