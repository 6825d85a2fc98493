"""A work pass of slow handlers (MIG instances, commands: up to a minute each) takes minutes;
the agent sends no heartbeat while it runs. The server must still hear from the host, or it
marks the host down (a false ``host_down``: alerts, and its free devices out of every claim)
while its agent is busy doing the host's own work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from devassign.agent import worker
from devassign.agent.config import parse_config
from devassign.store import Store
from tests.conftest import Clock as ServerClock
from tests.e2e.agents import Clock, in_process_agent
from tests.fixtures.sysfs import host

SLOW = 40.0  # seconds each setup takes: less than --down-after (90 s), four of them more


def test_a_pass_of_slow_setups_keeps_its_host_up(
    tmp_path: Path, api: TestClient, store: Store, clock: ServerClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = host(tmp_path / "root", vfio=True)
    h.sriov_pf(
        "0000:5e:00.0", "8086", "1572", vfs=4, vf_device="154c", ifname="ens1f0", vf_iommu_group_start=20
    )
    assert api.post("/v1/resource-types", json={"name": "NIC_VF"}).status_code == 201
    rules = [{"type": "NIC_VF", "match": {"vendor_id": "8086", "product_id": "154c"}}]
    config = parse_config({"host": "c1", "device": rules, "state_file": str(tmp_path / "state.json")})
    agent_clock = Clock()
    agent = in_process_agent(config, h.root, api, agent_clock)
    assert not agent.step().errors
    for n in range(4):
        body = {"consumer": f"vm-{n}", "requests": [{"name": "nic", "type": "NIC_VF"}]}
        assert api.post("/v1/claims", json=body).status_code == 201

    real = worker.run_action

    def slow(action: str, *args: Any, **kwargs: Any) -> Any:
        if action == "setup":
            clock.advance(SLOW)
            agent_clock.now += SLOW
            store.sweep()
        return real(action, *args, **kwargs)

    monkeypatch.setattr(worker, "run_action", slow)
    agent_clock.now += 2
    done = agent.step()
    assert [(d.action, d.ok) for d in done.work] == [("setup", True)] * 4, done
    assert not [e for e in api.get("/v1/events").json() if e["action"] == "host_down"]
    assert api.get("/v1/hosts/c1").json()["status"] == "up"
