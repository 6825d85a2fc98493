"""Hostile request params and poisoned facts, end to end: the real server and store, an
in-process agent over a simulated (SYNTHETIC) host.

The attacks: ``{"mdev_uuid": <another tenant's mdev>}`` once put the victim's mdev in the
attacker's libvirt XML and made the attacker's release remove it; ``{"original_driver":
"../../../../tmp/x"}`` made the root agent write ``bind`` outside sysfs, and left the GPU
quarantined after every ``device clear``. The params are smuggled into the stored request
here, past whatever the claim route checks: the agent must do nothing with them anyway.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from devassign.agent.config import AgentConfig, DeviceRule, ResourceDecl
from devassign.agent.state import StateFile
from devassign.agent.worker import Agent
from devassign.lifecycle.handlers.mdev import MDEV_NAMESPACE
from devassign.lifecycle.host import HostOps, RecordingRunner
from devassign.lifecycle.policy import LifecyclePolicy
from devassign.store import Store
from devassign.store.schema import allocations, devices
from devassign.store.work import SET_UP
from devassign.testing.host import simulated_host
from devassign.testing.sysfs import SyntheticHost, host

HOST = "gpu-1"
GPU = "0000:3b:00.0"
ESCAPE = "../../../../tmp/x"


def _agent(
    api: TestClient, tmp_path: Path, h: SyntheticHost, *rules: DeviceRule, **extra: Any
) -> tuple[Agent, HostOps]:
    config = AgentConfig(
        host=HOST,
        server="http://testserver",
        state_file=tmp_path / "state.json",
        devices=rules,
        source="/etc/devassign/agent.toml",
        **extra,
    )
    ops = simulated_host(h.root)
    ops.runner = RecordingRunner()
    agent = Agent(config, h.root, ops, api, state=StateFile(config.state_file, durable=False), pci_ids=None)
    assert agent.report().accepted > 0
    return agent, ops


def _claim(api: TestClient, consumer: str, type_name: str) -> str:
    body = {"consumer": consumer, "hosts": [HOST], "requests": [{"name": "r", "type": type_name, "count": 1}]}
    resp = api.post("/v1/claims", json=body)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["devices"][0]["id"])


def _smuggle(api: TestClient, consumer: str, params: dict[str, Any]) -> None:
    """Put ``params`` into the stored request, as if no check had stopped them."""
    store: Store = api.app.state.store  # type: ignore[attr-defined]
    with store.db.engine.begin() as conn:
        row = conn.execute(
            sa.select(allocations.c.id, allocations.c.request).where(
                allocations.c.consumer == consumer, allocations.c.released_at.is_(None)
            )
        ).one()
        doc = dict(row.request)
        doc["requests"] = [{**r, "params": {**(r.get("params") or {}), **params}} for r in doc["requests"]]
        conn.execute(allocations.update().where(allocations.c.id == row.id).values(request=doc))


def _poison(api: TestClient, device_id: str, facts: dict[str, Any]) -> None:
    """Facts stored by an agent from before the split of facts and params."""
    store: Store = api.app.state.store  # type: ignore[attr-defined]
    with store.db.engine.begin() as conn:
        conn.execute(devices.update().where(devices.c.id == device_id).values(facts=facts))


def _events(api: TestClient, action: str) -> list[dict[str, Any]]:
    events = api.get("/v1/events", params={"host": HOST, "limit": 1000}).json()
    return [e for e in events if e["action"] == action]


def _state(api: TestClient, device_id: str) -> str:
    return str(api.get(f"/v1/devices/{device_id}").json()["state"])


def _work(agent: Agent) -> list[tuple[str, bool, str | None]]:
    return [(d.action, d.ok, d.state) for d in agent.work()]


def test_an_mdev_uuid_in_params_never_names_another_tenants_mdev(api: TestClient, tmp_path: Path) -> None:
    h = host(tmp_path, vfio=True)
    h.mdev_parent(GPU, types={"nvidia-230": {"available": 2}}, iommu_group=12)
    assert api.post("/v1/resource-types", json={"name": "VGPU"}).status_code == 201
    agent, ops = _agent(api, tmp_path, h, DeviceRule("VGPU", {"kind": "mdev_type"}))

    victim_dev = _claim(api, "victim", "VGPU")
    assert _work(agent) == [("setup", True, "assigned")]
    victim_slot = api.get(f"/v1/devices/{victim_dev}").json()["address"]
    theirs = str(uuid.uuid5(MDEV_NAMESPACE, f"victim/{victim_slot}"))
    assert ops.sysfs.exists(f"bus/mdev/devices/{theirs}")

    attacker_dev = _claim(api, "attacker", "VGPU")
    _smuggle(api, "attacker", {"mdev_uuid": theirs})
    assert _work(agent) == [("setup", True, "assigned")]
    xml = api.get("/v1/allocations/attacker/libvirt")
    assert xml.status_code == 200 and theirs not in xml.text
    attacker_slot = api.get(f"/v1/devices/{attacker_dev}").json()["address"]
    assert attacker_slot != victim_slot
    assert str(uuid.uuid5(MDEV_NAMESPACE, f"attacker/{attacker_slot}")) in xml.text

    # Facts an older agent stored from those params: the XML is refused, never the victim's.
    _poison(api, attacker_dev, {"mdev_uuid": theirs})
    refused = api.get("/v1/allocations/attacker/libvirt")
    assert refused.status_code == 409 and "refusing to touch another consumer's mdev" in refused.text

    assert api.delete("/v1/allocations/attacker").status_code == 204
    assert _work(agent) == [("cleanup", True, "available")]
    assert ops.sysfs.exists(f"bus/mdev/devices/{theirs}"), "the victim's mdev is still there"
    assert api.get("/v1/allocations/victim/libvirt").text.count(theirs) == 1


def _gpu_host(api: TestClient, tmp_path: Path) -> tuple[SyntheticHost, Path]:
    h = host(tmp_path, vfio=True)
    h.pci(GPU, "10de", "1eb8", cls="030200", iommu_group=12, driver="nvidia")
    outside = (h.root / "bus/pci/drivers" / ESCAPE).resolve()
    outside.mkdir(parents=True)
    (outside / "bind").write_text("")
    assert api.post("/v1/resource-types", json={"name": "GPU"}).status_code == 201
    return h, outside


def test_original_driver_in_params_writes_nothing_outside_sysfs(api: TestClient, tmp_path: Path) -> None:
    h, outside = _gpu_host(api, tmp_path)
    agent, ops = _agent(api, tmp_path, h, DeviceRule("GPU", {"vendor_id": "10de"}))
    dev = _claim(api, "vm-1", "GPU")
    _smuggle(api, "vm-1", {"original_driver": ESCAPE})
    assert _work(agent) == [("setup", True, "assigned")]
    assert ops.sysfs.link_name(f"bus/pci/devices/{GPU}/driver") == "vfio-pci"
    assert api.delete("/v1/allocations/vm-1").status_code == 204
    assert _work(agent) == [("cleanup", True, "available")]
    assert ops.sysfs.link_name(f"bus/pci/devices/{GPU}/driver") == "nvidia"
    assert (outside / "bind").read_text() == ""
    assert _state(api, dev) == "available"


def test_a_poisoned_fact_quarantines_once_and_device_clear_cleans_from_the_host(
    api: TestClient, tmp_path: Path
) -> None:
    h, outside = _gpu_host(api, tmp_path)
    agent, ops = _agent(api, tmp_path, h, DeviceRule("GPU", {"vendor_id": "10de"}))
    dev = _claim(api, "vm-1", "GPU")
    assert _work(agent) == [("setup", True, "assigned")]
    # What an agent from before the fix recorded, here and on the server.
    agent.state.state.facts[dev] = {"original_driver": ESCAPE}
    agent.state.save()
    _poison(api, dev, {"original_driver": ESCAPE})
    assert api.delete("/v1/allocations/vm-1").status_code == 204
    assert _work(agent) == [("cleanup", False, "quarantined")]
    (quarantined,) = _events(api, "device_quarantined")
    assert "'../../../../tmp/x' is not a driver name" in quarantined["message"]
    assert (outside / "bind").read_text() == ""

    cleared = api.post(f"/v1/devices/{dev}/clear", json={"reason": "poisoned fact"})
    assert cleared.status_code == 200 and cleared.json()["state"] == "cleaning"
    (event,) = _events(api, "device_cleared")
    assert event["detail"]["dropped_facts"] == {"original_driver": ESCAPE}
    (item,) = api.get(f"/v1/hosts/{HOST}/work").json()["items"]
    assert item["cleared"] is True and item["facts"] == {}

    assert _work(agent) == [("cleanup", True, "available")]
    assert ops.sysfs.link_name(f"bus/pci/devices/{GPU}/driver") == "nvidia"
    assert (outside / "bind").read_text() == ""
    assert dev not in StateFile(agent.config.state_file).state.facts
    assert _claim(api, "vm-2", "GPU") == dev, "usable again"


def test_work_for_a_device_the_agent_never_reported_is_refused(api: TestClient, tmp_path: Path) -> None:
    h, _ = _gpu_host(api, tmp_path)
    agent, ops = _agent(api, tmp_path, h, DeviceRule("GPU", {"vendor_id": "10de"}))
    # Someone else reports a device for this host (a stolen token, a second process).
    assert api.post("/v1/resource-types", json={"name": "OTHER"}).status_code == 201
    foreign = {"address": "0000:af:00.0", "kind": "pci", "type": "OTHER", "vendor_id": "10de"}
    mine = {"address": GPU, "kind": "pci", "type": "GPU", "vendor_id": "10de", "driver": "nvidia"}
    generation = agent.state.state.generation + 1
    resp = api.put(f"/v1/hosts/{HOST}/inventory", json={"generation": generation, "devices": [mine, foreign]})
    assert resp.status_code == 200, resp.text
    dev = _claim(api, "vm-1", "OTHER")
    assert _work(agent) == [("setup", False, "cleaning")]
    assert api.get(f"/v1/devices/{dev}").json()["address"] == "0000:af:00.0"
    (failed,) = _events(api, "device_setup_failed")
    assert "not a device this agent discovered and reported on host gpu-1" in failed["message"]
    assert _work(agent) == [("cleanup", False, "quarantined")]
    assert ops.sysfs.link_name(f"bus/pci/devices/{GPU}/driver") == "nvidia"


@pytest.mark.parametrize("allowed", [False, True])
def test_a_command_outside_the_allow_list_is_refused_and_an_event_says_why(
    api: TestClient, tmp_path: Path, allowed: bool
) -> None:
    h = host(tmp_path)
    config = {"setup": ["/bin/sh", "-c", "id > /tmp/pwned"], "cleanup": None}
    body = {"name": "FPGA", "handler": "command", "config": config}
    assert api.post("/v1/resource-types", json=body).status_code == 201
    policy = LifecyclePolicy(frozenset({"command", "noop"}), ("/usr/local/libexec/devassign/*",))
    extra: dict[str, Any] = {"resources": (ResourceDecl("FPGA"),)}
    if allowed:
        extra["lifecycle"] = policy
    agent, ops = _agent(api, tmp_path, h, **extra)
    dev = _claim(api, "vm-1", "FPGA")
    assert _work(agent) == [("setup", False, "cleaning")]
    assert isinstance(ops.runner, RecordingRunner) and ops.runner.calls == []
    (failed,) = _events(api, "device_setup_failed")
    assert "refused by the agent" in failed["message"] and "host gpu-1" in failed["message"]
    setting = "[lifecycle] commands" if allowed else "[lifecycle] handlers"
    assert f"{setting} in /etc/devassign/agent.toml" in failed["message"]
    assert _state(api, dev) == "cleaning"


def _facts_of(api: TestClient, device_id: str) -> dict[str, Any]:
    store: Store = api.app.state.store  # type: ignore[attr-defined]
    with store.db.engine.connect() as conn:
        facts = conn.execute(sa.select(devices.c.facts).where(devices.c.id == device_id)).scalar_one()
    return dict(facts or {})


def test_the_server_keeps_facts_only_from_this_hosts_setup_and_small(api: TestClient) -> None:
    assert api.post("/v1/resource-types", json={"name": "NIC"}).status_code == 201
    vf = {"address": "0000:3b:02.1", "kind": "sriov_vf", "type": "NIC", "parent": "0000:3b:00.0"}
    for name in ("c1", "c2"):
        report = {
            "generation": 1,
            "devices": [{**vf, "address": "0000:3b:02.1" if name == "c1" else "0000:3b:02.2"}],
        }
        assert api.put(f"/v1/hosts/{name}/inventory", json=report).status_code == 200
    body = {"consumer": "vm-1", "hosts": ["c1"], "requests": [{"name": "n", "type": "NIC", "count": 1}]}
    dev = api.post("/v1/claims", json=body).json()["devices"][0]["id"]

    def post(host: str, **result: Any) -> Any:
        return api.post(f"/v1/hosts/{host}/work", json={"results": [{"device_id": dev, **result}]})

    # Another host's agent cannot write this device's facts.
    other = post("c2", action="setup", ok=True, facts={"original_driver": ESCAPE})
    assert other.json()[0]["applied"] is False and _facts_of(api, dev) == {}
    # Too many, too big, or a key no agent posts (the server's own marker): refused whole.
    for facts in ({f"k{i}": 1 for i in range(33)}, {"blob": "x" * 5000}, {"devassign:cleared": True}):
        assert post("c1", action="setup", ok=True, facts=facts).status_code == 400
    # The holder's setup result while the device is reserved: kept (and the server marks the
    # device as set up: a cleanup must undo a setup).
    assert (
        post("c1", action="setup", ok=True, consumer="vm-1", facts={"original_driver": "iavf"}).status_code
        == 200
    )
    assert _facts_of(api, dev) == {"original_driver": "iavf", SET_UP: True}
    # A late setup result, once the device is assigned, changes nothing.
    post("c1", action="setup", ok=True, consumer="vm-1", facts={"original_driver": ESCAPE})
    assert _facts_of(api, dev) == {"original_driver": "iavf", SET_UP: True}
    assert api.delete("/v1/allocations/vm-1").status_code == 204
    # Released: only a setup result naming its holder may still add facts; a cleanup never.
    post("c1", action="setup", ok=True, facts={"original_driver": ESCAPE})  # no holder named
    post("c1", action="setup", ok=True, consumer="vm-9", facts={"original_driver": ESCAPE})
    assert _facts_of(api, dev) == {"original_driver": "iavf", SET_UP: True}
    out = post(
        "c1", action="cleanup", ok=False, error="x", consumer="vm-1", facts={"original_driver": ESCAPE}
    )
    assert out.json()[0]["state"] == "quarantined"
    assert _facts_of(api, dev) == {"original_driver": "iavf", SET_UP: True}
    assert api.post(f"/v1/devices/{dev}/clear", json={}).status_code == 200
    assert _facts_of(api, dev) == {"devassign:cleared": True}
    post("c1", action="setup", ok=True, consumer="vm-1", facts={"original_driver": ESCAPE})
    (item,) = api.get("/v1/hosts/c1/work").json()["items"]
    assert item["facts"] == {} and item["cleared"] is True
    assert post("c1", action="cleanup", ok=True, consumer="vm-1").json()[0]["state"] == "available"
    assert _facts_of(api, dev) == {}
