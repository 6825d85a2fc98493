"""A restarted agent is refused (409 ``agent_conflict``) until the old process has been silent
for the takeover window; it must try again when the server says it would take it over, not
after an exponential backoff grown while it waited (that made a plain restart 40-80 s)."""

from __future__ import annotations

import random

import httpx

from devassign.agent.state import StateFile
from devassign.agent.worker import Agent
from devassign.lifecycle.host import HostOps
from tests.unit.agent.test_agent_worker import World, world  # noqa: F401


def test_a_refused_restart_tries_again_when_the_server_would_take_it(world: World) -> None:  # noqa: F811
    asked: list[float] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        wait = 25.0 - 5 * len(asked)  # the old process's silence grows while this one waits
        asked.append(wait)
        error = {"code": "agent_conflict", "message": "another agent is live", "retry_after": wait}
        return httpx.Response(409, json={"error": error})

    slept: list[float] = []
    client = httpx.Client(transport=httpx.MockTransport(refuse))
    state = StateFile(world.config.state_file, durable=False)
    agent = Agent(
        world.config,
        world.h.root,
        HostOps.simulated(world.h.root),
        client,
        state=state,
        pci_ids=None,
        sleep=slept.append,
        rng=random.Random(7),
    )
    agent.run(iterations=5)
    assert len(slept) == 5
    for wait, delay in zip(asked, slept, strict=False):  # one report a step, refused
        assert max(1.0, wait) <= delay <= max(1.0, wait) + 1.0, (asked, slept)
