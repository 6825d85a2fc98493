"""A NUL (``%00``) in a path or query parameter is a 400 on both backends. It was a 500 on
PostgreSQL (text cannot hold NUL, so every lookup by such a name failed in the database) and
a 404 or an empty list on SQLite."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/resource-types/%00"),
        ("PATCH", "/v1/resource-types/a%00b"),
        ("DELETE", "/v1/resource-types/%00"),
        ("GET", "/v1/hosts/%00"),
        ("DELETE", "/v1/hosts/%00"),
        ("POST", "/v1/hosts/%00/heartbeat"),
        ("GET", "/v1/hosts/%00/work"),
        ("GET", "/v1/devices/%00"),
        ("GET", "/v1/devices?host=%00"),
        ("GET", "/v1/devices?type=GPU%00"),
        ("GET", "/v1/devices?address=%00"),
        ("GET", "/v1/allocations/%00"),
        ("DELETE", "/v1/allocations/%00"),
        ("GET", "/v1/allocations/%00/libvirt"),
        ("GET", "/v1/allocations?consumer=%00"),
        ("GET", "/v1/allocations?project=%00"),
        ("GET", "/v1/events?host=%00"),
        ("GET", "/v1/events?device=%00"),
        ("GET", "/v1/events?consumer=%00"),
        ("GET", "/v1/quotas?project=%00"),
        ("PUT", "/v1/quotas/%00/GPU"),
        ("PUT", "/v1/quotas/p/%00"),
        ("GET", "/ui/hosts/%00"),
    ],
)
def test_nul_in_the_url_is_400(api: TestClient, method: str, path: str) -> None:
    assert api.post("/v1/resource-types", json={"name": "GPU"}).status_code == 201
    r = api.request(method, path, json={"limit": 1} if path.startswith("/v1/quotas/") else None)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request" and "NUL" in err["message"]
    assert [t["name"] for t in api.get("/v1/resource-types").json()] == ["GPU"]
    assert api.get("/v1/quotas").json() == []
