"""A token's scope must be one its role uses: an admin token listed "with host compute-1" is
still a full admin, so such a request is refused (400) rather than stored as if it limited
anything."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient


@pytest.mark.parametrize(
    "body",
    [
        {"role": "admin", "host": "compute-1"},
        {"role": "admin", "project": "p1"},
        {"role": "member", "project": "p1", "host": "compute-1"},
        {"role": "agent", "host": "compute-1", "project": "p1"},
        {"role": "monitor", "project": "p1"},
    ],
)
def test_a_scope_the_role_ignores_is_400_and_no_token_is_made(api: TestClient, body: dict) -> None:
    before = api.get("/v1/tokens").json()
    r = api.post("/v1/tokens", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_request"
    assert "leave out" in r.json()["error"]["message"]
    assert api.get("/v1/tokens").json() == before


@pytest.mark.parametrize(
    "body", [{"role": "admin"}, {"role": "member", "project": "p1"}, {"role": "agent", "host": "compute-1"}]
)
def test_the_scopes_each_role_uses_are_fine(api: TestClient, body: dict) -> None:
    assert api.post("/v1/tokens", json=body).status_code == 201
