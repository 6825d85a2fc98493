"""The agent keeps the USB names it gave in its state file: a restarted agent does not rename
a token whose same-serial neighbour was pulled out while it was down."""

from __future__ import annotations

from dataclasses import replace

import httpx

from devassign.agent.config import DeviceRule
from devassign.agent.state import StateFile
from devassign.agent.worker import Agent
from devassign.lifecycle.host import HostOps
from tests.unit.agent.test_agent_worker import World, world  # noqa: F401


def test_usb_names_survive_an_agent_restart(world: World) -> None:  # noqa: F811
    for port in ("1-4", "1-5"):
        world.h.usb(port, "096e", "0006", serial="0001")
    config = replace(
        world.config, devices=(*world.config.devices, DeviceRule("FEITIAN", {"vendor_id": "096e"}))
    )

    def tokens() -> set[str]:
        client = httpx.Client(transport=httpx.MockTransport(world.server.handle))
        state = StateFile(config.state_file, durable=False)
        agent = Agent(
            config, world.h.root, HostOps.simulated(world.h.root), client, state=state, pci_ids=None
        )
        return {d.address for d in agent._inventory() if d.type == "FEITIAN"}

    assert tokens() == {"usb:1-4", "usb:1-5"}
    world.h.remove("1-4")  # while the agent is down
    assert tokens() == {"usb:1-5"}
