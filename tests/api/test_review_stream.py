"""Review: the event stream's scoping and odd positions."""

from __future__ import annotations

import pytest

from tests.api.test_hostile_review import World, world  # noqa: F401


def test_member_stream_sees_only_its_project(world: World) -> None:  # noqa: F811
    r = world.api.get("/v1/events/stream", params={"once": "true"}, headers=world.who["blue"])
    assert r.status_code == 200, r.text
    assert "red-vm" not in r.text and "compute-b" not in r.text


def test_agent_stream_other_host_is_403(world: World) -> None:  # noqa: F811
    r = world.api.get(
        "/v1/events/stream", params={"once": "true", "host": "compute-b"}, headers=world.who["agent_a"]
    )
    assert r.status_code == 403, r.text


@pytest.mark.parametrize("lei", ["-1", "abc", "٣".encode(), "99999999999999999999999"])
def test_odd_last_event_id_is_400(world: World, lei: str | bytes) -> None:  # noqa: F811
    r = world.api.get(
        "/v1/events/stream", params={"once": "true"}, headers={**world.who["admin"], "Last-Event-ID": lei}
    )
    assert r.status_code == 400, r.text
