"""A host whose agent lost its state file while vGPU slots were held, recovered as the operations
guide says (a state file with the host id alone): the mdevs the agent made for the holders are
its own, learnt from the server's records, never "made by hand". The free slots beside them
stay available, and releasing a holder cleans its slot as usual."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient

from devassign.agent.config import parse_config
from tests.conftest import Clock as ServerClock
from tests.e2e.agents import in_process_agent
from tests.e2e.test_vgpu_mdev_made_by_hand_blocks_slots import RESOURCE, _claim, _out_of_service, _world


def test_after_a_lost_state_file_the_agents_own_mdevs_keep_no_free_slot_out(
    tmp_path: Path, api: TestClient, clock: ServerClock
) -> None:
    server_clock = clock
    agent, clock, sysfs = _world(tmp_path, api)
    assert [_claim(api, f"vm-{i}", "VGPU_T4_4Q") for i in (1, 2)] == [201, 201]
    clock.now += 2
    assert [w.ok for w in agent.step().work] == [True, True]
    assert len(sysfs.listdir("bus/mdev/devices")) == 2

    # The state file is lost; the operator writes back the host id alone, and restarts the agent.
    host_id = api.get("/v1/hosts/gpu-1").json()["host_id"]
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"host_id": host_id, "host": "gpu-1"}))
    rules = [{"type": r, "match": {"mdev_type": t}} for t, r in RESOURCE.items()]
    config = parse_config({"host": "gpu-1", "device": rules, "state_file": str(state), "health_interval": 60})
    server_clock.advance(40)  # the old process silent past the takeover time
    agent = in_process_agent(config, sysfs.root, api, clock, seed=2)
    for _ in range(4):
        clock.now += 61
        assert not agent.step().errors
    assert _out_of_service(api) == {}
    assert [_claim(api, f"vm-{i}", "VGPU_T4_4Q") for i in (3, 4, 5)] == [201, 201, 409]
    clock.now += 2
    assert [w.ok for w in agent.step().work] == [True, True]

    assert api.delete("/v1/allocations/vm-1").status_code == 204
    clock.now += 2
    assert [(w.action, w.ok) for w in agent.step().work] == [("cleanup", True)]
    assert len(sysfs.listdir("bus/mdev/devices")) == 3
