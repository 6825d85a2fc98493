"""A new user's first flow, with real processes: server, token, type, report, listings."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.conftest import vf
from tests.e2e.servers import cli, running_server

pytestmark = pytest.mark.slow  # a real server and CLI processes


def test_first_use_through_the_cli(db_url: str, tmp_path: Path) -> None:
    admin = cli("token", "create", "--role", "admin", "--db", db_url).stdout.strip()
    agent = cli("token", "create", "--role", "agent", "--host", "compute-1", "--db", db_url).stdout.strip()
    assert admin.startswith("da_") and agent.startswith("da_")
    with running_server(db_url, log=tmp_path / "server.log") as url:
        env = {"DEVASSIGN_URL": url, "DEVASSIGN_TOKEN": admin}
        cli("type", "create", "NIC_VF_1G", "--description", "1G VF of an X710", env=env)
        report = {
            "generation": 1,
            "host_id": "h-1",
            "devices": [vf("0000:3b:02.1"), vf("0000:3b:02.2"), vf("0000:3b:02.3", type="UNKNOWN")],
        }
        r = httpx.put(
            f"{url}/v1/hosts/compute-1/inventory", json=report, headers={"Authorization": f"Bearer {agent}"}
        )
        assert r.status_code == 200 and [x["code"] for x in r.json()["refused"]] == ["unknown_type"]

        types = json.loads(cli("types", "-f", "json", env=env).stdout)
        assert [(t["name"], t["description"], t["counts"]["available"]) for t in types] == [
            ("NIC_VF_1G", "1G VF of an X710", 2)
        ]
        # The table's columns at the top of each type too, as the table names them.
        assert [
            (t["total"], t["available"], t["reserved"], t["assigned"], t["unhealthy"]) for t in types
        ] == [(2, 2, 0, 0, 0)]
        table = cli("types", env=env).stdout
        assert "NIC_VF_1G" in table and "1G VF of an X710" in table
        devices = json.loads(cli("devices", "--host", "compute-1", "-f", "json", env=env).stdout)
        assert [d["address"] for d in devices] == ["0000:3b:02.1", "0000:3b:02.2"]
        hosts = json.loads(cli("hosts", "-f", "json", env=env).stdout)
        assert [(h["name"], h["status"]) for h in hosts] == [("compute-1", "up")]
        events = json.loads(cli("events", "-f", "json", env=env).stdout)
        assert {"type_created", "host_registered", "device_added", "device_refused"} <= {
            e["action"] for e in events
        }


def test_cli_errors_are_one_line_not_tracebacks(db_url: str, tmp_path: Path) -> None:
    with running_server(db_url, auth=False, log=tmp_path / "server.log") as url:
        env = {"DEVASSIGN_URL": url}
        bad = cli("type", "create", "bad name", env=env, check=False)
        assert bad.returncode == 2  # the server's 400: the command line is wrong
        assert "letters, digits and _" in bad.stderr and "Traceback" not in bad.stderr
        missing = cli("type", "show", "NOPE", env=env, check=False)
        assert missing.returncode == 1 and "[type_not_found]" in missing.stderr
    down = cli("types", env={"DEVASSIGN_URL": "http://127.0.0.1:9"}, check=False)
    assert down.returncode == 3 and "cannot reach the devassign server" in down.stderr
    usage = cli("token", "create", "--role", "agent", "--db", db_url, check=False)
    assert usage.returncode == 2 and "bound to one host" in usage.stderr


def test_tokens_are_listed_without_secrets_and_revoked_through_the_cli(db_url: str, tmp_path: Path) -> None:
    admin = cli("token", "create", "--role", "admin", "--name", "ops", "--db", db_url).stdout.strip()
    with running_server(db_url, log=tmp_path / "server.log") as url:
        env = {"DEVASSIGN_URL": url, "DEVASSIGN_TOKEN": admin}
        member = cli(
            "token", "create", "--role", "member", "--project", "p1", "--name", "alice", "--via-api", env=env
        ).stdout.strip()
        as_member = {"Authorization": f"Bearer {member}"}
        assert httpx.get(f"{url}/v1/resource-types", headers=as_member).status_code == 200

        listed = json.loads(cli("token", "list", "-f", "json", env=env).stdout)
        assert [(t["name"], t["role"], t["project"], t["revoked_at"]) for t in listed] == [
            ("ops", "admin", None, None),
            ("alice", "member", "p1", None),
        ]
        assert member not in json.dumps(listed) and admin not in json.dumps(listed)
        alice = next(t["id"] for t in listed if t["name"] == "alice")

        out = cli("token", "revoke", str(alice), env=env).stdout
        assert f"revoked token {alice} (alice)" in out
        refused = httpx.get(f"{url}/v1/resource-types", headers=as_member)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthenticated"
        assert [t["name"] for t in json.loads(cli("token", "list", "-f", "json", env=env).stdout)] == ["ops"]
        everyone = json.loads(cli("token", "list", "--revoked", "-f", "json", env=env).stdout)
        assert [(t["name"], t["revoked_at"] is not None) for t in everyone] == [
            ("ops", False),
            ("alice", True),
        ]
        cli("token", "revoke", str(alice), env=env)  # twice: harmless
        unknown = cli("token", "revoke", "999999", env=env, check=False)
        assert unknown.returncode == 1 and "[token_not_found]" in unknown.stderr
        events = json.loads(cli("events", "-f", "json", env=env).stdout)
        assert [e["action"] for e in events].count("token_revoked") == 1
