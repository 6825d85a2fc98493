"""Review: the agent fences on the work routes when the server has no agent process on record."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from devassign import schemas
from tests.api.test_agent_identity_fences import GPU, HOST, _machine
from tests.conftest import vf

INSTANCE = schemas.AGENT_INSTANCE_HEADER


def test_a_machine_refused_as_a_host_run_with_once_still_cleans_its_devices(
    api: TestClient, tmp_path: Path
) -> None:
    """The real gpu-1 runs ``devassign-agent run --once`` (cron, or a first run by hand): a
    one-shot run sends no agent instance, so the server records none. The same agent.toml and
    token copied to a second machine, running the agent daemon: its reports are refused (409
    ``host_id_mismatch``), yet ``GET /v1/hosts/gpu-1/work`` with its instance header is served
    (``_host_id`` checks the instance only when one is recorded), and it runs gpu-1's cleanup on
    its own GPU and reports gpu-1's GPU clean: the next tenant gets a dirty device. A process
    whose report the server never took must get no work, recorded instance or not."""
    assert api.post("/v1/resource-types", json={"name": "GPU"}).status_code == 201
    real, real_ops = _machine(api, tmp_path / "real")
    assert real.run_once().report is not None  # no agent instance recorded
    claim = {"consumer": "vm-1", "hosts": [HOST], "requests": [{"name": "r", "type": "GPU"}]}
    r = api.post("/v1/claims", json=claim)
    assert r.status_code == 201, r.text
    device = r.json()["devices"][0]["id"]
    assert [(d.action, d.ok) for d in real.run_once().work] == [("setup", True)]
    assert api.delete("/v1/allocations/vm-1").status_code == 204  # the GPU goes to cleaning

    other, _ = _machine(api, tmp_path / "other")
    step = other.step()
    assert any("host_id_mismatch" in e for e in step.errors), step.errors
    assert real_ops.sysfs.link_name(f"bus/pci/devices/{GPU}/driver") == "vfio-pci"
    assert api.get(f"/v1/devices/{device}").json()["state"] == "cleaning", (
        f"a machine refused as gpu-1 cleaned gpu-1's GPU: {[(d.action, d.ok, d.state) for d in step.work]}"
    )


def test_after_a_rename_any_agent_process_gets_the_hosts_work(api: TestClient) -> None:
    """``devassign host rename`` forgets the agent instance. Until the renamed host's agent
    reports under its new name, a process whose report was just refused as that host (another
    host id: 409 ``host_id_mismatch``) is served its setups and cleanups."""
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}).status_code == 201
    body = {
        "generation": 1,
        "host_id": "m-1",
        "agent_instance": "real-process",
        "devices": [vf("0000:3b:02.1")],
    }
    assert api.put("/v1/hosts/h1/inventory", json=body).status_code == 200
    assert api.post("/v1/hosts/h1/rename", json={"new_name": "h2"}).status_code == 200
    claim = {"consumer": "vm-1", "hosts": ["h2"], "requests": [{"name": "n", "type": "NIC_VF_1G"}]}
    assert api.post("/v1/claims", json=claim).status_code == 201

    intruder = {"generation": 5, "host_id": "m-2", "agent_instance": "copied-machine", "devices": []}
    refused = api.put("/v1/hosts/h2/inventory", json=intruder)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "host_id_mismatch", refused.text
    r = api.get("/v1/hosts/h2/work", headers={INSTANCE: "copied-machine"})
    assert r.status_code == 409, f"a process refused as h2 is served h2's work: {r.text[:300]}"
