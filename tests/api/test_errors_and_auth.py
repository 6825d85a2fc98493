"""Bad input gets a 4xx with a stable code; roles are enforced on every route."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from devassign import schemas
from devassign.domain import Role
from devassign.store import Store
from tests.conftest import vf


def _token(store: Store, role: str, **scope: str) -> dict[str, str]:
    made = store.create_token(schemas.TokenCreate(role=Role(role), **scope), actor="test")  # type: ignore[arg-type]
    return {"Authorization": f"Bearer {made.token}"}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"generation": 1, "devices": [vf("0000:3b:2.1")]}, "is not a PCI address"),
        ({"generation": 1, "devices": [vf("0000:3b:02.1", vendor_id="0x8086")]}, "4 lowercase hex"),
        ({"generation": -1, "devices": []}, "generation"),
        ({"devices": []}, "generation"),
        ({"generation": 1, "devices": [{**vf("0000:3b:02.1"), "colour": "red"}]}, "colour"),
        ({"generation": 1, "devices": [{**vf("0000:3b:02.1"), "kind": "floppy"}]}, "kind"),
        (
            {"generation": 1, "devices": [{**vf("x"), "kind": "mdev_type", "address": "0000:3b:00.0/t"}]},
            "mdev slot",
        ),
    ],
)
def test_malformed_reports_are_400_with_a_message(
    api: TestClient, body: dict[str, object], fragment: str
) -> None:
    r = api.put("/v1/hosts/h1/inventory", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request"
    assert fragment in err["message"]
    assert api.get("/v1/hosts").json() == []  # nothing was half-applied


def test_not_json_and_bad_type_names(api: TestClient) -> None:
    r = api.put("/v1/hosts/h1/inventory", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
    r = api.post("/v1/resource-types", json={"name": "has space"})
    assert r.status_code == 400 and "letters, digits and _" in r.json()["error"]["message"]
    r = api.put("/v1/hosts/bad host!/inventory", json={"generation": 1, "devices": []})
    assert r.status_code == 400


def test_oversized_body_is_413(store: Store) -> None:
    from devassign.server.app import create_app
    from devassign.server.settings import Settings

    app = create_app(Settings(auth=False, sweep_interval=0, max_body_bytes=1000), store=store)
    with TestClient(app) as client:
        big = {"generation": 1, "devices": [vf(f"0000:3b:{i:02x}.1") for i in range(50)]}
        r = client.put("/v1/hosts/h1/inventory", json=big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


def test_unknown_route_and_method(api: TestClient) -> None:
    assert api.get("/v1/nothing-here").json()["error"]["code"] == "not_found"
    r = api.delete("/v1/hosts")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_no_token_is_401(secure_api: TestClient) -> None:
    r = secure_api.get("/v1/resource-types")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"
    r = secure_api.get("/v1/resource-types", headers={"Authorization": "Bearer da_wrong"})
    assert r.status_code == 401


def test_admin_can_do_everything(secure_api: TestClient, store: Store) -> None:
    admin = _token(store, "admin")
    r = secure_api.post("/v1/resource-types", json={"name": "GPU"}, headers=admin)
    assert r.status_code == 201
    r = secure_api.put("/v1/hosts/h1/inventory", json={"generation": 1, "devices": []}, headers=admin)
    assert r.status_code == 200


def test_agent_reports_only_for_its_own_host(secure_api: TestClient, store: Store) -> None:
    admin = _token(store, "admin")
    secure_api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}, headers=admin)
    agent = _token(store, "agent", host="compute-1")
    ok = secure_api.put(
        "/v1/hosts/compute-1/inventory",
        json={"generation": 1, "devices": [vf("0000:3b:02.1")]},
        headers=agent,
    )
    assert ok.status_code == 200
    other = secure_api.put(
        "/v1/hosts/compute-2/inventory", json={"generation": 1, "devices": []}, headers=agent
    )
    assert other.status_code == 403 and other.json()["error"]["code"] == "forbidden"
    assert secure_api.post("/v1/hosts/compute-2/heartbeat", headers=agent).status_code == 403
    assert secure_api.post("/v1/resource-types", json={"name": "X"}, headers=agent).status_code == 403
    # An agent sees its own host only.
    secure_api.put("/v1/hosts/compute-2/inventory", json={"generation": 1, "devices": []}, headers=admin)
    assert [h["name"] for h in secure_api.get("/v1/hosts", headers=agent).json()] == ["compute-1"]
    assert secure_api.get("/v1/hosts/compute-2", headers=agent).status_code == 403


def test_member_sees_types_but_not_hosts(secure_api: TestClient, store: Store) -> None:
    admin = _token(store, "admin")
    secure_api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}, headers=admin)
    member = _token(store, "member", project="p1")
    assert secure_api.get("/v1/resource-types", headers=member).status_code == 200
    assert secure_api.get("/v1/hosts", headers=member).status_code == 403
    assert secure_api.get("/v1/devices", headers=member).status_code == 403
    assert secure_api.post("/v1/resource-types", json={"name": "X"}, headers=member).status_code == 403
    assert secure_api.get("/v1/allocations", headers=member).json() == []
    assert secure_api.post("/v1/tokens", json={"role": "admin"}, headers=member).status_code == 403


ROUTES_NEEDING_ADMIN = [
    ("POST", "/v1/resource-types", {"name": "T1"}),
    ("PATCH", "/v1/resource-types/NIC_VF_1G", {"description": "x"}),
    ("DELETE", "/v1/resource-types/NIC_VF_1G", None),
    ("DELETE", "/v1/hosts/h1", None),
    ("POST", "/v1/tokens", {"role": "admin"}),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES_NEEDING_ADMIN)
def test_every_admin_route_refuses_members_and_agents(
    secure_api: TestClient, store: Store, method: str, path: str, body: object
) -> None:
    for headers in (_token(store, "member", project="p"), _token(store, "agent", host="h1")):
        r = secure_api.request(method, path, json=body, headers=headers)
        assert r.status_code == 403, (method, path, r.text)


def test_token_create_validation(api: TestClient) -> None:
    r = api.post("/v1/tokens", json={"role": "agent"})
    assert r.status_code == 400 and "bound to one host" in r.json()["error"]["message"]
    r = api.post("/v1/tokens", json={"role": "member", "project": "p"})
    assert r.status_code == 201 and r.json()["token"].startswith("da_")


def _counter(text: str, method: str, route: str, status: str) -> float:
    prefix = f'devassign_http_requests_total{{method="{method}",route="{route}",status="{status}"}} '
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    return float(lines[0].removeprefix(prefix)) if lines else 0.0


def test_metrics_count_requests_per_route_and_status(api: TestClient) -> None:
    before = api.get("/metrics").text
    assert (
        api.put("/v1/hosts/h1/inventory", json={"generation": 1, "devices": [vf("0000:3b:02.1")]}).status_code
        == 200
    )
    assert api.get("/v1/hosts/nope").status_code == 404
    assert api.get("/no/such/route").status_code == 404
    after = api.get("/metrics").text
    assert (
        _counter(after, "GET", "/v1/hosts/{host}", "404")
        == _counter(before, "GET", "/v1/hosts/{host}", "404") + 1
    )
    assert _counter(after, "GET", "unmatched", "404") == _counter(before, "GET", "unmatched", "404") + 1
    route = "/v1/hosts/{host}/inventory"
    assert _counter(after, "PUT", route, "200") == _counter(before, "PUT", route, "200") + 1
    assert "devassign_http_request_seconds_bucket" in after


def test_only_admins_list_and_revoke_tokens(secure_api: TestClient, store: Store) -> None:
    admin = _token(store, "admin")
    member = _token(store, "member", project="p1")
    agent = _token(store, "agent", host="h1")
    for who in (member, agent):
        assert secure_api.get("/v1/tokens", headers=who).status_code == 403
        assert secure_api.delete("/v1/tokens/1", headers=who).status_code == 403
    listed = secure_api.get("/v1/tokens", headers=admin).json()
    assert sorted(t["role"] for t in listed) == ["admin", "agent", "member"]
    assert all("token" not in t and "secret_hash" not in t for t in listed)
    for bad in ("0", "-1", "99999999999999999999"):
        r = secure_api.delete(f"/v1/tokens/{bad}", headers=admin)
        assert r.status_code in (400, 404) and r.json()["error"]["code"] in (
            "token_not_found",
            "invalid_request",
        )
    agent_id = next(t["id"] for t in listed if t["role"] == "agent")
    r = secure_api.delete(f"/v1/tokens/{agent_id}", headers=admin)
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    assert secure_api.get("/v1/hosts/h1", headers=agent).status_code == 401
