"""A vGPU slot's mdev is named after the consumer it was made for (``uuid5(consumer/slot)``).
Its cleanup may come for another consumer name: a move's target devices are set up for the
move's internal consumer and then become the moving consumer's, and after a database restored
from an older backup the cleanup of a slot still set up for one tenant comes as the release of
another tenant's refused claim. The cleanup removes the mdev the agent made, for the consumer
it made it for: neither slot is quarantined, and no mdev is left on a slot handed out again."""

from __future__ import annotations

import sqlite3
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from devassign.agent.config import parse_config
from devassign.agent.worker import Agent
from devassign.server.app import create_app
from devassign.server.settings import Settings
from devassign.store import Database, Store
from tests.conftest import Clock as ServerClock
from tests.e2e.agents import Clock, in_process_agent
from tests.fixtures.sysfs import host

GPU = "0000:3b:00.0"
SPEC = {"hardware_resource:VGPU_4Q": "1"}


def _host(tmp: Path, name: str, slots: int = 4) -> tuple[Path, Any]:
    h = host(tmp / name, vfio=True)
    description = f"num_heads=4, framebuffer=4096M, max_resolution=5120x2880, max_instance={slots}"
    h.mdev_parent(
        GPU,
        types={"nvidia-230": {"name": "GRID T4-4Q", "available": slots, "description": description}},
        iommu_group=12,
    )
    rules: list[dict[str, Any]] = [{"type": "VGPU_4Q", "match": {"mdev_type": "nvidia-230"}}]
    config = parse_config({"host": name, "device": rules, "state_file": str(tmp / f"{name}.json")})
    return h.root, config


def _agent(tmp: Path, name: str, api: TestClient, clock: Clock) -> Agent:
    root, config = _host(tmp, name)
    return in_process_agent(config, root, api, clock)


def _mdevs(agent: Agent) -> list[str]:
    return sorted(agent.ops.sysfs.listdir("bus/mdev/devices"))


def _step(agent: Agent, clock: Clock) -> Any:
    clock.now += 2
    out = agent.step()
    assert not out.errors, out.errors
    return out


def test_a_moved_consumers_mdev_is_removed_by_its_cleanup(tmp_path: Path, api: TestClient) -> None:
    assert api.post("/v1/resource-types", json={"name": "VGPU_4Q"}).status_code == 201
    clock = Clock()
    one, two = _agent(tmp_path, "c1", api, clock), _agent(tmp_path, "c2", api, clock)
    _step(one, clock)
    _step(two, clock)
    body = {"consumer": "vm-30", "extra_specs": SPEC, "hosts": ["c1"]}
    assert api.post("/v1/claims", json=body).status_code == 201
    assert [w.ok for w in _step(one, clock).work] == [True]

    assert api.post("/v1/allocations/vm-30/moves", json={"host": "c2"}).status_code == 201
    assert [w.ok for w in _step(two, clock).work] == [True]  # set up for the move's target
    assert len(_mdevs(two)) == 1
    # Before the commit, the destination's XML names the mdev the target's agent made; the
    # guest's own XML still names the source's.
    target_xml = api.get("/v1/allocations/vm-30/moves/libvirt")
    assert target_xml.status_code == 200, target_xml.text
    assert _mdevs(two)[0] in target_xml.text
    source_xml = api.get("/v1/allocations/vm-30/libvirt").text
    assert _mdevs(one)[0] in source_xml and _mdevs(two)[0] not in source_xml
    assert api.post("/v1/allocations/vm-30/moves/commit").status_code == 200
    after = api.get("/v1/allocations/vm-30/moves/libvirt")
    assert (after.status_code, after.json()["error"]["code"]) == (409, "invalid_state")
    assert "no pending move" in after.json()["error"]["message"]
    assert [(w.action, w.ok) for w in _step(one, clock).work] == [("cleanup", True)]
    # The guest's XML names the mdev the target's agent made (for the move's own consumer).
    xml = api.get("/v1/allocations/vm-30/libvirt")
    assert xml.status_code == 200, xml.text
    assert _mdevs(two)[0] in xml.text

    assert api.delete("/v1/allocations/vm-30").status_code == 204
    done = _step(two, clock).work
    assert [(w.action, w.ok) for w in done] == [("cleanup", True)], done
    assert _mdevs(two) == []
    states = {d["state"] for d in api.get("/v1/devices", params={"host": "c2"}).json()}
    assert states == {"available"}


