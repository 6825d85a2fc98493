"""An agent reinstalled on a host with live allocations: its state file (host id, journal) is
gone, one VF is assigned to a tenant and another is still being cleaned. The host cannot be
deleted (its devices are in use), so the refusal must tell the operator the way out that
works: give the agent back the host id the server knows (an admin reads it; the refusal never
says it, since with the host's token it is what lets a machine in). With it, the agent cleans
what is left to clean from the server's records, and the tenant keeps its device."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient

from devassign.agent.config import parse_config
from tests.conftest import Clock as ServerClock
from tests.e2e.agents import Clock, in_process_agent
from tests.fixtures.sysfs import host

PF = "0000:5e:00.0"


def test_a_lost_state_file_is_rebuilt_from_the_host_id_an_admin_reads(
    tmp_path: Path, api: TestClient, clock: ServerClock
) -> None:
    h = host(tmp_path, vfio=True)
    h.sriov_pf(PF, "8086", "1572", vfs=3, vf_device="154c", ifname="ens1f0", vf_iommu_group_start=20)
    assert api.post("/v1/resource-types", json={"name": "NIC_VF"}).status_code == 201
    state = tmp_path / "state.json"
    rules = [{"type": "NIC_VF", "match": {"vendor_id": "8086", "product_id": "154c"}}]
    config = parse_config({"host": "c1", "device": rules, "state_file": str(state)})
    agent_clock = Clock()
    agent = in_process_agent(config, h.root, api, agent_clock)
    assert not agent.step().errors
    for consumer in ("stays", "leaves"):
        body = {"consumer": consumer, "extra_specs": {"hardware_resource:NIC_VF": "1"}}
        assert api.post("/v1/claims", json=body).status_code == 201
    agent_clock.now += 2
    assert [w.ok for w in agent.step().work] == [True, True]
    assert api.delete("/v1/allocations/leaves").status_code == 204
    registered = api.get("/v1/hosts/c1").json()["host_id"]

    # The machine is reinstalled: no state file. The old process is long gone.
    state.unlink()
    clock.advance(60)
    agent_clock.now += 60
    fresh = in_process_agent(config, h.root, api, agent_clock, seed=2)
    refused = fresh.step()
    (why,) = [e for e in refused.errors if "host_id_mismatch" in e]
    # It names what to write where, not only a host delete that its live devices refuse; the
    # id comes from an admin (`devassign host show c1 -f json`), never from the refusal.
    assert '{"host_id": "ID", "host": "c1"}' in why and str(state) in why
    assert "devassign host show c1 -f json" in why and registered not in why
    assert api.delete("/v1/hosts/c1").status_code == 409  # the advice to delete cannot work here

    # The way out the refusal names: the registered host id back in a new state file.
    state.write_text(json.dumps({"host_id": registered, "host": "c1"}))
    agent_clock.now += 60
    clock.advance(60)
    again = in_process_agent(config, h.root, api, agent_clock, seed=3)
    first = again.step()
    assert not first.errors, first.errors
    agent_clock.now += 2
    again.step()
    states = {d["consumer"] or d["address"]: d["state"] for d in api.get("/v1/devices").json()}
    assert states["stays"] == "assigned"
    assert sorted(v for k, v in states.items() if k != "stays") == ["available", "available"]
