"""The device lifecycle with real processes: a server, ``devassign agent run --once --simulate``
over a generated (SYNTHETIC) sysfs tree, and the ``devassign`` CLI.

Fault injection: a setup that fails half-way, a cleanup that fails, and the agent killed with
SIGKILL at each step of its journal (``DEVASSIGN_AGENT_CRASH_AT``) and restarted. After each
the device must end in the right state on the server *and* on the host (its driver back), and
must never be available while its cleanup has not run to completion.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from devassign.agent.worker import CRASH_ENV, CRASH_POINTS
from devassign.hostio import Sysfs
from devassign.testing.sysfs import host
from tests.e2e.servers import cli, running_server

pytestmark = pytest.mark.slow

TYPE = "NIC_VF_LC"
PF = "0000:5e:00.0"
_hosts = itertools.count(1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("lifecycle")
    with running_server(f"sqlite:///{tmp / 'e2e.db'}", auth=False, log=tmp / "server.log") as url:
        params = '{"mac": {"type": "mac"}, "vlan": {"type": "integer", "min": 1, "max": 4094}}'
        cli(
            "type",
            "create",
            TYPE,
            "--description",
            "VF of an X710",
            "--params",
            params,
            env={"DEVASSIGN_URL": url},
        )
        yield url


@dataclass
class Host:
    """One simulated compute host with its agent configuration."""

    name: str
    url: str
    root: Path
    conf: Path
    vfs: list[str]

    def agent(self, *extra: str, crash_at: str | None = None) -> int:
        """``devassign agent run --once --simulate``; returns the exit code (-9: SIGKILLed)."""
        env = {CRASH_ENV: crash_at} if crash_at else {}
        args = ["agent", "run", "--once", "--simulate", "--config", str(self.conf)]
        res = cli(*args, "--sysfs-root", str(self.root), *extra, env=env, check=False)
        if crash_at is None:
            assert res.returncode == 0, res.stderr
        print("AGENT", crash_at, res.returncode, res.stdout, res.stderr[-2000:])
        return res.returncode

    def devassign(self, *args: str) -> str:
        return cli(*args, env={"DEVASSIGN_URL": self.url}).stdout

    def device(self, address: str) -> dict[str, Any]:
        resp = httpx.get(f"{self.url}/v1/devices", params={"host": self.name})
        assert resp.status_code == 200, resp.text
        (found,) = [d for d in resp.json() if d["address"] == address]
        return found  # type: ignore[no-any-return]

    def driver(self, address: str) -> str | None:
        return Sysfs(self.root).link_name(f"bus/pci/devices/{address}/driver")

    def override(self, address: str) -> str | None:
        return Sysfs(self.root).read(f"bus/pci/devices/{address}/driver_override")

    def claim(self, consumer: str, count: int = 1) -> list[str]:
        body = {
            "consumer": consumer,
            "hosts": [self.name],
            "requests": [
                {
                    "name": "nic",
                    "type": TYPE,
                    "count": count,
                    "params": {"mac": "52:54:00:00:00:07", "vlan": 7} if count == 1 else {},
                }
            ],
        }
        resp = httpx.post(f"{self.url}/v1/claims", json=body)
        assert resp.status_code == 201, resp.text
        return [d["address"] for d in resp.json()["devices"]]

    def allocation_state(self, consumer: str) -> str:
        resp = httpx.get(f"{self.url}/v1/allocations/{consumer}")
        assert resp.status_code == 200, resp.text
        return str(resp.json()["state"])

    def release(self, consumer: str) -> None:
        assert httpx.delete(f"{self.url}/v1/allocations/{consumer}").status_code == 204


@pytest.fixture
def compute(tmp_path: Path, server: str) -> Host:
    name = f"lc-{next(_hosts)}"
    h = host(tmp_path, vfio=True)
    vfs = h.sriov_pf(PF, "8086", "1572", vfs=2, vf_device="154c", ifname="ens1f0", vf_iommu_group_start=30)
    conf = tmp_path / "agent.toml"
    conf.write_text(
        f'host = "{name}"\nserver = "{server}"\nstate_file = "state.json"\n'
        f'[[device]]\ntype = "{TYPE}"\nmatch = {{ vendor_id = "8086", product_id = "154c" }}\n'
    )
    c = Host(name, server, h.root, conf, vfs)
    c.agent()  # the first report
    return c


def test_claim_setup_release_cleanup_through_the_cli(compute: Host) -> None:
    consumer = str(uuid.uuid4())
    claimed = json.loads(
        compute.devassign(
            "claim",
            "--consumer",
            consumer,
            "--spec",
            f"hardware_resource:{TYPE}=1",
            "--host",
            compute.name,
            "-f",
            "json",
        )
    )
    (vf,) = [d["address"] for d in claimed["devices"]]
    assert compute.device(vf)["state"] == "reserved"
    compute.agent()
    assert compute.device(vf)["state"] == "assigned"
    assert compute.driver(vf) == "vfio-pci" and compute.override(vf) == "vfio-pci"
    xml = compute.devassign("libvirt-xml", "--consumer", consumer)
    assert "<hostdev" in xml and "vfio" in xml

    compute.devassign("release", "--consumer", consumer)
    assert compute.device(vf)["state"] == "cleaning"
    compute.agent()
    assert compute.device(vf)["state"] == "available"
    assert compute.driver(vf) == "iavf" and compute.override(vf) == "(null)"


def test_setup_failing_half_way_is_cleaned_and_available_again(compute: Host) -> None:
    consumer = str(uuid.uuid4())
    vfs = compute.claim(consumer, count=2)
    # The override is set and the host driver unbound, then probing fails: a half-done setup.
    compute.agent("--simulate-fail", "bus/pci/drivers_probe")
    assert {compute.device(v)["state"] for v in vfs} == {"cleaning"}
    events = httpx.get(f"{compute.url}/v1/events", params={"consumer": consumer}).json()
    assert any("setup failed" in e["message"] and "drivers_probe" in e["message"] for e in events)
    compute.agent()
    assert {compute.device(v)["state"] for v in vfs} == {"available"}
    assert [compute.driver(v) for v in vfs] == ["iavf", "iavf"]
    assert compute.allocation_state(consumer) == "released"


def test_cleanup_failure_quarantines_until_cleared(compute: Host) -> None:
    first = str(uuid.uuid4())
    (vf,) = compute.claim(first)
    compute.agent()
    compute.release(first)
    compute.agent("--simulate-fail", "bus/pci/devices/*/reset")
    shown = compute.device(vf)
    assert shown["state"] == "quarantined" and "reset" in shown["quarantine_reason"]
    assert compute.driver(vf) == "vfio-pci"  # dirty: nobody may get it
    (other,) = compute.claim(str(uuid.uuid4()))
    assert other != vf  # the quarantined one is never handed out

    compute.devassign("device", "clear", vf, "--host", compute.name, "--reason", "reseated")
    assert compute.device(vf)["state"] == "cleaning"
    compute.agent()
    assert compute.device(vf)["state"] == "available" and compute.driver(vf) == "iavf"


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_agent_killed_at_each_step_converges(compute: Host, point: str) -> None:
    consumer = str(uuid.uuid4())
    (vf,) = compute.claim(consumer)
    assert compute.agent(crash_at=f"{point}:setup") == -9
    assert compute.device(vf)["state"] == ("assigned" if point == "posted" else "reserved")
    compute.agent()
    assert compute.device(vf)["state"] == "assigned" and compute.driver(vf) == "vfio-pci"

    compute.release(consumer)
    assert compute.agent(crash_at=f"{point}:cleanup") == -9
    state = compute.device(vf)["state"]
    if point == "posted":
        assert state == "available" and compute.driver(vf) == "iavf"
    else:  # the cleanup may or may not have finished: never available before it is posted
        assert state == "cleaning"
    compute.agent()
    assert compute.device(vf)["state"] == "available"
    assert compute.driver(vf) == "iavf" and compute.override(vf) == "(null)"
    # No leak: nothing held, both VFs can be claimed at once.
    assert compute.allocation_state(consumer) == "released"
    assert sorted(compute.claim(str(uuid.uuid4()), count=2)) == sorted(compute.vfs)
