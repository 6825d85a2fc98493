"""Moves through the CLI against a real server: start, show, commit, abort, a refusal."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.conftest import vf
from tests.e2e.servers import cli, running_server

pytestmark = pytest.mark.slow  # a real server and CLI processes


def test_move_start_show_commit_abort_through_the_cli(db_url: str, tmp_path: Path) -> None:
    with running_server(db_url, auth=False, log=tmp_path / "server.log") as url:
        env = {"DEVASSIGN_URL": url}
        cli("type", "create", "NIC_VF_1G", env=env)
        for host, n in (("src", 3), ("dst", 3), ("small", 1)):
            devices = [vf(f"0000:3b:02.{i}") for i in range(n)]
            r = httpx.put(f"{url}/v1/hosts/{host}/inventory", json={"generation": 1, "devices": devices})
            assert r.status_code == 200
        for vm, n in (("vm-1", 1), ("vm-2", 2)):
            cli(
                "claim",
                "--consumer",
                vm,
                "--spec",
                f"hardware_resource:NIC_VF_1G={n}",
                "--host",
                "src",
                env=env,
            )

        started = cli("move", "start", "vm-1", "--to", "dst", env=env)
        assert "src -> dst, pending" in started.stdout and "0000:3b:02." in started.stdout
        shown = json.loads(cli("move", "show", "vm-1", "-f", "json", env=env).stdout)
        assert shown["state"] == "pending" and len(shown["device_map"]) == 1
        again = cli("move", "start", "vm-1", "--to", "dst", env=env, check=False)
        assert again.returncode != 0 and "already moving to dst" in again.stderr
        # The destination's XML names the target device's address, not the source's.
        target = shown["device_map"][0]
        xml = cli("move", "xml", "vm-1", env=env).stdout
        slot, function = target["target_address"].rsplit(":", 1)[1].split(".")
        assert f'slot="0x{slot}" function="0x{function}"' in xml, xml
        assert "<hostdev" in xml or "<interface" in xml
        early = cli("move", "commit", "vm-1", env=env, check=False)
        assert early.returncode == 1 and "not all set up yet (1 reserved)" in early.stderr, early
        # The agent on dst sets the target device up; then the commit goes through.
        setup = [{"device_id": p["target_id"], "action": "setup", "ok": True} for p in shown["device_map"]]
        assert httpx.post(f"{url}/v1/hosts/dst/work", json={"results": setup}).status_code == 200
        committed = cli("move", "commit", "vm-1", env=env)
        assert "committed" in committed.stdout
        listed = json.loads(cli("allocations", "-f", "json", env=env).stdout)
        assert {a["consumer"]: a["host"] for a in listed} == {"vm-1": "dst", "vm-2": "src"}

        refused = cli("move", "start", "vm-2", "--to", "small", env=env, check=False)
        assert refused.returncode == 1, refused
        assert "small cannot hold vm-2" in refused.stdout + refused.stderr
        cli("move", "start", "vm-2", "--to", "dst", env=env)
        aborted = cli("move", "abort", "vm-2", env=env)
        assert "aborted" in aborted.stdout
        none_pending = cli("move", "xml", "vm-2", env=env, check=False)
        assert none_pending.returncode == 1 and "no pending move" in none_pending.stderr, none_pending
        assert "Traceback" not in none_pending.stderr
        never = cli("move", "show", "vm-3", env=env, check=False)
        assert never.returncode != 0 and "Traceback" not in never.stderr
