"""A gang's plan counts what the earlier instances' params take of a PF's bandwidth: the plan and
the claim agree, and a gang that fits across hosts is placed."""

from __future__ import annotations

from fastapi.testclient import TestClient

from devassign.scheduler.gang import plan
from devassign.scheduler.view import DeviceView, HostView, Snapshot
from tests.api.test_partitions import _report, _vfs
from tests.unit.scheduler.helpers import req


def _bw_type(api: TestClient) -> None:
    rates = {"type": "integer", "min": 0, "max": 100000}
    body = {"name": "NIC_VF_BW", "description": "VF", "params": {"min_tx_rate_mbps": rates}}
    assert api.post("/v1/resource-types", json=body).status_code == 201


GANG = {
    "requests": [{"name": "nic", "type": "NIC_VF_BW", "params": {"min_tx_rate_mbps": 4000}}],
    "instances": ["i-1", "i-2", "i-3"],
}


def test_gang_plan_counts_param_bandwidth_of_earlier_instances() -> None:
    pf = "0000:5e:00.0"
    vfs = tuple(
        DeviceView(
            f"vf{i}",
            f"0000:5e:10.{i}",
            "sriov_vf",
            "NIC_VF_BW",
            0,
            None,
            pf,
            pool=pf,
            pool_counters={"bandwidth_mbps": 10_000},
        )
        for i in range(4)
    )
    request = req({"name": "nic", "type": "NIC_VF_BW", "params": {"min_tx_rate_mbps": 4000}})
    found = plan(request, 3, Snapshot((HostView("h1", vfs),)))
    # 3 x 4000 Mbit/s > the PF's 10000: only 2 instances fit
    assert not found.fits, found.message


def test_gang_explain_agrees_with_capacity_and_claims(api: TestClient) -> None:
    _bw_type(api)
    _report(api, "h1", _vfs(4))
    explained = api.post("/v1/gangs/explain", json=GANG)
    assert explained.status_code == 200, explained.text
    claimed = api.post("/v1/gangs", json=GANG)
    # a gang claim of 3 x 4 Gbit/s on one 10 Gbit/s PF must be refused, and explain must agree
    assert claimed.status_code == 409, claimed.text
    assert explained.json()["fits"] is False, explained.json()["message"]


def test_gang_refused_although_a_placement_exists(api: TestClient) -> None:
    """h1's PF carries 2 of the 3 instances (2 x 4 of 10 Gbit/s), h2 the third: the plan puts
    all 3 on h1 (with_held forgets the params' bandwidth), the claim loses that race every time."""
    _bw_type(api)
    _report(api, "h1", _vfs(4))
    _report(api, "h2", _vfs(8, bandwidth=4000))  # pack ranks h1 (fewer free after) first
    claimed = api.post("/v1/gangs", json=GANG)
    assert claimed.status_code == 201, claimed.text
    hosts = sorted(a["host"] for a in claimed.json()["allocations"])
    assert hosts == ["h1", "h1", "h2"]