def _server(stack: ExitStack, path: Path, clock: ServerClock) -> TestClient:
    db = Database(f"sqlite:///{path}")
    db.upgrade()
    stack.callback(db.dispose)
    store = Store(db, down_after=timedelta(seconds=90), clock=clock)
    app = create_app(Settings(db_url=db.url, auth=False, sweep_interval=0), store=store)
    return stack.enter_context(TestClient(app, raise_server_exceptions=False))


def test_a_slot_still_set_up_for_a_tenant_the_restored_database_lost_is_cleaned_not_quarantined(
    tmp_path: Path,
) -> None:
    live, old = tmp_path / "live.db", tmp_path / "backup.db"
    server_clock, clock = ServerClock(), Clock()
    root, config = _host(tmp_path, "c1", slots=1)  # one slot: every claim gets it
    with ExitStack() as stack:
        api = _server(stack, live, server_clock)
        assert api.post("/v1/resource-types", json={"name": "VGPU_4Q"}).status_code == 201
        agent = in_process_agent(config, root, api, clock)
        _step(agent, clock)
        src, dst = sqlite3.connect(live), sqlite3.connect(old)
        src.backup(dst)
        dst.close()
        src.close()
        # After the backup: tenant-x gets slot 0, its mdev made.
        assert api.post("/v1/claims", json={"consumer": "tenant-x", "extra_specs": SPEC}).status_code == 201
        assert [w.ok for w in _step(agent, clock).work] == [True]
        (made,) = _mdevs(agent)

        # The database is restored; a restarted agent reports to it; tenant-y claims slot 0.
        restored = _server(stack, old, server_clock)
        server_clock.advance(60)
        clock.now += 60
        agent = in_process_agent(config, root, restored, clock, seed=2)
        _step(agent, clock)
        claim = {"consumer": "tenant-y", "extra_specs": SPEC}
        assert restored.post("/v1/claims", json=claim).status_code == 201
        (refused,) = _step(agent, clock).work
        assert (refused.action, refused.ok) == ("setup", False) and "tenant-x" in (refused.error or "")

        # The release of tenant-y brings the cleanup of tenant-x's mdev: done, not quarantined.
        done = _step(agent, clock).work
        assert [(w.action, w.ok) for w in done] == [("cleanup", True)], done
        assert made not in _mdevs(agent)
        (dev,) = [d for d in restored.get("/v1/devices").json() if d["address"] == refused.address]
        assert dev["state"] == "available", dev


def test_a_state_file_older_than_the_servers_holding_does_not_name_the_consumer_to_clean_for(
    tmp_path: Path, api: TestClient, clock: ServerClock
) -> None:
    """The agent's state file restored from a backup taken while tenant-x held the slot; the
    slot was cleaned and set up for tenant-z since. The server's copy of the setup's facts is
    tenant-z's: the agent's record is not of this holding, and the cleanup of tenant-z's slot
    never leaves tenant-z's mdev on a slot it calls clean."""
    root, config = _host(tmp_path, "c1", slots=1)
    server_clock, clock = clock, Clock()
    assert api.post("/v1/resource-types", json={"name": "VGPU_4Q"}).status_code == 201
    agent = in_process_agent(config, root, api, clock)
    _step(agent, clock)
    assert api.post("/v1/claims", json={"consumer": "tenant-x", "extra_specs": SPEC}).status_code == 201
    assert [w.ok for w in _step(agent, clock).work] == [True]
    state = Path(config.state_file)
    backup = state.read_text()  # the host's backup, taken now

    assert api.delete("/v1/allocations/tenant-x").status_code == 204
    assert [(w.action, w.ok) for w in _step(agent, clock).work] == [("cleanup", True)]
    assert api.post("/v1/claims", json={"consumer": "tenant-z", "extra_specs": SPEC}).status_code == 201
    assert [w.ok for w in _step(agent, clock).work] == [True]
    (theirs,) = _mdevs(agent)

    state.write_text(backup)  # restored; the agent restarts on it
    clock.now += 120
    server_clock.advance(120)
    agent = in_process_agent(config, root, api, clock, seed=2)
    _step(agent, clock)
    assert api.delete("/v1/allocations/tenant-z").status_code == 204
    clock.now += 2
    (done,) = agent.step().work
    (dev,) = api.get("/v1/devices").json()
    # Either the mdev is gone, or the slot is kept from the next tenant.
    assert theirs not in _mdevs(agent) or dev["state"] in ("quarantined", "unhealthy"), (done, dev)
