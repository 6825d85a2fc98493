"""What a configuration may declare is checked when it is loaded, not when a report fails."""

from __future__ import annotations

import datetime
import random
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from devassign.agent import cli
from devassign.agent.config import MAX_CONFIG_ATTRIBUTES, ConfigError, parse_config
from devassign.agent.inventory import build_inventory
from devassign.agent.reporter import Reporter, ReportRefused
from devassign.agent.worker import Agent
from devassign.hostio import Sysfs
from devassign.schemas import MAX_ATTRIBUTES, MAX_DEVICES_PER_REPORT, ReportedDevice
from tests.fixtures.sysfs import host
from tests.unit.agent.test_agent_reporter import DEVICE, FakeServer, FakeTime

runner = CliRunner()


def _resource(**table: Any) -> dict[str, Any]:
    return {"host": "h1", "resource": [{"type": "LICENSE", **table}]}


@pytest.mark.parametrize(
    "value",
    [datetime.date(2027, 1, 1), float("nan"), float("inf"), [{"a": 1}], [[1]], "a\x00b", 2**70],
)
def test_an_attribute_must_be_a_plain_value(value: Any) -> None:
    with pytest.raises(ConfigError, match="attribute 'x' must be text"):
        parse_config(_resource(attributes={"x": value}))
    rule = {"type": "NIC", "match": {"vendor_id": "8086"}, "attributes": {"x": value}}
    with pytest.raises(ConfigError, match=r"\[\[device\]\] #1 \(type NIC\): attribute 'x'"):
        parse_config({"host": "h1", "device": [rule]})


@pytest.mark.parametrize(
    "key", ["no_iommu_group", "resettable", "reset_methods", "vf_index", "mdev_type", "serial"]
)
def test_a_rule_cannot_set_what_discovery_reads(key: str) -> None:
    """``no_iommu_group = false`` would offer a function the server refuses (it has no group)
    and whose setup can only fail; ``resettable = true`` one that cannot be reset."""
    rule = {"type": "ACC", "match": {"address": "0000:01:00.0"}, "attributes": {key: False}}
    with pytest.raises(
        ConfigError, match=rf"\[\[device\]\] #1 \(type ACC\): attribute '{key}' is what discovery reads"
    ):
        parse_config({"host": "h1", "device": [rule]})
    # A declared resource has no discovery: its attributes are all the operator's.
    parse_config(_resource(attributes={key: False}))


def test_plain_values_and_flat_lists_are_taken() -> None:
    attrs = {"s": "gold", "i": -3, "b": True, "f": 1.5, "l": ["a", 1, 2.5, False], "e": []}
    config = parse_config(_resource(attributes=attrs))
    assert config.resources[0].attributes == attrs


def test_too_many_attributes_are_refused() -> None:
    attrs = {f"a{i}": i for i in range(MAX_CONFIG_ATTRIBUTES + 1)}
    with pytest.raises(ConfigError, match=f"at most {MAX_CONFIG_ATTRIBUTES} attributes"):
        parse_config(_resource(attributes=attrs))


def test_declared_units_past_one_report_are_refused() -> None:
    raw = {"host": "h1", "resource": [{"type": f"L{i}", "count": 10_000} for i in range(3)]}
    with pytest.raises(ConfigError, match="add up to 30000 units, more than the 20000"):
        parse_config(raw)


def test_a_host_with_more_devices_than_a_report_holds_is_refused_not_cut(tmp_path: Path) -> None:
    """Cut short, the report would tell the server the rest were removed: nothing is sent."""
    server = FakeServer()
    many = [DEVICE.model_copy(update={"address": f"static:{i}"}) for i in range(MAX_DEVICES_PER_REPORT + 1)]
    devices: list[ReportedDevice] = many
    t = FakeTime()
    config = parse_config({"host": "compute-1", "state_file": "s.json"}, base_dir=tmp_path)
    reporter = Reporter(
        config,
        lambda: devices,
        httpx.Client(transport=httpx.MockTransport(server)),
        clock=t.clock,
        sleep=t.sleep,
        rng=random.Random(1),
    )
    with pytest.raises(ReportRefused, match="more than the 20000 one report may hold"):
        reporter.report()
    assert server.reports() == []


