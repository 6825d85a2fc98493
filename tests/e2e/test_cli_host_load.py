"""``devassign host load`` against a real server: a fleet's reports in batches, refusals listed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.servers import cli, running_server

pytestmark = pytest.mark.slow  # a real server and CLI processes


def _report(n: int, type: str = "GPU") -> dict[str, object]:
    devices = [{"address": f"0000:{0x10 + i:02x}:00.0", "kind": "pci", "type": type} for i in range(n)]
    return {"generation": 1, "devices": devices}


def test_host_load_sends_batches_and_lists_what_was_refused(tmp_path: Path) -> None:
    with running_server(
        f"sqlite:///{tmp_path / 'db.sqlite'}", auth=False, log=tmp_path / "server.log"
    ) as url:
        env = {"DEVASSIGN_URL": url}
        cli("type", "create", "GPU", env=env)
        fleet = tmp_path / "fleet.jsonl"
        items = [{"host": f"rack7-{i:03d}", "report": _report(4)} for i in range(25)]
        items.append({"host": "odd-1", "report": _report(2, type="FPGA")})
        fleet.write_text("".join(json.dumps(i) + "\n" for i in items))
        done = cli("host", "load", str(fleet), "--batch", "10", env=env)
        assert "26 hosts applied, 0 refused, of 26" in done.stdout
        assert "odd-1: 2 device(s) refused" in done.stderr and "unknown resource type" in done.stderr
        hosts = json.loads(cli("hosts", "--all", "-f", "json", env=env).stdout)
        assert len(hosts) == 26
        types = json.loads(cli("types", "-f", "json", env=env).stdout)
        assert [t["counts"]["available"] for t in types if t["name"] == "GPU"] == [100]

        # The devices a page at a time: the hint names the next page, --all reads them all.
        first = cli("devices", "--limit", "50", "-f", "json", env=env)
        assert len(json.loads(first.stdout)) == 50
        assert "more devices follow: `devassign devices --after rack7-012/0000:11:00.0`" in first.stderr
        nxt = json.loads(
            cli("devices", "--after", "rack7-012/0000:11:00.0", "--limit", "2", "-f", "json", env=env).stdout
        )
        assert [(d["host"], d["address"]) for d in nxt] == [
            ("rack7-012", "0000:12:00.0"),
            ("rack7-012", "0000:13:00.0"),
        ]
        assert len(json.loads(cli("devices", "--all", "-f", "json", env=env).stdout)) == 100

        # An older generation of one host is that host's refusal only; the exit status says so.
        stale = tmp_path / "stale.json"
        again = [
            {"host": "rack7-000", "report": {**_report(4), "generation": 0}},
            {"host": "new-1", "report": _report(1)},
        ]
        stale.write_text(json.dumps(again))
        refused = cli("host", "load", str(stale), env=env, check=False)
        assert refused.returncode == 1, refused.stderr
        assert "1 hosts applied, 1 refused, of 2" in refused.stdout
        assert "rack7-000: stale_generation" in refused.stderr

        bad = tmp_path / "bad.json"
        bad.write_text('{"host": "x"')
        wrong = cli("host", "load", str(bad), env=env, check=False)
        assert wrong.returncode == 2 and "not JSON" in wrong.stderr and "Traceback" not in wrong.stderr
