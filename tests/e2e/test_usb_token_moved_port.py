"""A held USB token moved to another port is cleaned before anyone else gets it.

While a held token known by its serial is away from its port, the agent names a device
with that serial plugged in elsewhere by its port (it may be a twin, and a twin must not be
taken for the held one). The server took that port name for a newcomer and offered it at
once: the token a tenant held (or had just released, its cleanup still owed) went to the
next claim as it was left, and one token showed as assigned to two consumers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from devassign.agent.config import parse_config
from devassign.agent.worker import Agent
from tests.e2e.agents import Clock, in_process_agent
from tests.fixtures.sysfs import SyntheticHost, host

HELD = "usb:0529:0620:ABC123"
MOVED = "usb:1-5"


def _devices(api: TestClient) -> dict[str, tuple[str, Any]]:
    return {d["address"]: (d["state"], d.get("consumer")) for d in api.get("/v1/devices").json()}


def _claim(api: TestClient, consumer: str) -> int:
    body = {"consumer": consumer, "extra_specs": {"hardware_resource:TOKEN": "1"}}
    return api.post("/v1/claims", json=body).status_code


def _held_token(tmp_path: Path, api: TestClient) -> tuple[SyntheticHost, Agent, Clock]:
    h = host(tmp_path / "sys", vfio=True)
    h.usb("1-4", "0529", "0620", serial="ABC123")
    assert api.post("/v1/resource-types", json={"name": "TOKEN"}).status_code == 201
    config = parse_config(
        {
            "host": "usb-1",
            "device": [{"type": "TOKEN", "match": {"kind": "usb"}}],
            "state_file": str(tmp_path / "state.json"),
        }
    )
    clock = Clock()
    agent = in_process_agent(config, h.root, api, clock)
    assert not agent.step().errors
    assert _claim(api, "vm-a") == 201
    clock.now += 2
    assert [(w.address, w.ok) for w in agent.step().work] == [(HELD, True)]
    assert _devices(api) == {HELD: ("assigned", "vm-a")}
    return h, agent, clock


def _move(h: SyntheticHost) -> None:
    h.remove("1-4")
    h.usb("1-5", "0529", "0620", serial="ABC123")


def test_a_held_token_moved_to_another_port_is_cleaned_before_the_next_claim(
    tmp_path: Path, api: TestClient
) -> None:
    h, agent, clock = _held_token(tmp_path, api)
    _move(h)
    clock.now += 40
    step = agent.step()
    assert [(w.address, w.action, w.ok) for w in step.work] == [(MOVED, "cleanup", True)], (
        "the held token at its new port was offered uncleaned"
    )
    assert _devices(api) == {HELD: ("missing", "vm-a"), MOVED: ("available", None)}


def test_a_released_token_moved_before_its_cleanup_is_cleaned_first(tmp_path: Path, api: TestClient) -> None:
    h, agent, clock = _held_token(tmp_path, api)
    assert api.delete("/v1/allocations/vm-a").status_code == 204
    _move(h)  # before the agent took the cleanup
    clock.now += 40
    step = agent.step()
    assert [(w.address, w.action, w.ok) for w in step.work] == [(MOVED, "cleanup", True)], (
        "the released token was offered without its cleanup"
    )


def test_a_token_with_another_serial_is_offered_at_once(tmp_path: Path, api: TestClient) -> None:
    h, agent, clock = _held_token(tmp_path, api)
    h.remove("1-4")
    h.usb("1-5", "0529", "0620", serial="XYZ789")
    clock.now += 40
    assert not agent.step().work, "a token with another serial is no held one's"
    assert _devices(api)["usb:0529:0620:XYZ789"] == ("available", None)
