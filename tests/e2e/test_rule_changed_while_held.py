"""A rule removed or changed while its device is held: once the device is cleaned, the server
hears at once what it is now (another type, or no device of this agent's), not a report
interval later during which it offered the device under its old type (a claim then got the
new type's device, or one the agent refused to set up and quarantined). And a setup of a device
under a type it no longer has here is refused, should one come meanwhile."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from devassign.agent.config import parse_config
from tests.conftest import Clock as ServerClock
from tests.e2e.agents import Clock, in_process_agent
from tests.fixtures.sysfs import host

GPU = "0000:3b:00.0"
MATCH = {"vendor_id": "10de", "product_id": "1eb8"}


def _world(tmp_path: Path, api: TestClient) -> tuple[Any, Clock]:
    h = host(tmp_path, vfio=True)
    h.pci(GPU, "10de", "1eb8", cls="030200", numa=1, iommu_group=5, driver="nvidia")
    for name in ("T4", "T4_B"):
        assert api.post("/v1/resource-types", json={"name": name}).status_code == 201
    return h, Clock()


def _agent(tmp_path: Path, h: Any, api: TestClient, clock: Clock, rules: list[dict[str, Any]]) -> Any:
    config = parse_config(
        {"host": "c1", "device": rules, "state_file": str(tmp_path / "state.json"), "report_interval": 30}
    )
    return in_process_agent(config, h.root, api, clock)


def _held_then_released(tmp_path: Path, api: TestClient, rules: list[dict[str, Any]]) -> tuple[Any, Clock]:
    h, clock = _world(tmp_path, api)
    agent = _agent(tmp_path, h, api, clock, [{"type": "T4", "match": MATCH}])
    assert not agent.step().errors
    claim = {"consumer": "tenant-a", "extra_specs": {"hardware_resource:T4": "1"}}
    assert api.post("/v1/claims", json=claim).status_code == 201
    clock.now += 2
    assert [w.ok for w in agent.step().work] == [True]
    # The operator edits agent.toml while the GPU is held (the agent reads it again).
    edited = parse_config({"host": "c1", "device": rules, "state_file": str(tmp_path / "state.json")})
    agent.config = dataclasses.replace(agent.config, devices=edited.devices)
    clock.now += 40
    assert not agent.step().errors
    assert api.delete("/v1/allocations/tenant-a").status_code == 204
    clock.now += 2
    assert [(w.action, w.ok) for w in agent.step().work] == [("cleanup", True)]
    return agent, clock


def _device(api: TestClient) -> dict[str, Any]:
    (dev,) = api.get("/v1/devices", params={"address": GPU}).json()
    return dev  # type: ignore[no-any-return]


def test_a_type_changed_while_held_is_the_new_type_once_cleaned(
    tmp_path: Path, api: TestClient, clock: ServerClock
) -> None:
    _held_then_released(tmp_path, api, [{"type": "T4_B", "match": MATCH}])
    dev = _device(api)
    assert (dev["type"], dev["state"]) == ("T4_B", "available"), dev
    old = api.post("/v1/claims", json={"consumer": "tenant-b", "extra_specs": {"hardware_resource:T4": "1"}})
    assert old.status_code == 409, old.text


def test_a_rule_removed_while_held_retires_the_device_once_cleaned(
    tmp_path: Path, api: TestClient, clock: ServerClock
) -> None:
    _held_then_released(tmp_path, api, [])
    assert _device(api)["state"] == "removed"
    old = api.post("/v1/claims", json={"consumer": "tenant-b", "extra_specs": {"hardware_resource:T4": "1"}})
    assert old.status_code == 409, old.text
