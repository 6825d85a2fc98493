"""The operator takes VFs away for good (``sriov_numvfs`` lowered) while some are held or still
cleaning: they become ``missing`` and stay counted on their host, and the host cannot be
deleted while it has them. ``devassign device clear`` retires a missing device once no live
allocation holds it: it is ``removed``, out of the counts, and cleaned first if it ever comes
back. One a live allocation still names is refused, naming the consumer to release."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from devassign.agent.config import parse_config
from tests.conftest import Clock as ServerClock
from tests.e2e.agents import Clock, in_process_agent
from tests.fixtures.sysfs import host

PF = "0000:5e:00.0"


def _device(api: TestClient, address: str) -> dict[str, Any]:
    (found,) = api.get("/v1/devices", params={"address": address}).json()
    return found  # type: ignore[no-any-return]


def _counts(api: TestClient) -> dict[str, int]:
    (t,) = api.get("/v1/resource-types").json()
    return {k: t["counts"][k] for k in ("total", "available", "missing")}


def test_vfs_taken_away_for_good_are_retired_by_clear(
    tmp_path: Path, api: TestClient, clock: ServerClock
) -> None:
    h = host(tmp_path, vfio=True)
    vfs = h.sriov_pf(PF, "8086", "1572", vfs=4, vf_device="154c", ifname="ens1f0", vf_iommu_group_start=20)
    assert api.post("/v1/resource-types", json={"name": "NIC_VF"}).status_code == 201
    rules = [{"type": "NIC_VF", "match": {"vendor_id": "8086", "product_id": "154c"}}]
    config = parse_config({"host": "c1", "device": rules, "state_file": str(tmp_path / "state.json")})
    agent_clock = Clock()
    agent = in_process_agent(config, h.root, api, agent_clock)
    assert not agent.step().errors
    body = {"consumer": "t1", "extra_specs": {"hardware_resource:NIC_VF": "4"}}
    assert api.post("/v1/claims", json=body).status_code == 201
    agent_clock.now += 2
    assert [w.ok for w in agent.step().work] == [True] * 4

    # sriov_numvfs 4 -> 2 under the tenant: VFs 2 and 3 are gone for good.
    for vf in vfs[2:]:
        h.remove(vf)
    h.set(PF, "sriov_numvfs", "2")
    agent_clock.now += 40
    clock.advance(40)
    agent.report()
    assert {_device(api, v)["state"] for v in vfs[2:]} == {"missing"}

    held = api.post(f"/v1/devices/{_device(api, vfs[2])['id']}/clear", json={"reason": "numvfs lowered"})
    assert held.status_code == 409 and "t1" in held.text and "release" in held.text

    assert api.delete("/v1/allocations/t1").status_code == 204
    agent_clock.now += 2
    agent.work()
    assert _counts(api) == {"total": 4, "available": 2, "missing": 2}
    assert api.delete("/v1/hosts/c1").status_code == 409  # the missing VFs keep it

    for vf in vfs[2:]:
        done = api.post(f"/v1/devices/{_device(api, vf)['id']}/clear", json={"reason": "numvfs lowered"})
        assert done.status_code == 200, done.text
        assert done.json()["state"] == "removed" and done.json()["consumer"] is None
    assert _counts(api) == {"total": 2, "available": 2, "missing": 0}
    events = api.get("/v1/events", params={"device": vfs[2]}).json()
    assert any(e["action"] == "device_cleared" and "removed" in e["message"] for e in events)
    audit = api.get("/v1/audit").json()
    assert audit["findings"] == [], audit

    # numvfs back to 4: the retired VFs were never cleaned after t1, so they are cleaned first.
    h.sriov_pf(PF, "8086", "1572", vfs=4, vf_device="154c", ifname="ens1f0", vf_iommu_group_start=20)
    agent_clock.now += 40
    clock.advance(40)
    agent.report()
    assert {_device(api, v)["state"] for v in vfs[2:]} == {"cleaning"}
    agent_clock.now += 2
    agent.work()
    assert {_device(api, v)["state"] for v in vfs} == {"available"}
