"""The agent restarted with a state file restored from an older backup of its host: the
journal in it holds a setup that was interrupted then, for a tenant whose device has long been
set up, released, cleaned and set up again for another tenant since.

Re-running that setup now would put the other tenant's VF on the first one's VLAN (the server
ignores its result, an earlier round's, but the host has changed). An interrupted action is
re-run only while the server still has that round of work on the device."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from devassign.agent.worker import Agent
from tests.e2e.test_database_restored_from_an_older_backup import NIC_TYPE, World, claim, device


class Crash(Exception):
    """The agent process dies here (a test hook's ``on_crash``)."""


def _crash() -> None:
    raise Crash


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with ExitStack() as stack:
        yield World(tmp_path, stack)


def _started(w: World) -> tuple[TestClient, Agent]:
    """A live server with the NIC type, and the host's agent after its first step."""
    api = w.server(w.tmp / "live.db")
    assert api.post("/v1/resource-types", json=NIC_TYPE).status_code == 201
    agent = w.agent(api)
    w.step(agent)
    return api, agent


def _crashed_in_tenant_x_setup(w: World) -> TestClient:
    """As :func:`_started`, then tenant-x's claim, whose setup the agent dies in (journaled)."""
    api, agent = _started(w)
    claim(api, "tenant-x", vlan=100)
    agent.crash_at, agent.on_crash = "intent:setup", _crash
    w.agent_clock.now += 2
    with pytest.raises(Crash):
        agent.step()
    return api


def test_an_interrupted_setup_of_an_old_round_is_not_run_again(world: World) -> None:
    w = world
    api = _crashed_in_tenant_x_setup(w)
    state = w.tmp / "state.json"
    (entry,) = json.loads(state.read_text())["journal"].values()
    assert (entry["action"], entry["phase"]) == ("setup", "started")
    shutil.copy(state, w.tmp / "state-backup.json")  # the host's backup, taken now

    # Life goes on: the setup finishes after the restart, tenant-x leaves, tenant-z comes.
    agent = w.agent(api)
    assert [(d.action, d.ok) for d in w.step(agent).work] == [("setup", True)]
    assert api.delete("/v1/allocations/tenant-x").status_code == 204
    assert [(d.action, d.ok) for d in w.step(agent).work] == [("cleanup", True)]
    claim(api, "tenant-z", vlan=200)
    assert [(d.action, d.ok) for d in w.step(agent).work] == [("setup", True)]
    assert w.vf_settings()["vlan"] == 200

    # The host is restored from its backup, state file included, and its agent started.
    shutil.copy(w.tmp / "state-backup.json", state)
    agent = w.agent(api)
    out = w.step(agent)
    assert not [d for d in out.work if d.action == "setup"], out.work
    assert w.vf_settings()["vlan"] == 200  # tenant-z's VF stays on tenant-z's VLAN
    assert not agent.state.state.journal
    dev = device(api)
    assert (dev["state"], dev["consumer"]) == ("assigned", "tenant-z")


def test_an_interrupted_setup_of_the_current_round_still_runs_again(world: World) -> None:
    """The ordinary crash: the server still has the setup to do, so the journaled one runs."""
    w = world
    api = _crashed_in_tenant_x_setup(w)
    agent = w.agent(api)
    done = w.step(agent).work
    assert [(d.action, d.ok, d.replayed) for d in done] == [("setup", True, True)]
    assert device(api)["state"] == "assigned" and w.vf_settings()["vlan"] == 100


def test_a_holding_released_since_the_backup_costs_one_refused_setup(world: World) -> None:
    """The backup has the VF set up for tenant-x, which has released it since: the agent cannot
    tell that from a server that lost tenant-x, so the next tenant's setup is refused once, the
    VF is cleaned again, and the claim after that gets it. Nothing stays stuck: checked as held
    for tenant-x (on vfio-pci, tenant-x's VLAN) the free VF failed every check, so it stayed
    unhealthy for good and no claim, hence no cleanup, ever came."""
    w = world
    api, agent = _started(w)
    claim(api, "tenant-x", vlan=100)
    w.step(agent)
    state = w.tmp / "state.json"
    shutil.copy(state, w.tmp / "state-backup.json")
    assert api.delete("/v1/allocations/tenant-x").status_code == 204
    assert [(d.action, d.ok) for d in w.step(agent).work] == [("cleanup", True)]

    shutil.copy(w.tmp / "state-backup.json", state)
    agent = w.agent(api)
    w.step(agent)
    claim(api, "tenant-y", vlan=200)
    (refused,) = w.step(agent).work
    assert (refused.action, refused.ok) == ("setup", False) and "tenant-x" in (refused.error or "")
    assert [(d.action, d.ok) for d in w.step(agent).work] == [("cleanup", True)]
    assert device(api)["state"] == "available" and not agent.state.state.assigned
    assert api.delete("/v1/allocations/tenant-y").status_code in (204, 404)
    claim(api, "tenant-y", vlan=200)
    assert [(d.action, d.ok) for d in w.step(agent).work] == [("setup", True)]
    assert device(api)["state"] == "assigned" and w.vf_settings()["vlan"] == 200
