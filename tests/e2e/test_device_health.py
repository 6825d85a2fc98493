"""Device health as an operator lives it: a real server process, the agent in-process (its own
loop and a clock it is given) over a generated sysfs tree, and the ``devassign`` program.

A GPU that dies in its cleanup's reset (its config space then reads 0xFF) must never come
back as available, whatever the cleanup said; a PF whose link goes down takes its free VFs
out of service on the next check; a device whose checks pass again waits for enough passes
in a row; an operator's clear stands until a check fails again. Every change is an event
with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devassign.agent.config import load_config
from devassign.agent.worker import Agent
from tests.e2e.agents import Clock, in_process_agent
from tests.e2e.servers import cli, running_server
from tests.fixtures.sysfs import SyntheticHost, host

pytestmark = pytest.mark.slow

HOST = "health-host"
GPU = "0000:3b:00.0"
PF = "0000:5e:00.0"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    with running_server(f"sqlite:///{tmp_path / 'h.db'}", auth=False, log=tmp_path / "server.log") as url:
        yield url


def _devices(url: str) -> dict[str, dict[str, Any]]:
    resp = httpx.get(f"{url}/v1/devices", params={"host": HOST})
    assert resp.status_code == 200, resp.text
    return {d["address"]: d for d in resp.json()}


def _events(url: str, device: str) -> list[dict[str, Any]]:
    resp = httpx.get(f"{url}/v1/events", params={"device": device, "limit": 200})
    assert resp.status_code == 200, resp.text
    return list(reversed(resp.json()))  # oldest first


def _setup(tmp_path: Path, url: str) -> tuple[SyntheticHost, list[str], Agent, Clock]:
    h = host(tmp_path, vfio=True)
    vfs = h.sriov_pf(
        PF, "8086", "1572", vfs=2, vf_device="154c", numa=0, vf_iommu_group_start=20, ifname="ens1f0"
    )
    h.pci(GPU, "10de", "1eb8", cls="030200", numa=1, iommu_group=5, driver="nvidia")
    conf = tmp_path / "agent.toml"
    conf.write_text(
        f'host = "{HOST}"\nserver = "{url}"\nstate_file = "state.json"\n'
        "report_interval = 30\nhealth_interval = 60\nhealth_passes = 3\n"
        '[[device]]\ntype = "NIC_VF_1G"\nmatch = { vendor_id = "8086", product_id = "154c" }\n'
        '[[device]]\ntype = "GPU_T4"\nmatch = { vendor_id = "10de", product_id = "1eb8" }\n'
    )
    env = {"DEVASSIGN_URL": url}
    cli("type", "create", "NIC_VF_1G", env=env)
    cli("type", "create", "GPU_T4", env=env)
    config = load_config(conf)
    clock = Clock()
    agent = in_process_agent(config, h.root, httpx.Client(timeout=10), clock)
    first = agent.step()
    assert not first.errors, first.errors
    assert {d["state"] for d in _devices(url).values()} == {"available"}
    return h, vfs, agent, clock


def test_a_gpu_dead_after_its_cleanup_is_never_handed_out_until_it_passes_again(
    tmp_path: Path, server: str
) -> None:
    h, _vfs, agent, clock = _setup(tmp_path, server)
    env = {"DEVASSIGN_URL": server}
    cli("claim", "--consumer", "vm-1", "--spec", "hardware_resource:GPU_T4=1", env=env)
    assert [w.ok for w in agent.step().work] == [True]
    assert _devices(server)[GPU]["state"] == "assigned"

    h.dies_on_reset(GPU)  # the cleanup's reset "succeeds" and leaves the GPU off the bus
    cli("release", "--consumer", "vm-1", env=env)
    clock.now += 2
    done = agent.step().work
    assert [(w.action, w.ok) for w in done] == [("cleanup", True)]
    gpu = _devices(server)[GPU]
    assert (gpu["state"], gpu["healthy"]) == ("unhealthy", False)
    assert "0xFF" in gpu["health_reason"] and "reboot" in gpu["health_reason"]
    unhealthy = [e for e in _events(server, GPU) if e["action"] == "device_unhealthy"]
    assert len(unhealthy) == 1 and "0xFF" in unhealthy[0]["message"]

    # Nobody gets it: the claim is refused and says why.
    refused = cli("claim", "--consumer", "vm-2", "--spec", "hardware_resource:GPU_T4=1", env=env, check=False)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "1 of them only because devices failed their health checks" in refused.stdout

    # The next checks still fail: nothing changes, no new event.
    for _ in range(2):
        clock.now += 61
        assert not agent.step().errors
    assert _devices(server)[GPU]["state"] == "unhealthy"
    assert len([e for e in _events(server, GPU) if e["action"] == "device_unhealthy"]) == 1

    # Replaced (the tree answers again): three passes in a row before it is available.
    h.config_space(GPU, "10de", "1eb8")
    states = []
    for _ in range(3):
        clock.now += 61
        out = agent.step()
        assert not out.errors
        states.append(_devices(server)[GPU]["state"])
    assert states == ["unhealthy", "unhealthy", "available"]
    gpu = _devices(server)[GPU]
    assert gpu["healthy"] is True and gpu["health_reason"] is None
    healthy = [e for e in _events(server, GPU) if e["action"] == "device_healthy"]
    assert len(healthy) == 1 and "healthy again" in healthy[0]["message"]
    cli("claim", "--consumer", "vm-2", "--spec", "hardware_resource:GPU_T4=1", env=env)


def test_a_pf_link_down_takes_its_free_vfs_out_and_an_operator_clear_stands_until_a_check_fails(
    tmp_path: Path, server: str
) -> None:
    h, vfs, agent, clock = _setup(tmp_path, server)
    env = {"DEVASSIGN_URL": server}
    h.netdev(PF, "ens1f0", "down")
    clock.now += 61
    out = agent.step()
    assert set(out.unhealthy) == set(vfs)
    devices = _devices(server)
    for vf in vfs:
        assert devices[vf]["state"] == "unhealthy"
        assert devices[vf]["health_reason"] == f"the link of PF {PF} (ens1f0) is down"
    assert devices[GPU]["state"] == "available"  # not on that PF
    types = {t["name"]: t for t in httpx.get(f"{server}/v1/resource-types").json()}
    assert types["NIC_VF_1G"]["counts"]["unhealthy"] == 2 and types["NIC_VF_1G"]["counts"]["available"] == 0

    # The operator vouches for one VF while the link is still down: available at once...
    cleared = cli("device", "clear", vfs[0], "--host", HOST, "--reason", "cable reseated", env=env)
    assert "available" in cleared.stdout
    assert _devices(server)[vfs[0]]["state"] == "available"
    events = [e["action"] for e in _events(server, vfs[0])]
    assert events[-1] == "device_health_cleared"
    # ... until the next check, which still fails: unhealthy again, with a new event.
    clock.now += 61
    agent.step()
    assert _devices(server)[vfs[0]]["state"] == "unhealthy"
    assert [e["action"] for e in _events(server, vfs[0])].count("device_unhealthy") == 2

    # Link up: the first pass does not make them healthy; a clear during the passes stands.
    h.netdev(PF, "ens1f0", "up")
    clock.now += 61
    agent.step()
    assert {_devices(server)[vf]["state"] for vf in vfs} == {"unhealthy"}
    cli("device", "clear", vfs[1], "--host", HOST, env=env)
    clock.now += 61
    agent.step()
    devices = _devices(server)
    assert devices[vfs[0]]["state"] == "unhealthy" and devices[vfs[1]]["state"] == "available"
    clock.now += 61
    agent.step()
    assert {_devices(server)[vf]["state"] for vf in vfs} == {"available"}

    # Clearing a healthy device is refused and changes nothing.
    again = cli("device", "clear", vfs[1], "--host", HOST, env=env, check=False)
    assert again.returncode != 0 and "only quarantined, unhealthy or missing" in again.stderr
    assert "Traceback" not in again.stderr


def test_the_health_record_survives_an_agent_restart(tmp_path: Path, server: str) -> None:
    h, _vfs, agent, clock = _setup(tmp_path, server)
    h.fall_off_bus(GPU)
    clock.now += 61
    assert GPU in agent.step().unhealthy
    h.config_space(GPU, "10de", "1eb8")
    clock.now += 61
    agent.step()  # one pass
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["health"][GPU]["passes"] == 1
    # A new agent process (the same state file) does not call the GPU healthy after one more pass.
    again = in_process_agent(agent.config, h.root, httpx.Client(timeout=10), clock, seed=2)
    # The server would refuse a second live agent for this host until the first falls silent;
    # the first is gone, so the new process takes its instance id rather than wait for that.
    again.reporter.instance = agent.reporter.instance
    assert not again.step().errors
    assert _devices(server)[GPU]["state"] == "unhealthy"
    clock.now += 61
    again.step()
    assert _devices(server)[GPU]["state"] == "available"
