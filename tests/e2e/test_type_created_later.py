"""A type created after the agent's devices were refused for it: the agent's hint
(`devassign type create X`) must come true, by the agent's next report and by a restarted agent.

A real server process; the agent once in-process (its report loop, a clock it is given) and as
the program a user runs (`devassign agent run --once`), over a generated sysfs tree.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devassign.agent.config import load_config
from tests.e2e.agents import Clock, in_process_agent
from tests.e2e.servers import cli, running_server
from tests.fixtures.sysfs import SyntheticHost, host

pytestmark = pytest.mark.slow

HOST = "late-host"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    with running_server(f"sqlite:///{tmp_path / 'late.db'}", auth=False, log=tmp_path / "server.log") as url:
        yield url


def _host(tmp_path: Path, url: str) -> tuple[SyntheticHost, list[str], str, Path]:
    h = host(tmp_path)
    vfs = h.sriov_pf(
        "0000:5e:00.0",
        "8086",
        "1572",
        vfs=2,
        vf_device="154c",
        numa=0,
        vf_iommu_group_start=20,
        ifname="ens1f0",
    )
    gpu = "0000:3b:00.0"
    h.pci(gpu, "10de", "1eb8", cls="030200", numa=1, iommu_group=5, driver="vfio-pci")
    conf = tmp_path / "agent.toml"
    conf.write_text(
        f'host = "{HOST}"\nserver = "{url}"\nstate_file = "state.json"\nreport_interval = 30\n'
        '[[device]]\ntype = "NIC_VF_1G"\nmatch = { vendor_id = "8086", product_id = "154c" }\n'
        '[[device]]\ntype = "GPU_T4"\nmatch = { vendor_id = "10de", product_id = "1eb8" }\n'
    )
    return h, vfs, gpu, conf


def _devices(url: str) -> dict[str, dict[str, Any]]:
    resp = httpx.get(f"{url}/v1/devices", params={"host": HOST})
    assert resp.status_code == 200, resp.text
    return {d["address"]: d for d in resp.json()}


def test_the_next_report_takes_devices_of_a_type_created_after_they_were_refused(
    tmp_path: Path, server: str
) -> None:
    h, vfs, gpu, conf = _host(tmp_path, server)
    config = load_config(conf)
    clock = Clock()
    with httpx.Client(timeout=10) as client:
        agent = in_process_agent(config, h.root, client, clock)
        first = agent.step()
        assert not first.errors and first.report is not None
        refused = {r.address: r for r in first.report.refused}
        assert set(refused) == {*vfs, gpu} and {r.code for r in refused.values()} == {"unknown_type"}
        assert "devassign type create NIC_VF_1G" in refused[vfs[0]].reason
        assert _devices(server) == {}

        # What the refusal says to do, as the operator does it.
        cli("type", "create", "NIC_VF_1G", env={"DEVASSIGN_URL": server})

        clock.now += 10  # heartbeats in between change nothing
        assert agent.step().heartbeat
        clock.now += 25  # past the report interval: the next full report
        nxt = agent.step()
        assert not nxt.errors and nxt.report is not None
        assert sorted(nxt.report.added) == sorted(vfs)
        assert [r.address for r in nxt.report.refused] == [gpu]  # GPU_T4 is still unknown
        found = _devices(server)
        assert set(found) == set(vfs)
        assert all(d["state"] == "available" and d["type"] == "NIC_VF_1G" for d in found.values())


def test_a_restarted_agent_takes_devices_of_a_type_created_after_they_were_refused(
    tmp_path: Path, server: str
) -> None:
    h, vfs, gpu, conf = _host(tmp_path, server)
    env = {"DEVASSIGN_URL": server}

    def agent_run() -> tuple[str, str]:
        run = cli("agent", "run", "--once", "--config", str(conf), "--sysfs-root", str(h.root))
        return run.stdout, run.stderr

    out, err = agent_run()
    assert "reported 0 devices for host late-host (generation 1, 3 refused)" in out
    assert "devassign type create NIC_VF_1G" in err and "devassign type create GPU_T4" in err

    cli("type", "create", "NIC_VF_1G", env=env)
    cli("type", "create", "GPU_T4", env=env)
    assert _devices(server) == {}

    out, _ = agent_run()  # a new agent process: the same report as before
    assert "reported 3 devices for host late-host (generation 2, 0 refused)" in out
    found = _devices(server)
    assert set(found) == {*vfs, gpu}
    assert found[gpu]["type"] == "GPU_T4" and found[vfs[1]]["type"] == "NIC_VF_1G"
    assert all(d["state"] == "available" for d in found.values())
    types = {t["name"]: t["counts"] for t in httpx.get(f"{server}/v1/resource-types").json()}
    assert (types["NIC_VF_1G"]["available"], types["GPU_T4"]["available"]) == (2, 1)
