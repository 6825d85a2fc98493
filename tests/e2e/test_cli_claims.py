"""Requests through the CLI against a real server: claim, explain, capacity, release, quotas."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.conftest import vf
from tests.e2e.servers import cli, running_server

pytestmark = pytest.mark.slow  # a real server and CLI processes


def test_claim_explain_capacity_release_through_the_cli(db_url: str, tmp_path: Path) -> None:
    with running_server(db_url, auth=False, log=tmp_path / "server.log") as url:
        env = {"DEVASSIGN_URL": url}
        cli("type", "create", "NIC_VF_1G", "--description", "1G VF", env=env)
        devices = [
            vf("0000:3b:02.1", numa_node=0),
            vf("0000:3b:02.2", numa_node=1),
            vf("0000:3b:02.3", numa_node=1),
        ]
        r = httpx.put(f"{url}/v1/hosts/compute-7/inventory", json={"generation": 1, "devices": devices})
        assert r.status_code == 200

        cap = json.loads(
            cli("capacity", "--spec", "hardware_resource:NIC_VF_1G=1", "-f", "json", env=env).stdout
        )
        assert cap["total"] == 3 and cap["per_host"] == {"compute-7": 3}

        request = tmp_path / "req.json"
        request.write_text(
            json.dumps(
                {
                    "requests": [{"name": "nic", "type": "NIC_VF_1G", "count": 3}],
                    "constraints": [{"requests": ["nic"], "match": "numa_node"}],
                }
            )
        )
        explained = cli("explain", "--request", str(request), "--host", "compute-7", env=env, check=False)
        assert explained.returncode == 1  # nothing fits: scripts branch on it
        assert "compute-7" in explained.stdout and "NUMA" in explained.stdout

        refused = cli("claim", "--consumer", "vm-0", "--request", str(request), env=env, check=False)
        assert refused.returncode == 1 and "cannot place" in refused.stdout and "compute-7" in refused.stdout

        made = json.loads(
            cli(
                "claim",
                "--consumer",
                "vm-1",
                "--spec",
                "hardware_resource:NIC_VF_1G=2",
                "-f",
                "json",
                env=env,
            ).stdout
        )
        assert made["host"] == "compute-7" and len(made["devices"]) == 2
        listed = json.loads(cli("allocations", "-f", "json", env=env).stdout)
        assert [a["consumer"] for a in listed] == ["vm-1"]
        xml = cli("libvirt-xml", "--consumer", "vm-1", env=env).stdout
        assert xml.count("<hostdev") == 2 and "vfio" in xml

        cli("quota", "set", "demo", "NIC_VF_1G", "0", env=env)
        over = cli(
            "claim",
            "--consumer",
            "vm-2",
            "--project",
            "demo",
            "--spec",
            "hardware_resource:NIC_VF_1G=1",
            env=env,
            check=False,
        )
        assert over.returncode == 1 and "[quota_exceeded]" in over.stderr

        cli("release", "--consumer", "vm-1", env=env)
        states = {d["state"] for d in json.loads(cli("devices", "-f", "json", env=env).stdout)}
        assert states == {"cleaning", "available"}
        assert cli("release", "--consumer", "vm-1", env=env).returncode == 0  # twice is harmless
        unknown = cli("release", "--consumer", "nobody", env=env, check=False)
        assert unknown.returncode == 1 and "[allocation_not_found]" in unknown.stderr
        nothing = cli("device", "clear", "0000:3b:02.1", env=env, check=False)
        assert nothing.returncode == 1 and "only quarantined, unhealthy or missing devices" in nothing.stderr
        usage = cli("claim", "--consumer", "vm-3", env=env, check=False)
        assert usage.returncode == 2 and "--spec" in usage.stderr
