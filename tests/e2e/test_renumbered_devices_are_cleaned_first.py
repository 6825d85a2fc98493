"""A firmware update renumbers a host's PCI buses under live allocations: the same GPU and VFs
come back under new addresses. The old addresses are held (assigned, cleaning) and go missing;
the new ones are the same hardware, with what the holders left on it, so they must be cleaned
before anyone gets them, and the report's events must say why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from devassign.agent.config import parse_config
from tests.conftest import Clock as ServerClock
from tests.e2e.agents import Clock, in_process_agent
from tests.fixtures.sysfs import SyntheticHost, host

GPU, NEW_GPU = "0000:3b:00.0", "0000:3c:00.0"
PF, NEW_PF = "0000:5e:00.0", "0000:5f:00.0"


def _build(h: SyntheticHost, gpu: str, pf: str, group: int = 5) -> list[str]:
    h.pci(gpu, "10de", "1eb8", cls="030200", numa=1, iommu_group=group, driver="nvidia")
    return h.sriov_pf(
        pf, "8086", "1572", vfs=2, vf_device="154c", ifname="ens1f0", vf_iommu_group_start=group + 20
    )


def _states(api: TestClient) -> dict[str, tuple[str, Any]]:
    return {d["address"]: (d["state"], d["consumer"]) for d in api.get("/v1/devices").json()}


def _claim(api: TestClient, consumer: str, type_name: str) -> Any:
    return api.post(
        "/v1/claims", json={"consumer": consumer, "extra_specs": {f"hardware_resource:{type_name}": "1"}}
    )


def test_devices_renumbered_under_live_allocations_are_cleaned_before_use(
    tmp_path: Path, api: TestClient, clock: ServerClock
) -> None:
    h = host(tmp_path, vfio=True)
    vfs = _build(h, GPU, PF)
    for name in ("GPU_T4", "NIC_VF"):
        assert api.post("/v1/resource-types", json={"name": name}).status_code == 201
    rules = [
        {"type": "GPU_T4", "match": {"vendor_id": "10de", "product_id": "1eb8"}},
        {"type": "NIC_VF", "match": {"vendor_id": "8086", "product_id": "154c"}},
    ]
    config = parse_config({"host": "c1", "device": rules, "state_file": str(tmp_path / "state.json")})
    agent_clock = Clock()
    agent = in_process_agent(config, h.root, api, agent_clock)
    assert not agent.step().errors

    assert _claim(api, "tenant-gpu", "GPU_T4").status_code == 201
    assert _claim(api, "tenant-nic", "NIC_VF").status_code == 201
    agent_clock.now += 2
    assert [w.ok for w in agent.step().work] == [True, True]
    assert api.delete("/v1/allocations/tenant-nic").status_code == 204  # its VF is dirty: cleaning
    (dirty_vf,) = [a for a, (s, _) in _states(api).items() if s == "cleaning"]

    # The firmware update: the host reboots and every bus moves up by one.
    h.remove(GPU)
    for vf in vfs:
        h.remove(vf)
    h.remove(PF)
    new_vfs = _build(h, NEW_GPU, NEW_PF, group=6)
    agent_clock.now += 40
    clock.advance(40)
    first = agent.report()

    states = _states(api)
    assert states[GPU] == ("missing", "tenant-gpu")
    assert states[dirty_vf][0] == "missing"
    # The same hardware under its new addresses: nobody may get it before it is cleaned.
    assert states[NEW_GPU][0] == "cleaning"
    assert {states[v][0] for v in new_vfs} == {"cleaning"}
    assert _claim(api, "next-gpu", "GPU_T4").status_code == 409
    assert any(NEW_GPU in w and "new address" in w for w in first.warnings)
    added = [
        e for e in api.get("/v1/events", params={"device": NEW_GPU}).json() if e["action"] == "device_added"
    ]
    assert len(added) == 1 and "cleaned before use" in added[0]["message"] and GPU in added[0]["message"]

    # The agent cleans them; then they are handed out as usual.
    agent_clock.now += 2
    done = agent.work()
    assert sorted((w.action, w.ok) for w in done) == [("cleanup", True)] * 3
    states = _states(api)
    assert states[NEW_GPU][0] == "available" and {states[v][0] for v in new_vfs} == {"available"}
    again = _claim(api, "next-gpu", "GPU_T4")
    assert again.status_code == 201, again.text


def test_a_device_added_beside_free_ones_only_is_available_at_once(tmp_path: Path, api: TestClient) -> None:
    """Nothing held is gone: a device added later is taken as it comes, as before."""
    h = host(tmp_path, vfio=True)
    _build(h, GPU, PF)
    assert api.post("/v1/resource-types", json={"name": "GPU_T4"}).status_code == 201
    rules = [{"type": "GPU_T4", "match": {"vendor_id": "10de", "product_id": "1eb8"}}]
    config = parse_config({"host": "c1", "device": rules, "state_file": str(tmp_path / "state.json")})
    agent_clock = Clock()
    agent = in_process_agent(config, h.root, api, agent_clock)
    assert not agent.step().errors
    h.remove(GPU)  # a free GPU taken out, another put in elsewhere
    h.pci(NEW_GPU, "10de", "1eb8", cls="030200", numa=1, iommu_group=6, driver="nvidia")
    agent.report()
    states = _states(api)
    assert states[GPU][0] == "removed" and states[NEW_GPU][0] == "available"
