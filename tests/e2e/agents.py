"""An agent in the test's own process: its clock in the test's hand, no sleeping, no pci.ids,
a state file that need not survive a power cut. The e2e tests drive it one ``step`` at a time."""

from __future__ import annotations

import random
from pathlib import Path

import httpx

from devassign.agent.config import AgentConfig
from devassign.agent.state import StateFile
from devassign.agent.worker import Agent
from devassign.lifecycle.host import HostOps
from devassign.testing.host import simulated_host


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def in_process_agent(
    config: AgentConfig,
    root: Path,
    client: httpx.Client,
    clock: Clock,
    *,
    ops: HostOps | None = None,
    seed: int = 1,
) -> Agent:
    """An agent over the generated tree at ``root`` (a simulated kernel unless ``ops`` says
    otherwise), talking to the server through ``client`` (a TestClient or a real one)."""
    return Agent(
        config,
        root,
        ops if ops is not None else simulated_host(root),
        client,
        state=StateFile(config.state_file, host=config.host, durable=False),
        clock=clock,
        sleep=lambda _s: None,
        rng=random.Random(seed),
        pci_ids=None,
    )