def test_a_rule_at_its_cap_keeps_the_richest_devices_within_the_servers_limit(tmp_path: Path) -> None:
    """The cap leaves room for what discovery adds: a device it cannot report is dropped."""
    h = host(tmp_path)
    h.sriov_pf("0000:5e:00.0", "8086", "1572", vfs=2, vf_device="154c", ifname="ens1", iommu_group=7)
    h.pci("0000:5e:00.3", "8086", "1572", subsystem_vendor="8086", subsystem_device="0001", iommu_group=7)
    attrs = {f"a{i}": i for i in range(MAX_CONFIG_ATTRIBUTES)}
    rule = {"type": "ANY", "match": {"vendor_id": "8086"}, "match_vfs": True, "attributes": attrs}
    inv = build_inventory(Sysfs(h.root), parse_config({"host": "h1", "device": [rule]}), pci_ids=None)
    assert inv.devices and all(d.type == "ANY" for d in inv.devices)
    for dev in inv.devices:
        assert len(dev.attributes) <= MAX_ATTRIBUTES, dev.address
        dev.to_reported()


def test_cli_discover_names_a_toml_date_instead_of_a_traceback(tmp_path: Path) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text('host = "h1"\n[[resource]]\ntype = "LICENSE"\nattributes = { expires = 2027-01-01 }\n')
    res = runner.invoke(cli.app, ["discover", "--config", str(conf), "-f", "json"])
    assert res.exit_code == 2, res.output
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.output
    assert "[[resource]] #1 (type LICENSE): attribute 'expires'" in res.stderr
    assert "the TOML date or time 2027-01-01" in res.stderr


def test_cli_run_once_past_one_report_exits_1_and_sends_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Declared units within the limit and a discovered device past it: refused, not cut."""
    h = host(tmp_path)
    h.pci("0000:3b:00.0", "10de", "1eb8", iommu_group=1)
    conf = tmp_path / "agent.toml"
    conf.write_text(
        f'host = "h1"\nstate_file = "{tmp_path / "st.json"}"\n'
        '[[device]]\ntype = "GPU"\nmatch = { vendor_id = "10de" }\n'
        '[[resource]]\ntype = "A"\ncount = 10000\n[[resource]]\ntype = "B"\ncount = 10000\n'
    )
    server = FakeServer()
    original = Agent.__init__

    def patched(self: Agent, config: Any, root: Any, ops: Any, *a: object, **kw: Any) -> None:
        client = httpx.Client(transport=httpx.MockTransport(server))
        original(self, config, root, ops, client, sleep=lambda s: None, **kw)

    monkeypatch.setattr(Agent, "__init__", patched)
    res = runner.invoke(cli.app, ["run", "--config", str(conf), "--sysfs-root", str(h.root), "--once"])
    assert res.exit_code == 1, res.output
    assert "20001 devices, more than the 20000" in res.stderr and "Traceback" not in res.output
    assert server.reports() == []


@pytest.mark.parametrize(
    ("match", "extra", "says"),
    [
        ({"address": "0000:[3b:*"}, {}, "can match nothing: its [ at 6 is never closed"),
        ({"mdev_type": "nvidia-[z-a]"}, {}, "can match nothing: its range [z-a] is empty"),
        ({"driver": "[*"}, {}, "is never closed"),
        ({"address": "0000:3b:0[F-a].0"}, {}, "its range [f-a] is empty"),  # as matched: lower case
        (
            {"mig_profile": "1g.*", "kind": "pci"},
            {},
            "match.mig_profile takes mig devices, not match.kind 'pci'",
        ),
        ({"mdev_type": "nvidia-*", "kind": "usb"}, {}, "takes mdev_type devices"),
        ({"vgpu_type": "x", "mig_profile": "y"}, {}, "name two kinds of partition"),
        ({"parent": "0000:3b:00.0", "kind": "pci"}, {}, "a pci has none"),
        ({"vendor_id": "8086", "kind": "pci"}, {"pf_bandwidth_mbps": 100}, "pf_bandwidth_mbps shares"),
    ],
)
def test_a_match_no_device_can_meet_is_refused_at_load(
    match: dict[str, str], extra: dict[str, Any], says: str
) -> None:
    rule = {"type": "A", "match": match, **extra}
    with pytest.raises(ConfigError, match=r"\[\[device\]\] #1 \(type A\): ") as err:
        parse_config({"host": "h1", "device": [rule]})
    assert says in str(err.value)


@pytest.mark.parametrize(
    "match",
    [
        {"address": "0000:3b:0[0-2].*"},
        {"address": "0000:3B:0[a-F].0"},
        {"address": "0000:3b:0[!3].*"},
        {"mdev_type": "nvidia-[]x]"},
        {"mig_profile": "1g.*", "kind": "mig"},
        {"parent": "0000:3b:00.0", "kind": "sriov_vf"},
    ],
)
def test_globs_and_matches_that_can_match_are_taken(match: dict[str, str]) -> None:
    parse_config({"host": "h1", "device": [{"type": "A", "match": match}]})
