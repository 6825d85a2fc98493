"""An operator makes a MIG GPU instance by hand at a placement no free slot has exactly (a
profile devassign does not offer there). Every free slot whose memory slices it takes cannot
be created while it is there: those slots fail their health check and no claim gets them,
while the slots devassign itself holds on the same GPU never count as made by hand. Once the
operator destroys the instance, the slots come back after their passing checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from tests.e2e.agents import A100 as GPU
from tests.e2e.agents import Clock, a100_host


def _slots(api: TestClient) -> dict[str, dict[str, Any]]:
    return {d["address"]: d for d in api.get("/v1/devices", params={"host": "a100-1"}).json()}


def _slices(slot: dict[str, Any]) -> set[int]:
    return set(slot["attributes"]["mig_slices"])


def test_an_instance_made_by_hand_keeps_the_free_slots_it_overlaps_out_of_service(
    tmp_path: Path, api: TestClient
) -> None:
    rules: list[dict[str, Any]] = [
        {"type": "MIG_1G", "match": {"mig_profile": "1g.10gb"}},
        {"type": "MIG_3G", "match": {"mig_profile": "3g.40gb"}},
    ]
    clock = Clock()
    agent, smi = a100_host(tmp_path, api, rules, clock)
    assert not agent.step().errors

    # A tenant holds a 1g slot: its instance is devassign's own.
    one = {"hardware_resource:MIG_1G": "1"}
    claimed = api.post("/v1/claims", json={"consumer": "job-1", "extra_specs": one})
    assert claimed.status_code == 201, claimed.text
    held = claimed.json()["devices"][0]["address"]
    clock.now += 2
    assert [w.ok for w in agent.step().work] == [True]
    held_slices = _slices(_slots(api)[held])

    # The operator, by hand: a 2g.20gb (no slot of that profile is offered) clear of the held one.
    start = next(s for s in (0, 2, 4) if not {s, s + 1} & held_slices)
    made = smi.run(["nvidia-smi", "mig", "-i", GPU, "-cgi", f"14:{start}", "-C"], env={}, timeout=5)
    assert made.returncode == 0, made
    theirs = {start, start + 1}

    clock.now += 61
    assert not agent.step().errors
    slots = _slots(api)
    out = {a for a, d in slots.items() if d["state"] == "unhealthy"}
    overlapping = {a for a, d in slots.items() if a != held and _slices(d) & theirs}
    assert overlapping and out == overlapping, (out, overlapping)
    assert all("made by hand" in slots[a]["health_reason"] for a in out)
    # The held slot's own instance makes no free slot unhealthy: those it overlaps are only
    # kept from claims by the pool's counters, as before.
    assert slots[held]["state"] == "assigned"

    # Claims never get an overlapped slot; they fail at nothing.
    for i in range(2, 9):
        got = api.post("/v1/claims", json={"consumer": f"job-{i}", "extra_specs": one})
        if got.status_code != 201:
            assert got.json()["error"]["code"] == "no_valid_host", got.text
            break
        assert got.json()["devices"][0]["address"] not in overlapping
    clock.now += 2
    assert all(w.ok for w in agent.step().work)

    # The operator destroys it: the slots come back after their passing checks.
    gi = next(i for i in smi.instances(GPU) if i.start == start)
    for argv in (["-dci", "-gi", str(gi.gpu_instance)], ["-dgi", "-gi", str(gi.gpu_instance)]):
        assert smi.run(["nvidia-smi", "mig", "-i", GPU, *argv], env={}, timeout=5).returncode == 0
    for _ in range(4):
        clock.now += 61
        assert not agent.step().errors
    assert not any(d["state"] == "unhealthy" for d in _slots(api).values())
