"""A real server process and ``devassign agent run --once`` over a generated sysfs tree.

The tree then changes (a VF removed, a device added, an attribute changed, a VF removed
while assigned) and the next report must bring the server's inventory in line.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.servers import cli, running_server
from tests.fixtures.sysfs import SyntheticHost, host

pytestmark = pytest.mark.slow

HOST = "e2e-host"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    with running_server(f"sqlite:///{tmp_path / 'e2e.db'}", auth=False, log=tmp_path / "server.log") as url:
        for name in ("NIC_VF_1G", "GPU_T4"):
            resp = httpx.post(f"{url}/v1/resource-types", json={"name": name, "description": name})
            assert resp.status_code == 201, resp.text
        yield url


def setup_host(tmp_path: Path, url: str) -> tuple[SyntheticHost, list[str], Path]:
    h = host(tmp_path)
    vfs = h.sriov_pf(
        "0000:5e:00.0",
        "8086",
        "1572",
        vfs=4,
        vf_device="154c",
        numa=0,
        vf_iommu_group_start=20,
        ifname="ens1f0",
    )
    conf = tmp_path / "agent.toml"
    conf.write_text(
        f'host = "{HOST}"\nserver = "{url}"\nstate_file = "state.json"\n'
        '[[device]]\ntype = "NIC_VF_1G"\nmatch = { vendor_id = "8086", product_id = "154c" }\n'
        'attributes = { physical_network = "physnet1" }\n'
        '[[device]]\ntype = "GPU_T4"\nmatch = { vendor_id = "10de", product_id = "1eb8" }\n'
    )
    return h, vfs, conf


def report(h: SyntheticHost, conf: Path) -> None:
    cli("agent", "run", "--config", str(conf), "--sysfs-root", str(h.root), "--once")


def devices(url: str) -> dict[str, dict[str, Any]]:
    resp = httpx.get(f"{url}/v1/devices", params={"host": HOST})
    assert resp.status_code == 200, resp.text
    return {d["address"]: d for d in resp.json()}


def test_agent_reports_and_converges(tmp_path: Path, server: str) -> None:
    h, vfs, conf = setup_host(tmp_path, server)
    report(h, conf)
    first = devices(server)
    assert set(first) == set(vfs)
    assert all(d["state"] == "available" and d["type"] == "NIC_VF_1G" for d in first.values())
    assert first[vfs[0]]["parent"] == "0000:5e:00.0"
    assert first[vfs[0]]["attributes"]["physical_network"] == "physnet1"

    h.remove(vfs[3])  # a free VF goes away
    h.pci("0000:3b:00.0", "10de", "1eb8", cls="030200", numa=1, iommu_group=5, driver="vfio-pci")
    h.set(vfs[0], "numa_node", "1")  # an attribute changes
    report(h, conf)

    after = devices(server)
    assert after["0000:3b:00.0"]["type"] == "GPU_T4" and after["0000:3b:00.0"]["state"] == "available"
    assert after[vfs[0]]["numa_node"] == 1
    assert after[vfs[3]]["state"] == "removed"  # kept, never handed out
    assert all(after[v]["state"] == "available" for v in vfs[:3])


def test_vf_removed_while_assigned_is_missing(tmp_path: Path, server: str) -> None:
    h, _vfs, conf = setup_host(tmp_path, server)
    report(h, conf)
    claim = httpx.post(
        f"{server}/v1/claims",
        json={
            "consumer": "6f1c0b4e-0000-4000-8000-000000000001",
            "extra_specs": {"hardware_resource:NIC_VF_1G": "1"},
        },
    )
    assert claim.status_code == 201, claim.text
    (taken,) = [d["address"] for d in claim.json()["devices"]]
    h.remove(taken)
    report(h, conf)
    assert devices(server)[taken]["state"] == "missing"
