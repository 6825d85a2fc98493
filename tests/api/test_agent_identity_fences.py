"""Agent identity: a second machine under one host name, renamed and reused host names.

Each docstring says what a user saw before the fence.
"""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from devassign import schemas
from devassign.agent.config import AgentConfig, DeviceRule
from devassign.agent.state import StateFile
from devassign.agent.worker import Agent
from devassign.domain import Role
from devassign.lifecycle.host import HostOps, RecordingRunner
from devassign.store import Store
from devassign.testing.host import simulated_host
from devassign.testing.sysfs import host
from tests.conftest import Clock, vf

HOST = "gpu-1"
GPU = "0000:3b:00.0"


def _machine(api: TestClient, root: Path) -> tuple[Agent, HostOps]:
    """One machine configured as ``gpu-1`` (the same agent.toml and token on each machine),
    with its own state file, and one GPU at the same PCI address (a homogeneous rack)."""
    root.mkdir()
    h = host(root, vfio=True)
    h.pci(GPU, "10de", "1eb8", cls="030200", iommu_group=12, driver="nvidia")
    config = AgentConfig(
        host=HOST,
        server="http://testserver",
        state_file=root / "state.json",
        devices=(DeviceRule("GPU", {"vendor_id": "10de"}),),
        source="/etc/devassign/agent.toml",
    )
    ops = simulated_host(h.root)
    ops.runner = RecordingRunner()
    agent = Agent(config, h.root, ops, api, state=StateFile(config.state_file, durable=False), pci_ids=None)
    return agent, ops


def test_a_machine_refused_as_the_host_does_not_clean_the_hosts_devices(
    api: TestClient, tmp_path: Path
) -> None:
    """One agent.toml (and its token) copied to a second machine, the case docs/operations.md
    describes: the second machine's reports are refused (409 ``host_id_mismatch``), but its agent
    goes on to fetch ``GET /v1/hosts/gpu-1/work`` and runs the real host's cleanup on its *own*
    GPU, then posts ``cleanup ok``; the server takes it (the work routes check no agent
    identity). The real host's GPU is still bound to vfio-pci with the last tenant's state, yet
    it is ``available``: the next tenant is handed a dirty device. A machine the server refuses
    as the host must not move the host's devices on: the device must stay ``cleaning`` until
    the real host's agent cleans it."""
    assert api.post("/v1/resource-types", json={"name": "GPU"}).status_code == 201
    real, real_ops = _machine(api, tmp_path / "real")
    assert real.report().accepted == 1
    claim = {"consumer": "vm-1", "hosts": [HOST], "requests": [{"name": "r", "type": "GPU"}]}
    r = api.post("/v1/claims", json=claim)
    assert r.status_code == 201, r.text
    device = r.json()["devices"][0]["id"]
    assert [(d.action, d.ok) for d in real.work()] == [("setup", True)]
    assert real_ops.sysfs.link_name(f"bus/pci/devices/{GPU}/driver") == "vfio-pci"
    assert api.delete("/v1/allocations/vm-1").status_code == 204  # the GPU goes to cleaning

    other, _ = _machine(api, tmp_path / "other")
    step = other.step()
    assert any("host_id_mismatch" in e for e in step.errors), step.errors  # refused as gpu-1

    # The real host has not cleaned its GPU: it is still as the tenant left it.
    assert real_ops.sysfs.link_name(f"bus/pci/devices/{GPU}/driver") == "vfio-pci"
    assert api.get(f"/v1/devices/{device}").json()["state"] == "cleaning", (
        "a machine refused as gpu-1 cleaned its own GPU and called gpu-1's clean: "
        f"{[(d.action, d.ok, d.state) for d in step.work]}"
    )


def _token(store: Store, role: Role, **scope: str) -> dict[str, str]:
    secret = store.create_token(schemas.TokenCreate(role=role, **scope), "test").token
    return {"Authorization": f"Bearer {secret}"}


