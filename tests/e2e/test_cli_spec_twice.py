"""A type given twice is refused (give the total), by every command: repeated ``--spec`` options,
or a ``--spec`` whose type the ``--request`` file already names. Folded into a dict, the last
count alone was kept: ``--spec T=1 --spec T=1`` claimed one device and exited 0."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.conftest import vf
from tests.e2e.servers import cli, running_server

pytestmark = pytest.mark.slow


def test_a_type_given_twice_on_the_command_line_is_refused_by_every_command(tmp_path: Path) -> None:
    with running_server(f"sqlite:///{tmp_path / 'd.db'}", auth=False, log=tmp_path / "server.log") as url:
        env = {"DEVASSIGN_URL": url}
        cli("type", "create", "NIC_VF_1G", env=env)
        devices = [vf(f"0000:3b:02.{i}") for i in range(4)]
        r = httpx.put(f"{url}/v1/hosts/compute-7/inventory", json={"generation": 1, "devices": devices})
        assert r.status_code == 200
        twice = ["--spec", "hardware_resource:NIC_VF_1G=1", "--spec", "hardware_resource:NIC_VF_1G=1"]

        capacity = cli("capacity", *twice, env=env, check=False)
        assert capacity.returncode == 2 and "given twice" in capacity.stderr, capacity.stderr

        claimed = cli("claim", "--consumer", "vm-1", *twice, "-f", "json", env=env, check=False)
        held = httpx.get(f"{url}/v1/allocations").json()
        assert claimed.returncode == 2 and "given twice" in claimed.stderr, (
            claimed.returncode,
            [len(a["devices"]) for a in held],
        )
        assert held == []

        explained = cli("explain", *twice, env=env, check=False)
        assert explained.returncode == 2 and "given twice" in explained.stderr, (
            explained.returncode,
            explained.stdout[-300:],
        )


def test_a_spec_is_added_to_the_request_file_not_silently_replacing_its_count(tmp_path: Path) -> None:
    with running_server(f"sqlite:///{tmp_path / 'd.db'}", auth=False, log=tmp_path / "server.log") as url:
        env = {"DEVASSIGN_URL": url}
        cli("type", "create", "NIC_VF_1G", env=env)
        devices = [vf(f"0000:3b:02.{i}") for i in range(4)]
        assert (
            httpx.put(
                f"{url}/v1/hosts/compute-7/inventory", json={"generation": 1, "devices": devices}
            ).status_code
            == 200
        )
        request = tmp_path / "req.json"
        request.write_text(json.dumps({"extra_specs": {"hardware_resource:NIC_VF_1G": "3"}}))
        result = cli(
            "claim",
            "--consumer",
            "vm-1",
            "--request",
            str(request),
            "--spec",
            "hardware_resource:NIC_VF_1G=1",
            env=env,
            check=False,
        )
        held = httpx.get(f"{url}/v1/allocations").json()
        assert result.returncode == 2, (result.returncode, [len(a["devices"]) for a in held])
        assert f"given twice (in {request} and on the command line)" in result.stderr, result.stderr
        assert held == []
