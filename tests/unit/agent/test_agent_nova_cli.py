"""``agent import-nova`` and the agent's command line (typer's runner, no server)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from devassign.agent.cli import app
from devassign.agent.config import parse_config
from devassign.agent.nova import import_nova
from devassign.agent.worker import Agent
from tests.fixtures.sysfs import host

NOVA_CONF = """
[DEFAULT]
debug = True

[pci]
device_spec = { "vendor_id": "8086", "product_id": "154c", "physical_network": "physnet1" }
device_spec = [{"address": "0000:3b:00.0"},
    {"vendor_id": "10de", "product_id": "1eb8"}]
passthrough_whitelist = {"address": {"domain": "0000", "bus": "8[0-9]", "slot": "*", "function": "*"}}
alias = { "name": "a100", "vendor_id": "10de", "product_id": "1eb8", "device_type": "type-PCI" }
alias = { "name": "nic-vf", "vendor_id": "8086", "product_id": "154c", "device_type": "type-VF" }
"""


def test_import_nova_conf(tmp_path: Path) -> None:
    path = tmp_path / "nova.conf"
    path.write_text(NOVA_CONF)
    text = import_nova(path)
    rules = tomllib.loads(text)["device"]
    assert rules[0] == {
        "type": "nic_vf",
        "match": {"vendor_id": "8086", "product_id": "154c", "kind": "sriov_vf"},
        "attributes": {"physical_network": "physnet1"},
    }
    # Nova's spec without a device type takes a VF as well as a PF: so does the rule.
    assert rules[1] == {"type": "PCI_ANY_ANY", "match": {"address": "0000:3b:00.0"}, "match_vfs": True}
    assert rules[2]["type"] == "a100" and rules[2]["match"]["kind"] == "pci"
    assert len(rules) == 3
    assert "regular expression" in text  # the regex address is reported, not guessed
    parse_config(tomllib.loads(text))  # what it prints is a valid agent config


def test_import_nova_json(tmp_path: Path) -> None:
    path = tmp_path / "pci.json"
    path.write_text(json.dumps({"device_spec": [{"vendor_id": "15b3", "product_id": "101e"}], "alias": []}))
    rules = tomllib.loads(import_nova(path))["device"]
    assert rules == [
        {"type": "PCI_15B3_101E", "match": {"vendor_id": "15b3", "product_id": "101e"}, "match_vfs": True}
    ]


runner = CliRunner()


def test_cli_discover_json(tmp_path: Path) -> None:
    h = host(tmp_path)
    h.sriov_pf("0000:5e:00.0", "8086", "1572", vfs=2, vf_device="154c", vf_iommu_group_start=3)
    conf = tmp_path / "agent.toml"
    conf.write_text('host = "h1"\n[[device]]\ntype = "NIC_VF"\nmatch = { product_id = "154c" }\n')
    res = runner.invoke(app, ["discover", "--config", str(conf), "--sysfs-root", str(h.root), "-f", "json"])
    assert res.exit_code == 0, res.output
    devices = json.loads(res.stdout)
    assert [(d["kind"], d["type"]) for d in devices] == [
        ("sriov_pf", None),
        ("sriov_vf", "NIC_VF"),
        ("sriov_vf", "NIC_VF"),
    ]
    assert devices[1]["parent"] == "0000:5e:00.0" and devices[1]["iommu_group"] == 3


def test_cli_discover_table(tmp_path: Path) -> None:
    h = host(tmp_path)
    h.pci("0000:3b:00.0", "10de", "1eb8")
    res = runner.invoke(app, ["discover", "--sysfs-root", str(h.root)])
    assert res.exit_code == 0 and "0000:3b:00.0" in res.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["discover", "--sysfs-root", "/nonexistent/sys"],
        ["discover", "--config", "/nonexistent/agent.toml"],
        ["import-nova", "/nonexistent/nova.conf"],
    ],
)
def test_cli_errors_are_one_line_and_exit_2(args: list[str]) -> None:
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    assert res.stderr.startswith("error: ") and "Traceback" not in res.output


def test_cli_bad_config_names_the_rule(tmp_path: Path) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text('[[device]]\ntype = "X"\nmatch = { vendorid = "8086" }\n')
    res = runner.invoke(app, ["discover", "--config", str(conf)])
    assert res.exit_code == 2 and "[[device]] #1 (type X)" in res.stderr


def test_cli_run_once_against_unreachable_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = host(tmp_path)
    conf = tmp_path / "agent.toml"
    conf.write_text(f'host = "h1"\nserver = "http://127.0.0.1:9"\nstate_file = "{tmp_path / "st.json"}"\n')

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    original = Agent.__init__

    def patched(self: Agent, config: Any, root: Any, ops: Any, *a: object, **kw: Any) -> None:
        client = httpx.Client(transport=httpx.MockTransport(refuse))
        original(self, config, root, ops, client, sleep=lambda s: None, **kw)

    monkeypatch.setattr(Agent, "__init__", patched)
    res = runner.invoke(app, ["run", "--config", str(conf), "--sysfs-root", str(h.root), "--once"])
    assert res.exit_code == 3 and "connection refused" in res.stderr  # unreachable
