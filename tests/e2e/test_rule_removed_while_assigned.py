"""An operator removes (or edits) the rule that took a device while a tenant holds it. The
device used to vanish from the agent's report: its holder was told it was missing, and once
released it was never reported again, so its cleanup never ran and it left devassign dirty.
Now the agent keeps reporting a device it holds under its type until its cleanup is posted;
then the server retires it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from devassign.agent.config import parse_config
from tests.conftest import Clock as ServerClock
from tests.e2e.agents import Clock, in_process_agent
from tests.fixtures.sysfs import host

PF = "0000:5e:00.0"
RULE = {"type": "NIC_VF", "match": {"vendor_id": "8086", "product_id": "154c"}}


def _states(api: TestClient) -> dict[str, tuple[str, Any]]:
    return {d["address"]: (d["state"], d["consumer"]) for d in api.get("/v1/devices").json()}


def test_a_held_vf_stays_its_holders_and_is_cleaned_before_it_is_retired(
    tmp_path: Path, api: TestClient, clock: ServerClock
) -> None:
    h = host(tmp_path, vfio=True)
    vfs = h.sriov_pf(PF, "8086", "1572", vfs=2, vf_device="154c", ifname="ens1f0", vf_iommu_group_start=20)
    assert api.post("/v1/resource-types", json={"name": "NIC_VF"}).status_code == 201
    state_file = str(tmp_path / "state.json")
    agent_clock = Clock()
    config = parse_config({"host": "c1", "device": [RULE], "state_file": state_file})
    agent = in_process_agent(config, h.root, api, agent_clock)
    assert not agent.step().errors
    one_vf = {"hardware_resource:NIC_VF": "1"}
    claim = api.post("/v1/claims", json={"consumer": "tenant", "extra_specs": one_vf})
    assert claim.status_code == 201
    agent_clock.now += 2
    assert [w.ok for w in agent.step().work] == [True]
    (held,) = [a for a, (s, _) in _states(api).items() if s == "assigned"]
    (free,) = [v for v in vfs if v != held]

    # The rule is removed from agent.toml and the agent restarted.
    without = parse_config({"host": "c1", "device": [], "state_file": state_file})
    agent = in_process_agent(without, h.root, api, agent_clock)
    agent_clock.now += 40
    clock.advance(40)
    agent.report()
    states = _states(api)
    assert states[held] == ("assigned", "tenant")  # not missing: the tenant still has it
    assert states[free][0] == "removed"  # a free one simply goes

    assert api.delete("/v1/allocations/tenant").status_code == 204
    agent_clock.now += 2
    done = agent.work()
    assert [(w.action, w.ok) for w in done] == [("cleanup", True)]
    assert (h.root / "bus/pci/devices" / held / "driver").resolve().name == "iavf"  # given back
    agent_clock.now += 40
    clock.advance(40)
    agent.report()
    assert _states(api)[held][0] == "removed"  # cleaned, then retired
