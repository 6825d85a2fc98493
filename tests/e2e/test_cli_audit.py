"""``devassign audit`` as an operator runs it against a real server: clean, damaged, repaired."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from devassign.store.schema import inventory
from tests.conftest import vf
from tests.e2e.servers import cli, running_server

pytestmark = pytest.mark.slow


def test_audit_finds_repairs_and_exits_as_documented(db_url: str, tmp_path: Path) -> None:
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

        clean = cli("audit", env=env)
        assert clean.returncode == 0 and "no inconsistency found" in clean.stdout

        engine = sa.create_engine(db_url)
        with engine.begin() as c:  # damage the counts behind the server's back
            c.execute(inventory.update().values(available=0))
        engine.dispose()
        found = cli("audit", env=env, check=False)
        assert found.returncode == 1, found.stderr
        assert "counts_mismatch" in found.stdout and "--fix" in found.stdout
        assert "Traceback" not in found.stderr

        fixed = cli("audit", "--fix", "-f", "json", env=env)
        assert [f["repaired"] for f in json.loads(fixed.stdout)["findings"]] == [True]
        assert cli("audit", env=env).returncode == 0
        events = json.loads(cli("events", "-f", "json", env=env).stdout)
        assert any(e["action"] == "audit_repaired" for e in events)

        member = cli("token", "create", "--role", "member", "--project", "p", "--db", db_url).stdout.strip()
        refused = cli("audit", env={**env, "DEVASSIGN_TOKEN": member}, check=False)
        assert refused.returncode == 4 and "admin" in refused.stderr
