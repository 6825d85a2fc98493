"""The server's database restored from a backup older than some assignments: a VF the agent
set up for a tenant after the backup is free in the restored database. A claim by another
tenant must not get it while it is still set up for the first one (its VLAN, its guest):
the agent refuses that setup, the device is cleaned, and only then handed out.

Two ways the restored database knows the device: under the id it had (the host was there at
backup time), and under a new id (the host registered after the backup, so the agent's next
report registers it again, with new device ids)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from devassign.agent.config import parse_config
from devassign.agent.worker import Agent
from devassign.server.app import create_app
from devassign.server.settings import Settings
from devassign.store import Database, Store
from tests.conftest import Clock as ServerClock
from tests.e2e.agents import Clock, in_process_agent
from tests.fixtures.sysfs import host

PF = "0000:5e:00.0"
VF = "0000:5e:10.0"
NIC_TYPE = {"name": "NIC_VF", "params": {"vlan": {"type": "integer", "min": 1, "max": 4094}}}


class World:
    def __init__(self, tmp: Path, stack: ExitStack) -> None:
        self.tmp, self.stack = tmp, stack
        self.clock = ServerClock()
        self.agent_clock = Clock()
        self.h = host(tmp, vfio=True)
        self.h.sriov_pf(PF, "8086", "1572", vfs=1, vf_device="154c", ifname="ens1f0", vf_iommu_group_start=20)
        rules = [{"type": "NIC_VF", "match": {"vendor_id": "8086", "product_id": "154c"}}]
        self.config = parse_config({"host": "c1", "device": rules, "state_file": str(tmp / "state.json")})
        self.seed = 0

    def server(self, path: Path) -> TestClient:
        db = Database(f"sqlite:///{path}")
        db.upgrade()
        self.stack.callback(db.dispose)
        store = Store(db, down_after=timedelta(seconds=90), clock=self.clock)
        app = create_app(Settings(db_url=db.url, auth=False, sweep_interval=0), store=store)
        return self.stack.enter_context(TestClient(app, raise_server_exceptions=False))

    def agent(self, api: TestClient) -> Agent:
        """A (re)started agent process on this host, with its state file."""
        self.seed += 1
        self.clock.advance(60)  # the process before it is long silent
        self.agent_clock.now += 60
        return in_process_agent(self.config, self.h.root, api, self.agent_clock, seed=self.seed)

    def step(self, agent: Agent) -> Any:
        self.agent_clock.now += 2
        out = agent.step()
        assert not out.errors, out.errors
        return out

    def vf_settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = json.loads((self.h.root / ".simulated-netlink.json").read_text())
        return settings["ens1f0/0"]

    def driver(self) -> str | None:
        link = self.h.root / "bus/pci/devices" / VF / "driver"
        return link.resolve().name if link.exists() else None


def backup(live: Path, to: Path) -> None:
    src, dst = sqlite3.connect(live), sqlite3.connect(to)
    src.backup(dst)
    dst.close()
    src.close()


def claim(api: TestClient, consumer: str, vlan: int) -> None:
    body = {"consumer": consumer, "requests": [{"name": "nic", "type": "NIC_VF", "params": {"vlan": vlan}}]}
    resp = api.post("/v1/claims", json=body)
    assert resp.status_code == 201, resp.text


def device(api: TestClient) -> dict[str, Any]:
    (dev,) = api.get("/v1/devices").json()
    return dict(dev)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with ExitStack() as stack:
        yield World(tmp_path, stack)


@pytest.mark.parametrize("host_at_backup", [True, False], ids=["same-device-id", "host-registered-later"])
def test_a_device_set_up_after_the_backup_is_cleaned_before_another_tenant_gets_it(
    world: World, host_at_backup: bool
) -> None:
    live, old = world.tmp / "live.db", world.tmp / "backup.db"
    api = world.server(live)
    assert api.post("/v1/resource-types", json=NIC_TYPE).status_code == 201
    agent = world.agent(api)
    if host_at_backup:
        world.step(agent)
        backup(live, old)
    else:
        backup(live, old)  # the type is there, the host not yet
        world.step(agent)
    # After the backup: tenant x gets the VF, set up on its VLAN.
    claim(api, "tenant-x", vlan=100)
    world.step(agent)
    assert device(api)["state"] == "assigned" and world.vf_settings()["vlan"] == 100
    assert world.driver() == "vfio-pci"

    # The database is restored from the backup; the agent reports to the restored server.
    restored = world.server(old)
    agent = world.agent(restored)
    world.step(agent)
    assert device(restored)["state"] == "available"  # the backup knows nothing of tenant-x

    # Another tenant claims it: the agent refuses to set up a device still set up for tenant-x.
    claim(restored, "tenant-y", vlan=200)
    refused = world.step(agent)
    (setup,) = [w for w in refused.work if w.action == "setup"]
    assert not setup.ok and "tenant-x" in (setup.error or ""), setup
    assert world.vf_settings()["vlan"] == 100  # tenant-x's VLAN untouched by tenant-y's setup
    events = restored.get("/v1/events", params={"limit": 50}).json()
    assert any(e["action"] == "device_setup_failed" and "tenant-x" in e["message"] for e in events)

    # The failed setup released tenant-y; the cleanup undoes tenant-x's setup, with its facts.
    world.step(agent)
    dev = device(restored)
    assert dev["state"] == "available", dev
    assert world.vf_settings()["vlan"] == 0 and world.driver() == "iavf"
    assert not agent.state.state.assigned and not agent.state.state.facts

    # Now the device is clean and tenant-y gets it (nothing is stuck).
    restored.delete("/v1/allocations/tenant-y")
    claim(restored, "tenant-y", vlan=200)
    done = world.step(agent)
    assert [(w.action, w.ok) for w in done.work] == [("setup", True)]
    assert device(restored)["state"] == "assigned" and world.vf_settings()["vlan"] == 200
