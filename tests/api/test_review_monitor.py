"""Review: a monitor token reads /metrics and nothing else."""

from __future__ import annotations

import pytest

from devassign.domain import Role
from tests.api.test_hostile_review import World, _bearer, world  # noqa: F401


@pytest.mark.parametrize(
    "path",
    [
        "/v1/events/stream?once=true",
        "/ui/events/stream",
        "/v1/taints",
        "/v1/events",
        "/ui/fragments/devices",
        "/v1/tokens",
        "/v1/devices",
    ],
)
def test_monitor_reads_nothing_but_metrics(world: World, path: str) -> None:  # noqa: F811
    mon = _bearer(world.store, Role.MONITOR)
    assert world.api.get("/metrics", headers=mon).status_code == 200
    r = world.api.get(path, headers=mon)
    assert r.status_code in (401, 403, 404), (path, r.status_code, r.text[:200])


def test_anonymous_and_member_metrics_refused(world: World) -> None:  # noqa: F811
    for who in ("anonymous", "blue", "agent_a"):
        assert world.api.get("/metrics", headers=world.who[who]).status_code in (401, 403)
