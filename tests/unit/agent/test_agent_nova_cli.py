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
    # ... and, as Nova does when 0000:3b:00.0 is a PF, its VFs, under the alias naming VFs
    assert rules[2] == {
        "type": "nic_vf",
        "match": {"parent": "0000:3b:00.0", "vendor_id": "8086", "product_id": "154c", "kind": "sriov_vf"},
    }
    assert rules[3]["type"] == "a100" and rules[3]["match"]["kind"] == "pci"
    assert len(rules) == 4
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


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("nova.conf", b"\xff\xfe[pci]\n", "not UTF-8 text"),
        ("deep.json", b"[" * 100_000 + b"]" * 100_000, "nested too deep"),
        ("nova.conf", b"[pci]\ndevice_spec = " + b"[" * 100_000 + b"]" * 100_000 + b"\n", "is not JSON"),
    ],
)
def test_import_nova_of_a_file_it_cannot_read_is_a_clear_error(
    tmp_path: Path, name: str, content: bytes, says: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    res = runner.invoke(app, ["import-nova", str(path)])
    assert res.exit_code == 2, res.output
    assert says in res.output and "unexpected" not in res.output, res.output


PF_ALIAS = '{"vendor_id": "8086", "product_id": "1889", "device_type": "type-VF", "name": "vf"}'


@pytest.mark.parametrize(
    "address",
    [
        '"0000:5e:00.0"',
        '"0:5E:0.0"',  # Nova pads the fields
        '{"domain": "0000", "bus": "5e", "slot": "00", "function": "0"}',
    ],
)
def test_import_nova_pf_address_takes_its_vfs(tmp_path: Path, address: str) -> None:
    """A spec naming a PF by its one address takes that PF's VFs in Nova (the spec's address is
    matched against a VF's parent): the VFs are offered under the alias that names their ids,
    with the spec's physical_network."""
    nova = tmp_path / "nova.conf"
    nova.write_text(
        f'[pci]\ndevice_spec = {{"address": {address}, "physical_network": "physnet3"}}\nalias = {PF_ALIAS}\n'
    )
    text = import_nova(nova)
    rules = tomllib.loads(text)["device"]
    assert {
        "type": "vf",
        "match": {"parent": "0000:5e:00.0", "vendor_id": "8086", "product_id": "1889", "kind": "sriov_vf"},
        "attributes": {"physical_network": "physnet3"},
    } in rules
    assert "# NOTE: address 0000:5e:00.0: if it is an SR-IOV PF" in text  # the PF itself: said

    h = host(tmp_path / "h")
    h.pci("0000:3b:00.0", "10de", "20b5", cls="030200", iommu_group=10, driver="nvidia")
    vfs = h.sriov_pf(
        "0000:5e:00.0", "8086", "159b", vfs=4, vf_device="1889", iommu_group=20, vf_iommu_group_start=30
    )
    h.sriov_pf(
        "0000:5f:00.0", "8086", "159b", vfs=2, vf_device="1889", iommu_group=21, vf_iommu_group_start=40
    )  # another PF's VFs: not in the spec
    conf = tmp_path / "agent.toml"
    conf.write_text('host = "h1"\n' + text)
    res = runner.invoke(app, ["discover", "--config", str(conf), "--sysfs-root", str(h.root), "-f", "json"])
    assert res.exit_code == 0, res.output
    offered = {d["address"]: d for d in json.loads(res.stdout) if d["offered"]}
    assert sorted(offered) == vfs
    assert {d["type"] for d in offered.values()} == {"vf"}
    assert all(d["attributes"]["physical_network"] == "physnet3" for d in offered.values())


def test_import_nova_pf_address_without_an_alias_for_its_vfs(tmp_path: Path) -> None:
    nova = tmp_path / "nova.conf"
    nova.write_text('[pci]\ndevice_spec = {"address": "0000:5e:00.0", "physical_network": "physnet3"}\n')
    text = import_nova(nova)
    rules = tomllib.loads(text)["device"]
    assert rules[1] == {
        "type": "PCI_VF_0000_5E_00_0",
        "match": {"parent": "0000:5e:00.0", "kind": "sriov_vf"},
        "attributes": {"physical_network": "physnet3"},
    }
    assert "no alias names its VFs" in text and "type PCI_ANY_ANY, rename it" in text

    # a PF whose VFs are disabled is offered by the rule on its own address
    h = host(tmp_path / "h")
    h.sriov_pf("0000:5e:00.0", "8086", "159b", vfs=0, iommu_group=20)
    conf = tmp_path / "agent.toml"
    conf.write_text('host = "h1"\n' + text)
    res = runner.invoke(app, ["discover", "--config", str(conf), "--sysfs-root", str(h.root), "-f", "json"])
    assert res.exit_code == 0, res.output
    assert [(d["address"], d["type"]) for d in json.loads(res.stdout) if d["offered"]] == [
        ("0000:5e:00.0", "PCI_ANY_ANY")
    ]


@pytest.mark.parametrize(
    ("address", "glob"), [('"0000:5e:00.*"', "0000:5e:00.*"), ('":5e:00."', "*:5e:00.*")]
)
def test_import_nova_glob_address_matches_own_addresses_and_says_so(
    tmp_path: Path, address: str, glob: str
) -> None:
    """Nova matches a VF by its PF's address only for a spec naming one function: a glob is
    matched against each function's own address (nova.pci.devspec.WhitelistPciAddress)."""
    nova = tmp_path / "nova.conf"
    nova.write_text(f'[pci]\ndevice_spec = {{"address": {address}}}\nalias = {PF_ALIAS}\n')
    text = import_nova(nova)
    assert tomllib.loads(text)["device"] == [
        {"type": "PCI_ANY_ANY", "match": {"address": glob}, "match_vfs": True}
    ]
    assert f"add a rule with match.parent = '{glob}'" in text


def test_import_nova_address_nova_refuses_is_a_note(tmp_path: Path) -> None:
    nova = tmp_path / "nova.conf"
    nova.write_text('[pci]\ndevice_spec = {"address": "0000:5e:00.9", "vendor_id": "8086"}\n')
    text = import_nova(nova)
    assert "not a PCI address Nova accepts" in text
    assert tomllib.loads(text)["device"] == [
        {"type": "PCI_8086_ANY", "match": {"vendor_id": "8086"}, "match_vfs": True}
    ]


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


def test_import_nova_an_alias_of_a_resource_class_names_only_its_specs(tmp_path: Path) -> None:
    """With PCI in Placement, Nova takes an alias that names only a ``resource_class``: it
    means the specs of that class. It must not become the type of every other spec (it has no
    ids, so it contradicts none of them)."""
    path = tmp_path / "nova.conf"
    path.write_text(
        """
[pci]
device_spec = {"vendor_id": "8086", "product_id": "154c", "physical_network": "physnet1"}
device_spec = {"vendor_id": "15b3", "product_id": "101e", "remote_managed": "true"}
device_spec = {"address": "0000:3b:00.0"}
device_spec = {"vendor_id": "10de", "product_id": "2330", "resource_class": "CUSTOM_H100"}
alias = [{"name": "h100", "resource_class": "CUSTOM_H100"}]
"""
    )
    rules = tomllib.loads(import_nova(path))["device"]
    by_ids = {(r["match"].get("vendor_id"), r["match"].get("product_id")): r["type"] for r in rules}
    assert by_ids[("10de", "2330")] == "H100"
    assert by_ids[("8086", "154c")] == "PCI_8086_154C"
    assert by_ids[("15b3", "101e")] == "PCI_15B3_101E"
    assert "h100" not in {r["type"] for r in rules}
