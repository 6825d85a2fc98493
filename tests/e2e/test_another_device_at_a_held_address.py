"""A card of another model put in the slot of an assigned GPU (or buses renumbered onto another
device): the report names, at the held device's address, a device with other ids. That is not
the holder's device: it stays missing for its allocation, is never handed back to the holder
as if it were, and the new card is cleaned before anyone gets it once the holder released."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from devassign.agent.config import parse_config
from tests.conftest import Clock as ServerClock
from tests.e2e.agents import Clock, in_process_agent
from tests.fixtures.sysfs import host

GPU = "0000:3b:00.0"
ONE_GPU = {"hardware_resource:GPU": "1"}


def _device(api: TestClient) -> dict[str, Any]:
    (dev,) = [d for d in api.get("/v1/devices").json() if d["address"] == GPU]
    return dev


def test_another_model_in_an_assigned_gpus_slot_is_not_the_holders(
    tmp_path: Path, api: TestClient, clock: ServerClock
) -> None:
    h = host(tmp_path, vfio=True)
    h.pci(GPU, "10de", "1eb8", cls="030200", numa=1, iommu_group=5, driver="nvidia")
    assert api.post("/v1/resource-types", json={"name": "GPU"}).status_code == 201
    rules = [{"type": "GPU", "match": {"vendor_id": "10de", "class": "0302"}}]
    config = parse_config({"host": "c1", "device": rules, "state_file": str(tmp_path / "state.json")})
    agent_clock = Clock()
    agent = in_process_agent(config, h.root, api, agent_clock)
    assert not agent.step().errors
    claim = api.post("/v1/claims", json={"consumer": "tenant-a", "extra_specs": ONE_GPU})
    assert claim.status_code == 201
    agent_clock.now += 2
    assert [w.ok for w in agent.step().work] == [True]
    assert _device(api)["state"] == "assigned"

    # The operator swaps the card for an A100 in the same slot (the host was down meanwhile).
    h.remove(GPU)
    h.pci(GPU, "10de", "20b5", cls="030200", numa=1, iommu_group=5, driver="nvidia")
    agent_clock.now += 40
    clock.advance(40)
    result = agent.report()
    dev = _device(api)
    assert (dev["state"], dev["consumer"], dev["product_id"]) == ("missing", "tenant-a", "1eb8")
    assert any(GPU in w and "another device" in w and "1eb8 -> 20b5" in w for w in result.warnings)
    events = api.get("/v1/events", params={"device": GPU}).json()
    assert any(e["action"] == "device_missing" and "another device" in e["message"] for e in events)
    again = agent.report()  # and the next report does not hand it back either
    assert _device(api)["state"] == "missing" and not again.refused

    # Released: the new card is cleaned before it is anyone's, then offered with its own ids.
    assert api.delete("/v1/allocations/tenant-a").status_code == 204
    agent_clock.now += 40
    clock.advance(40)
    agent.report()
    dev = _device(api)
    assert (dev["state"], dev["product_id"]) == ("cleaning", "20b5")
    agent_clock.now += 2
    assert [(w.action, w.ok) for w in agent.work()] == [("cleanup", True)]
    assert _device(api)["state"] == "available"
    b = api.post("/v1/claims", json={"consumer": "tenant-b", "extra_specs": ONE_GPU})
    assert b.status_code == 201, b.text


def test_the_same_model_back_in_the_slot_returns_to_its_holder(
    tmp_path: Path, api: TestClient, clock: ServerClock
) -> None:
    """What stays as it was: the same ids at the address are the holder's device back."""
    h = host(tmp_path, vfio=True)
    h.pci(GPU, "10de", "1eb8", cls="030200", numa=1, iommu_group=5, driver="nvidia")
    assert api.post("/v1/resource-types", json={"name": "GPU"}).status_code == 201
    rules = [{"type": "GPU", "match": {"vendor_id": "10de"}}]
    config = parse_config({"host": "c1", "device": rules, "state_file": str(tmp_path / "state.json")})
    agent_clock = Clock()
    agent = in_process_agent(config, h.root, api, agent_clock)
    agent.step()
    api.post("/v1/claims", json={"consumer": "tenant-a", "extra_specs": ONE_GPU})
    agent_clock.now += 2
    agent.step()
    h.remove(GPU)
    agent_clock.now += 40
    clock.advance(40)
    agent.report()
    assert _device(api)["state"] == "missing"
    h.pci(GPU, "10de", "1eb8", cls="030200", numa=1, iommu_group=5, driver="vfio-pci")
    agent_clock.now += 40
    clock.advance(40)
    agent.report()
    assert (_device(api)["state"], _device(api)["consumer"]) == ("assigned", "tenant-a")
