"""``devassign hosts`` pages by default: the first ``--limit`` hosts by name, a line on stderr
saying how to get the next ones, ``--after`` for them, ``--all`` for every host."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.conftest import vf
from tests.e2e.servers import cli, running_server

pytestmark = pytest.mark.slow  # a real server and CLI processes

NAMES = [f"compute-{i}" for i in range(5)]


def test_hosts_pages_by_name_and_says_how_to_get_more(db_url: str, tmp_path: Path) -> None:
    with running_server(db_url, auth=False, log=tmp_path / "server.log") as url:
        env = {"DEVASSIGN_URL": url}
        cli("type", "create", "NIC_VF_1G", env=env)
        for name in reversed(NAMES):
            body = {"generation": 1, "devices": [vf("0000:3b:02.1")]}
            assert httpx.put(f"{url}/v1/hosts/{name}/inventory", json=body).status_code == 200

        first = cli("hosts", "--limit", "2", "-f", "json", env=env)
        assert [h["name"] for h in json.loads(first.stdout)] == NAMES[:2]
        assert "devassign hosts --after compute-1" in first.stderr and "--all" in first.stderr

        second = cli("hosts", "--limit", "2", "--after", "compute-1", "-f", "json", env=env)
        assert [h["name"] for h in json.loads(second.stdout)] == NAMES[2:4]

        last = cli("hosts", "--limit", "2", "--after", "compute-3", env=env)
        assert "compute-4" in last.stdout and "compute-3" not in last.stdout
        assert last.stderr == ""  # nothing follows the last page

        every = cli("hosts", "--all", "-f", "json", env=env)
        assert [h["name"] for h in json.loads(every.stdout)] == NAMES and every.stderr == ""
        default = cli("hosts", "-f", "json", env=env)  # fewer than a page: all, nothing to add
        assert [h["name"] for h in json.loads(default.stdout)] == NAMES and default.stderr == ""

        bad = cli("hosts", "--limit", "0", env=env, check=False)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr


class _Pages:
    """A stand-in for the client: ``GET /v1/hosts`` over a sorted list of names."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.calls: list[dict[str, object]] = []

    def get(self, path: str, **params: object) -> list[dict[str, str]]:
        assert path == "/v1/hosts"
        self.calls.append(params)
        after, limit = params.get("after"), int(str(params["limit"]))
        rest = [n for n in self.names if after is None or n > str(after)]
        return [{"name": n} for n in rest[:limit]]


def test_all_reads_page_after_page_until_a_short_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from devassign.cli import inventory

    monkeypatch.setattr(inventory, "HOSTS_PAGE_MAX", 2)
    api = _Pages([f"h{i}" for i in range(5)])
    assert [h["name"] for h in inventory.all_hosts(api)] == ["h0", "h1", "h2", "h3", "h4"]  # type: ignore[arg-type]
    assert [c["after"] for c in api.calls] == [None, "h1", "h3"]
    api = _Pages(["h0", "h1"])  # an exact page: one more read finds nothing
    assert len(inventory.all_hosts(api)) == 2  # type: ignore[arg-type]
    assert [c["after"] for c in api.calls] == [None, "h1"]
