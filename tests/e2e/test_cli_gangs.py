"""Gangs through the CLI against a real server: claim, refusal, explain, release."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.e2e.servers import cli, running_server

pytestmark = pytest.mark.slow  # a real server and CLI processes


def _gpus(n: int) -> list[dict[str, object]]:
    return [
        {"address": f"0000:{0x10 + i:02x}:00.0", "kind": "pci", "type": "GPU", "iommu_group": 100 + i}
        for i in range(n)
    ]


def test_gang_claim_refusal_explain_and_release(tmp_path: Path) -> None:
    with running_server(
        f"sqlite:///{tmp_path / 'db.sqlite'}", auth=False, log=tmp_path / "server.log"
    ) as url:
        env = {"DEVASSIGN_URL": url}
        cli("type", "create", "GPU", env=env)
        for host in ("a", "b", "c"):
            r = httpx.put(f"{url}/v1/hosts/{host}/inventory", json={"generation": 1, "devices": _gpus(8)})
            assert r.status_code == 200, r.text

        spec = ("--spec", "hardware_resource:GPU=8")
        refused = cli("gang", "claim", *spec, "--instances", "4", env=env, check=False)
        assert refused.returncode == 1
        assert "3 of 4 instances fit" in refused.stderr + refused.stdout
        assert "Traceback" not in refused.stderr

        explained = cli("gang", "explain", *spec, "--instances", "3", "--distinct-hosts", env=env)
        assert "3 of 3 instances fit on 3 hosts" in explained.stdout

        made = cli("gang", "claim", *spec, "--instances", "2", "--gang", "job-1", env=env)
        assert "gang job-1: 2 instances on 2 hosts" in made.stdout
        held = json.loads(cli("allocations", "-f", "json", env=env).stdout)
        names = sorted(a["consumer"] for a in held)
        assert len(names) == 2 and names[0][:-1] == names[1][:-1] and names[0].startswith("job-1-"), names
        assert [n[-2:] for n in names] == ["-0", "-1"], names

        cli("gang", "release", "job-1", env=env)
        assert json.loads(cli("allocations", "-f", "json", env=env).stdout) == []
        gone = cli("gang", "release", "job-1", env=env, check=False)
        assert gone.returncode != 0 and "no live allocations of gang" in gone.stderr + gone.stdout
