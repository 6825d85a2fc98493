"""An agent in the test's own process: its clock in the test's hand, no sleeping, no pci.ids,
a state file that need not survive a power cut. The e2e tests drive it one ``step`` at a time."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient

from devassign.agent.config import AgentConfig, parse_config
from devassign.agent.state import StateFile
from devassign.agent.worker import Agent
from devassign.lifecycle.host import HostOps, RecordingNetlink
from devassign.lifecycle.simulated import SimulatedSysfs
from devassign.testing.host import simulated_host
from devassign.testing.nvidia_smi import FakeNvidiaSmi
from tests.fixtures.sysfs import host


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


A100 = "0000:3b:00.0"


def a100_host(
    tmp_path: Path, api: TestClient, rules: list[dict[str, Any]], clock: Clock
) -> tuple[Agent, FakeNvidiaSmi]:
    """Host ``a100-1`` with one A100 80GB at :data:`A100` on a fake ``nvidia-smi``, the types
    the ``rules`` name created, and its in-process agent (health checks every 60 s)."""
    h = host(tmp_path / "sys", vfio=True)
    h.pci(A100, "10de", "20b2", cls="030200", numa=0, iommu_group=12, driver="nvidia")
    smi = FakeNvidiaSmi(tmp_path / "smi.json", {A100: "20b2"})
    for name in dict.fromkeys(str(r["type"]) for r in rules):
        assert api.post("/v1/resource-types", json={"name": name}).status_code == 201
    config = parse_config(
        {"host": "a100-1", "device": rules, "state_file": str(tmp_path / "state.json"), "health_interval": 60}
    )
    agent = in_process_agent(
        config, h.root, api, clock, ops=HostOps(SimulatedSysfs(h.root), RecordingNetlink(), smi)
    )
    return agent, smi
