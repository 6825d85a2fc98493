"""A vGPU (mdev) slot released while its setup ran leaves no other slot out of service.

The setup made the mdev, the server ignored its result (the slot was cleaning by then), and a
health check runs before the cleanup. The mdev is the agent's own (it set the slot up and has
not cleaned it yet), not one made by hand: the slots the GPU cannot create beside it are kept
from claims by their pool's counters and mode while the slot is cleaning, and are not called
unhealthy; once the cleanup passes, every slot is available at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from devassign.agent.worker import Agent
from devassign.lifecycle.executor import ActionResult
from devassign.schemas import WorkItem
from tests.e2e.test_vgpu_mdev_made_by_hand_blocks_slots import _claim, _out_of_service, _world


def test_an_mdev_slot_released_during_its_setup_leaves_the_other_slots_healthy(
    tmp_path: Path, api: TestClient
) -> None:
    agent, clock, _sysfs = _world(tmp_path, api)
    assert _claim(api, "vm-1", "VGPU_T4_4Q") == 201

    real = Agent._action

    def released_meanwhile(self: Agent, action: Any, item: WorkItem) -> ActionResult:
        if action == "setup":  # the tenant lets go while the agent is at it
            assert api.delete("/v1/allocations/vm-1").status_code == 204
        return real(self, action, item)

    agent._action = released_meanwhile.__get__(agent)  # type: ignore[method-assign]
    clock.now += 2
    assert [(w.action, w.ok, w.applied) for w in agent.step().work] == [("setup", True, False)]

    clock.now += 61  # a health check before the cleanup
    assert [(w.action, w.ok) for w in agent.step().work] == [("cleanup", True)]
    assert _out_of_service(api) == {}
    assert _claim(api, "vm-2", "VGPU_T4_8Q") == 201
