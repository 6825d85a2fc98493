"""Review: taint expiry edge cases (huge durations must be a 400, not a 500, and change nothing)."""

from __future__ import annotations

import pytest

from tests.api.test_hostile_review import World, world  # noqa: F401


@pytest.mark.parametrize(
    "expiry",
    [
        {"expires_in": 86399999999999},
        {"expires_in": "P999999999D"},
        {"expires_at": "9999-12-31T23:59:59+00:00"},
    ],
)
def test_huge_taint_expiry_is_400_and_changes_nothing(world: World, expiry: dict) -> None:  # noqa: F811
    api, admin = world.api, world.who["admin"]
    dev = api.get("/v1/devices", params={"host": "compute-a"}, headers=admin).json()[0]["id"]
    before = api.get("/v1/taints", headers=admin).json()
    r = api.post(
        f"/v1/devices/{dev}/taints", json={"effect": "no_schedule", "reason": "x", **expiry}, headers=admin
    )
    assert r.status_code in (201, 400), r.text
    if r.status_code == 400:
        assert r.json()["error"]["code"] == "invalid_request", r.text
        assert api.get("/v1/taints", headers=admin).json() == before


def test_past_taint_expiry_is_400(world: World) -> None:  # noqa: F811
    api, admin = world.api, world.who["admin"]
    dev = api.get("/v1/devices", params={"host": "compute-a"}, headers=admin).json()[0]["id"]
    r = api.post(
        f"/v1/devices/{dev}/taints",
        json={"effect": "no_schedule", "reason": "x", "expires_at": "2000-01-01T00:00:00Z"},
        headers=admin,
    )
    assert r.status_code == 400, r.text
