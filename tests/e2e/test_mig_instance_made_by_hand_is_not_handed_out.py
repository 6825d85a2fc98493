"""An operator makes a MIG GPU instance by hand (``nvidia-smi mig -cgi``) on a GPU whose slots
devassign offers. The slot at exactly that placement holds an instance nobody was given: its
health check says so, no claim gets it, and the operator's instance is never adopted by a
tenant's setup (nor destroyed by its cleanup)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from tests.e2e.agents import A100 as GPU
from tests.e2e.agents import Clock, a100_host

SLOT = f"{GPU}/mig/1g.10gb@6"


def test_a_free_slot_holding_an_instance_made_by_hand_is_not_handed_out(
    tmp_path: Path, api: TestClient
) -> None:
    rules: list[dict[str, Any]] = [{"type": "MIG_1G", "match": {"mig_profile": "1g.10gb"}}]
    clock = Clock()
    agent, smi = a100_host(tmp_path, api, rules, clock)
    assert not agent.step().errors

    # The operator, by hand, for a process on the host: the 1g.10gb at slice 6.
    assert smi.run(["nvidia-smi", "-i", GPU, "-mig", "1"], env={}, timeout=5).returncode == 0
    made = smi.run(["nvidia-smi", "mig", "-i", GPU, "-cgi", "19:6", "-C"], env={}, timeout=5)
    assert made.returncode == 0, made
    (theirs,) = smi.instances(GPU)

    clock.now += 61
    assert not agent.step().errors
    slot = next(d for d in api.get("/v1/devices", params={"host": "a100-1"}).json() if d["address"] == SLOT)
    assert (slot["state"], slot["healthy"]) == ("unhealthy", False), slot
    assert "nobody" in slot["health_reason"]

    claimed = api.post(
        "/v1/claims", json={"consumer": "job-1", "extra_specs": {"hardware_resource:MIG_1G": "1"}}
    )
    assert claimed.status_code == 201, claimed.text
    assert claimed.json()["devices"][0]["address"] != SLOT
    clock.now += 2
    assert [w.ok for w in agent.step().work] == [True]
    assert theirs in smi.instances(GPU) and len(smi.instances(GPU)) == 2

    assert api.delete("/v1/allocations/job-1").status_code == 204
    clock.now += 2
    assert [(w.action, w.ok) for w in agent.step().work] == [("cleanup", True)]
    assert smi.instances(GPU) == [theirs]
