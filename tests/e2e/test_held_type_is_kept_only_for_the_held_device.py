"""A device the agent holds stays reported under its type when no rule takes it any more. That
is kept for the device it holds, not for whatever sits at its address: a card of another model
put in the slot (no rule takes it) was reported under the held device's type, so once its
holder was released the server cleaned it with the old card's handler and facts and offered it
under a type no rule gives it."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from devassign.agent.config import parse_config
from tests.conftest import Clock as ServerClock
from tests.e2e.agents import Clock, in_process_agent
from tests.fixtures.sysfs import host

GPU = "0000:3b:00.0"
RULE = {"type": "T4", "match": {"vendor_id": "10de", "product_id": "1eb8"}}


def test_another_card_in_a_held_slot_is_not_reported_under_the_held_type(
    tmp_path: Path, api: TestClient, clock: ServerClock
) -> None:
    h = host(tmp_path, vfio=True)
    h.pci(GPU, "10de", "1eb8", cls="030200", numa=1, iommu_group=5, driver="nvidia")
    assert api.post("/v1/resource-types", json={"name": "T4"}).status_code == 201
    config = parse_config({"host": "c1", "device": [RULE], "state_file": str(tmp_path / "state.json")})
    agent_clock = Clock()
    agent = in_process_agent(config, h.root, api, agent_clock)
    assert not agent.step().errors
    claim = api.post(
        "/v1/claims", json={"consumer": "tenant-a", "extra_specs": {"hardware_resource:T4": "1"}}
    )
    assert claim.status_code == 201
    agent_clock.now += 2
    assert [w.ok for w in agent.step().work] == [True]

    # An A100 in the T4's slot: no rule takes it.
    h.remove(GPU)
    h.pci(GPU, "10de", "20b5", cls="030200", numa=1, iommu_group=5, driver="nvidia")
    agent_clock.now += 40
    clock.advance(40)
    result = agent.report()
    assert not any("another device" in w for w in result.warnings), result.warnings
    (dev,) = api.get("/v1/devices", params={"address": GPU}).json()
    assert (dev["state"], dev["product_id"]) == ("missing", "1eb8")

    # Released: the A100 is neither cleaned with the T4's handler and facts nor offered as a T4.
    assert api.delete("/v1/allocations/tenant-a").status_code == 204
    agent_clock.now += 40
    clock.advance(40)
    agent.report()
    agent_clock.now += 2
    assert [(w.address, w.action) for w in agent.work()] == []
    (dev,) = api.get("/v1/devices", params={"address": GPU}).json()
    assert dev["state"] != "available", "an A100 no rule takes is offered as a T4"
