"""The server's own clock stepped back (an NTP step after a boot on a wrong hardware clock, a
VM restored from a snapshot): the times it wrote before the step are in its future.

A host whose agent was last heard "in the future" must still go down once it is silent for
``--down-after`` (else claims keep landing on a dead host), and a restarted agent must take
its host over once the old process is silent for the takeover time (else the host has no
agent at all, refused with ``agent_conflict``, for as long as the step was)."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from devassign.agent.config import parse_config
from devassign.agent.worker import Agent
from devassign.store import Store
from tests.conftest import Clock as ServerClock
from tests.e2e.agents import Clock, in_process_agent
from tests.fixtures.sysfs import host

HOUR = 3600.0


def _agent(tmp_path: Path, api: TestClient, agent_clock: Clock, seed: int) -> Agent:
    config = parse_config(
        {
            "host": "c1",
            "device": [{"type": "GPU", "match": {"vendor_id": "10de"}}],
            "state_file": str(tmp_path / "state.json"),
        }
    )
    return in_process_agent(config, tmp_path / "sys-root", api, agent_clock, seed=seed)


def _host(tmp_path: Path) -> None:
    h = host(tmp_path / "sys-root", vfio=True)
    h.pci("0000:3b:00.0", "10de", "1eb8", cls="030200", iommu_group=12, driver="nvidia")


def test_a_host_last_heard_before_the_step_goes_down_when_silent(
    tmp_path: Path, api: TestClient, store: Store, clock: ServerClock
) -> None:
    _host(tmp_path)
    assert api.post("/v1/resource-types", json={"name": "GPU"}).status_code == 201
    agent = _agent(tmp_path, api, Clock(), seed=1)
    assert not agent.step().errors
    clock.advance(-HOUR)  # the server's clock is stepped back; the agent dies
    for _ in range(12):
        clock.advance(10)
        store.sweep()
    # 120 s of silence by the server's clock, past --down-after (90 s)
    assert api.get("/v1/hosts/c1").json()["status"] == "down"


def test_a_restarted_agent_takes_its_host_over_after_the_step(
    tmp_path: Path, api: TestClient, store: Store, clock: ServerClock
) -> None:
    _host(tmp_path)
    assert api.post("/v1/resource-types", json={"name": "GPU"}).status_code == 201
    agent_clock = Clock()
    old = _agent(tmp_path, api, agent_clock, seed=1)
    assert not old.step().errors
    clock.advance(-HOUR)  # the server's clock is stepped back, and the agent restarted
    agent_clock.now += 5
    new = _agent(tmp_path, api, agent_clock, seed=2)
    taken = False
    for _ in range(12):  # two minutes of the server's clock, far past the takeover time (30 s)
        clock.advance(10)
        agent_clock.now += 10
        store.sweep()
        if not new.step().errors:
            taken = True
            break
    assert taken, "the restarted agent is still refused as a second live agent"
    assert api.get("/v1/hosts/c1").json()["status"] == "up"
