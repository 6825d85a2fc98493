"""A monitor token, the one a Prometheus server holds: it reads ``/metrics`` and nothing else.

``/metrics`` names the projects that have quotas (and, with per-host series, the hosts), so it is
not public; a leaked scraper token must not open the API or the dashboard either.
"""

from __future__ import annotations

from fastapi.testclient import TestClient

from devassign import schemas
from devassign.domain import Role
from devassign.store import Store


def _token(store: Store, role: Role, **scope: str) -> schemas.TokenCreated:
    return store.create_token(schemas.TokenCreate(role=role, **scope), "test")


def test_monitor_reads_metrics_only(secure_api: TestClient, store: Store) -> None:
    monitor = _token(store, Role.MONITOR)
    admin = _token(store, Role.ADMIN)
    as_monitor = {"Authorization": f"Bearer {monitor.token}"}
    assert secure_api.get("/metrics").status_code == 401
    r = secure_api.get("/metrics", headers=as_monitor)
    assert r.status_code == 200 and "devassign_" in r.text
    for path in ("/v1/resource-types", "/v1/allocations", "/v1/events", "/v1/hosts", "/v1/tokens"):
        r = secure_api.get(path, headers=as_monitor)
        assert r.status_code == 403, (path, r.text)
        assert r.json()["error"]["code"] == "forbidden"
        assert "monitor" in r.json()["error"]["message"]
    assert secure_api.get("/metrics", headers={"Authorization": f"Bearer {admin.token}"}).status_code == 200


def test_monitor_cannot_sign_in_to_the_dashboard(secure_api: TestClient, store: Store) -> None:
    monitor = _token(store, Role.MONITOR)
    admin = _token(store, Role.ADMIN)
    r = secure_api.post("/ui/login", data={"token": monitor.token}, follow_redirects=False)
    assert r.status_code == 403 and "reads only /metrics" in r.text
    assert "devassign_token" not in r.cookies
    r = secure_api.post(
        f"/v1/tokens/{monitor.id}/login-link", headers={"Authorization": f"Bearer {admin.token}"}
    )
    assert r.status_code == 400 and "monitor token" in r.json()["error"]["message"]
    secure_api.cookies.set("devassign_token", monitor.token)
    assert secure_api.get("/ui/", follow_redirects=False).status_code == 403
    secure_api.cookies.clear()


def test_a_monitor_token_has_no_scope(secure_api: TestClient, store: Store) -> None:
    admin = {"Authorization": f"Bearer {_token(store, Role.ADMIN).token}"}
    for scope in ({"project": "p"}, {"host": "compute-a"}):
        r = secure_api.post("/v1/tokens", json={"role": "monitor", **scope}, headers=admin)
        assert r.status_code == 400 and "leave out host and project" in r.json()["error"]["message"]
    r = secure_api.post("/v1/tokens", json={"role": "monitor", "name": "prometheus"}, headers=admin)
    assert r.status_code == 201 and r.json()["role"] == "monitor"