def test_the_next_host_under_a_renamed_hosts_old_name_does_not_read_its_history(
    secure_api: TestClient, store: Store
) -> None:
    """``devassign host rename compute-a compute-z`` frees the name ``compute-a``; a new machine
    registered under it (its own host id, a fresh agent token for ``compute-a``) reads, through
    ``GET /v1/events``, the renamed machine's whole history: the tenant's consumer ``secret-vm``,
    its claim, the devices added there. Events are kept by host *name*, so the agent of
    another machine reads compute-z's tenants (docs/security.md: an agent sees its own host's
    events) while compute-z's own agent loses them. The new host's agent must see only what
    happened on its own machine."""
    admin = _token(store, Role.ADMIN)
    old_agent = _token(store, Role.AGENT, host="compute-a")
    assert secure_api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}, headers=admin).status_code == 201
    body = {"generation": 1, "host_id": "machine-1", "devices": [vf("0000:3b:02.1")]}
    assert secure_api.put("/v1/hosts/compute-a/inventory", json=body, headers=old_agent).status_code == 200
    claim = {"consumer": "secret-vm", "project": "p", "requests": [{"name": "n", "type": "NIC_VF_1G"}]}
    assert secure_api.post("/v1/claims", json=claim, headers=admin).status_code == 201
    r = secure_api.post("/v1/hosts/compute-a/rename", json={"new_name": "compute-z"}, headers=admin)
    assert r.status_code == 200, r.text

    newcomer = _token(store, Role.AGENT, host="compute-a")
    body = {"generation": 1, "host_id": "machine-2", "devices": [vf("0000:3b:02.1")]}
    assert secure_api.put("/v1/hosts/compute-a/inventory", json=body, headers=newcomer).status_code == 200

    seen = secure_api.get("/v1/events", params={"limit": 1000}, headers=newcomer).json()
    leaked = [e for e in seen if e["consumer"] == "secret-vm"]
    assert leaked == [], f"the new compute-a reads the renamed host's tenants: {leaked}"
    by_consumer = secure_api.get("/v1/events", params={"consumer": "secret-vm"}, headers=newcomer)
    assert by_consumer.status_code in (200, 403, 404)
    assert by_consumer.status_code != 200 or by_consumer.json() == []


INSTANCE = schemas.AGENT_INSTANCE_HEADER


def test_work_is_only_for_the_agent_process_the_server_took(api: TestClient) -> None:
    """``GET``/``POST /v1/hosts/{host}/work`` from another agent process than the one whose report
    was taken is 409 ``agent_conflict``; the same process, or a call without the header (a
    hand-made client), is served."""
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}).status_code == 201
    body = {
        "generation": 1,
        "host_id": "m-1",
        "agent_instance": "first-process",
        "devices": [vf("0000:3b:02.1")],
    }
    assert api.put("/v1/hosts/h1/inventory", json=body).status_code == 200
    assert api.get("/v1/hosts/h1/work", headers={INSTANCE: "first-process"}).status_code == 200
    assert api.get("/v1/hosts/h1/work").status_code == 200
    for method, extra in (("GET", {}), ("POST", {"json": {"results": []}})):
        r = api.request(method, "/v1/hosts/h1/work", headers={INSTANCE: "other-process"}, **extra)
        assert r.status_code == 409, (method, r.text)
        assert r.json()["error"]["code"] == "agent_conflict"
    r = api.get("/v1/hosts/h1/work", headers={INSTANCE: "bad header!"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"


def test_a_heartbeat_with_another_host_id_is_refused(api: TestClient) -> None:
    """A machine that is not the host (another host id) may not keep it up by heartbeats, nor
    take its agent over after the real agent's silence."""
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}).status_code == 201
    body = {
        "generation": 1,
        "host_id": "m-1",
        "agent_instance": "first-process",
        "devices": [vf("0000:3b:02.1")],
    }
    assert api.put("/v1/hosts/h1/inventory", json=body).status_code == 200
    ok = api.post(
        "/v1/hosts/h1/heartbeat",
        json={"host_id": "m-1", "generation": 1},
        headers={INSTANCE: "first-process"},
    )
    assert ok.status_code == 204, ok.text
    for headers in ({INSTANCE: "other-process"}, {}):
        r = api.post("/v1/hosts/h1/heartbeat", json={"host_id": "m-2", "generation": 1}, headers=headers)
        assert r.status_code == 409, (headers, r.text)
        assert r.json()["error"]["code"] == "host_id_mismatch"
    assert api.post("/v1/hosts/h1/heartbeat").status_code == 204  # no body: as before


