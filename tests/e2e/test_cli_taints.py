"""``devassign host drain/undrain``, ``device taint/untaint`` and ``taints`` against a real server."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.conftest import vf
from tests.e2e.servers import cli, running_server

pytestmark = pytest.mark.slow


def test_drain_and_undrain_a_host(db_url: str, tmp_path: Path) -> None:
    admin = cli("token", "create", "--role", "admin", "--db", db_url).stdout.strip()
    agent = cli("token", "create", "--role", "agent", "--host", "compute-1", "--db", db_url).stdout.strip()
    with running_server(db_url, log=tmp_path / "server.log") as url:
        env = {"DEVASSIGN_URL": url, "DEVASSIGN_TOKEN": admin}
        cli("type", "create", "NIC_VF_1G", env=env)
        report = {"generation": 1, "devices": [vf("0000:3b:02.1"), vf("0000:3b:02.2")]}
        r = httpx.put(
            f"{url}/v1/hosts/compute-1/inventory", json=report, headers={"Authorization": f"Bearer {agent}"}
        )
        assert r.status_code == 200, r.text
        cli("claim", "--consumer", "vm-1", "--spec", "hardware_resource:NIC_VF_1G=1", env=env)

        drained = cli(
            "host", "drain", "compute-1", "--reason", "rack move", "--expires-in", "2h", "-f", "json", env=env
        )
        taint = json.loads(drained.stdout)
        assert (taint["effect"], taint["reason"], taint["host"]) == ("Drain", "rack move", "compute-1")
        assert taint["expires_at"]

        refused = cli(
            "claim", "--consumer", "vm-2", "--spec", "hardware_resource:NIC_VF_1G=1", env=env, check=False
        )
        assert refused.returncode == 1, refused.stderr
        assert "Traceback" not in refused.stderr
        types = json.loads(cli("types", "-f", "json", env=env).stdout)
        counts = {t["name"]: t["counts"] for t in types}["NIC_VF_1G"]
        assert (counts["available"], counts["tainted"], counts["reserved"]) == (0, 1, 1)
        events = json.loads(cli("events", "--consumer", "vm-1", "-f", "json", env=env).stdout)
        assert any(e["action"] == "drain_requested" for e in events)
        listed = cli("taints", env=env).stdout
        assert "Drain" in listed and "rack move" in listed
        assert "tainted" in cli("types", env=env).stdout

        undrained = cli("host", "undrain", "compute-1", env=env)
        assert f"removed taint {taint['id']}" in undrained.stdout
        assert json.loads(cli("taints", "-f", "json", env=env).stdout) == []
        cli("claim", "--consumer", "vm-2", "--spec", "hardware_resource:NIC_VF_1G=1", env=env)
        again = cli("host", "undrain", "compute-1", env=env)
        assert again.returncode == 0 and "no taint" in again.stdout

        # A mistyped name is an error, never "no taint to remove" while the real one stays drained.
        cli("host", "drain", "compute-1", "--reason", "rack move", env=env)
        for args in (
            ("host", "undrain", "compute-l"),
            ("host", "untaint", "compute-l"),
            ("host", "untaint", "compute-1", "--parent", "0000:99:00.0"),
            ("device", "untaint", "no-such-device"),
        ):
            typo = cli(*args, env=env, check=False)
            assert typo.returncode == 1, (args, typo.stdout, typo.stderr)
            assert "no taint" not in typo.stdout and "Traceback" not in typo.stderr
        assert [t["effect"] for t in json.loads(cli("taints", "-f", "json", env=env).stdout)] == ["Drain"]


def test_device_taint_untaint_and_usage_errors(db_url: str, tmp_path: Path) -> None:
    admin = cli("token", "create", "--role", "admin", "--db", db_url).stdout.strip()
    agent = cli("token", "create", "--role", "agent", "--host", "compute-1", "--db", db_url).stdout.strip()
    with running_server(db_url, log=tmp_path / "server.log") as url:
        env = {"DEVASSIGN_URL": url, "DEVASSIGN_TOKEN": admin}
        cli("type", "create", "NIC_VF_1G", env=env)
        r = httpx.put(
            f"{url}/v1/hosts/compute-1/inventory",
            json={"generation": 1, "devices": [vf("0000:3b:02.1")]},
            headers={"Authorization": f"Bearer {agent}"},
        )
        assert r.status_code == 200, r.text
        device = json.loads(cli("devices", "-f", "json", env=env).stdout)[0]["id"]
        made = json.loads(
            cli(
                "device",
                "taint",
                device,
                "--effect",
                "NoSchedule",
                "--reason",
                "maintenance: PSU swap",
                "-f",
                "json",
                env=env,
            ).stdout
        )
        assert made["device_id"] == device
        explained = cli(
            "explain", "--spec", "hardware_resource:NIC_VF_1G=1", "--host", "compute-1", env=env, check=False
        )
        assert explained.returncode == 1
        assert "tainted NoSchedule (maintenance: PSU swap" in explained.stdout, explained.stdout

        bad = cli("device", "taint", device, "--effect", "Evict", "--reason", "x", env=env, check=False)
        assert bad.returncode == 2
        bad = cli(
            "device",
            "taint",
            device,
            "--effect",
            "Drain",
            "--reason",
            "x",
            "--expires-in",
            "soon",
            env=env,
            check=False,
        )
        assert bad.returncode == 2 and "--expires-in" in bad.stderr
        past = cli(
            "device",
            "taint",
            device,
            "--effect",
            "Drain",
            "--reason",
            "x",
            "--until",
            "2001-01-01T00:00:00Z",
            env=env,
            check=False,
        )
        assert past.returncode == 2 and "in the past" in past.stderr  # the server's 400: usage
        missing = cli(
            "device", "taint", "no-such-id", "--effect", "Drain", "--reason", "x", env=env, check=False
        )
        assert missing.returncode == 1 and "Traceback" not in missing.stderr

        removed = cli("device", "untaint", device, "--taint", str(made["id"]), env=env)
        assert f"removed taint {made['id']}" in removed.stdout
        assert cli("explain", "--spec", "hardware_resource:NIC_VF_1G=1", env=env).returncode == 0

        # By the address the devices table shows, as `device clear` takes it.
        by_address = ("0000:3b:02.1", "--host", "compute-1")
        cli("device", "taint", *by_address, "--effect", "NoSchedule", "--reason", "fan", env=env)
        shown = json.loads(cli("device", "show", *by_address, env=env).stdout)
        assert shown["id"] == device
        assert [t["reason"] for t in json.loads(cli("taints", "-f", "json", env=env).stdout)] == ["fan"]
        assert "removed taint" in cli("device", "untaint", "0000:3b:02.1", env=env).stdout
        elsewhere = cli("device", "show", "0000:3b:02.1", "--host", "compute-9", env=env, check=False)
        assert elsewhere.returncode == 1 and "no device '0000:3b:02.1' on compute-9" in elsewhere.stderr


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_an_agents_untaint_lifts_the_agents_taints_and_leaves_the_admins(db_url: str, tmp_path: Path) -> None:
    admin = cli("token", "create", "--role", "admin", "--db", db_url).stdout.strip()
    agent = cli("token", "create", "--role", "agent", "--host", "compute-1", "--db", db_url).stdout.strip()
    with running_server(db_url, log=tmp_path / "server.log") as url:
        env = {"DEVASSIGN_URL": url, "DEVASSIGN_TOKEN": admin}
        as_agent = {"DEVASSIGN_URL": url, "DEVASSIGN_TOKEN": agent}
        cli("type", "create", "NIC_VF_1G", env=env)
        report = {"generation": 1, "devices": [vf("0000:3b:02.1")]}
        r = httpx.put(
            f"{url}/v1/hosts/compute-1/inventory", json=report, headers={"Authorization": f"Bearer {agent}"}
        )
        assert r.status_code == 200, r.text
        (device,) = json.loads(cli("devices", "--host", "compute-1", "-f", "json", env=env).stdout)
        for who, reason in ((env, "admin says"), (as_agent, "agent says")):
            cli("device", "taint", device["id"], "--effect", "NoSchedule", "--reason", reason, env=who)
            cli("host", "taint", "compute-1", "--effect", "NoSchedule", "--reason", reason, env=who)

        for command in (("device", "untaint", device["id"]), ("host", "untaint", "compute-1")):
            out = cli(*command, env=as_agent, check=False)
            assert out.returncode == 0, out.stderr
            assert "agent says" in out.stdout and "admin says" not in out.stdout, out.stdout
            assert "not removed" in out.stderr and "an admin removes it" in out.stderr, out.stderr
        left = json.loads(cli("taints", "-f", "json", env=env).stdout)
        assert sorted(t["reason"] for t in left) == ["admin says", "admin says"], left