def test_a_host_name_reused_after_a_delete_does_not_show_the_old_hosts_events(
    secure_api: TestClient, store: Store
) -> None:
    """``devassign host delete compute-a`` and a new machine registered as compute-a: its agent
    sees the events of its own machine only, not the tenants of the deleted one (an admin
    still sees the whole history)."""
    admin = _token(store, Role.ADMIN)
    agent = _token(store, Role.AGENT, host="compute-a")
    assert secure_api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}, headers=admin).status_code == 201
    body = {"generation": 1, "host_id": "machine-1", "devices": [vf("0000:3b:02.1")]}
    assert secure_api.put("/v1/hosts/compute-a/inventory", json=body, headers=agent).status_code == 200
    claim = {"consumer": "old-vm", "project": "p", "requests": [{"name": "n", "type": "NIC_VF_1G"}]}
    assert secure_api.post("/v1/claims", json=claim, headers=admin).status_code == 201
    assert secure_api.delete("/v1/allocations/old-vm", headers=admin).status_code == 204
    assert secure_api.post("/v1/hosts/compute-a/mark-down", headers=admin).status_code in (200, 204, 404, 405)
    store.db.retrying(
        lambda c: c.exec_driver_sql(
            "UPDATE devices SET state = 'available', allocation_id = NULL WHERE state = 'cleaning'"
        )
    )
    r = secure_api.delete("/v1/hosts/compute-a", params={"force": "true"}, headers=admin)
    assert r.status_code in (200, 204), r.text
    body = {"generation": 1, "host_id": "machine-2", "devices": [vf("0000:3b:02.1")]}
    assert secure_api.put("/v1/hosts/compute-a/inventory", json=body, headers=agent).status_code == 200
    seen = secure_api.get("/v1/events", params={"limit": 1000}, headers=agent).json()
    assert seen and all(e["consumer"] != "old-vm" for e in seen), seen
    everything = secure_api.get(
        "/v1/events", params={"limit": 1000, "consumer": "old-vm"}, headers=admin
    ).json()
    assert everything, "the admin keeps the deleted host's history"


def test_an_agent_token_without_the_instance_header_gets_no_work_while_the_agent_is_live(
    secure_api: TestClient, store: Store, clock: Clock
) -> None:
    """The fence was opt-in: a process holding the host's agent token that left the header
    out was served the host's setups (their params) and could post their results while the
    agent the server took was live. Once that agent is silent, such a call is served only after
    a report with the host's id (``agent run --once`` sends one, without the header) took the
    host over: the token alone never gets the work; an admin's call always does."""
    admin = _token(store, Role.ADMIN)
    agent = _token(store, Role.AGENT, host="h1")
    assert secure_api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}, headers=admin).status_code == 201
    body = {
        "generation": 1,
        "host_id": "m-1",
        "agent_instance": "live-process",
        "devices": [vf("0000:3b:02.1")],
    }
    assert secure_api.put("/v1/hosts/h1/inventory", json=body, headers=agent).status_code == 200
    for method, extra in (("GET", {}), ("POST", {"json": {"results": []}})):
        r = secure_api.request(method, "/v1/hosts/h1/work", headers=agent, **extra)
        assert r.status_code == 409 and r.json()["error"]["code"] == "agent_conflict", (method, r.text)
        mine = secure_api.request(
            method, "/v1/hosts/h1/work", headers={**agent, INSTANCE: "live-process"}, **extra
        )
        assert mine.status_code == 200, mine.text
        assert secure_api.request(method, "/v1/hosts/h1/work", headers=admin, **extra).status_code == 200
    clock.advance(31)  # the live process fell silent
    assert secure_api.get("/v1/hosts/h1/work", headers=agent).status_code == 409  # the token alone
    once = {"generation": 2, "host_id": "m-1", "devices": [vf("0000:3b:02.1")]}  # a one-shot run's
    assert secure_api.put("/v1/hosts/h1/inventory", json=once, headers=agent).status_code == 200
    assert secure_api.get("/v1/hosts/h1/work", headers=agent).status_code == 200
