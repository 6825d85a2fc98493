"""The agent's configuration: loading, validation errors, rules and static resources."""

from __future__ import annotations

from pathlib import Path

import pytest

from devassign.agent.config import ConfigError, load_config, parse_config
from devassign.domain import DeviceKind, address_error


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_full_config_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVASSIGN_TOKEN", "from-env")
    cfg = load_config(
        write(
            tmp_path,
            """
host = "compute-1"
server = "http://127.0.0.1:8470/"
report_interval = 30
state_file = "state/agent.json"

[[device]]
type = "NIC_VF_1G"
match = { vendor_id = "8086", product_id = "0x154C" }
attributes = { physical_network = "physnet1" }

[[device]]
type = "VGPU_T4_4Q"
match = { kind = "mdev_type", mdev_type = "nvidia-230" }

[[resource]]
type = "Encryption_card"
information = "USB: 0529:0620"
count = 2
""",
        )
    )
    assert cfg.host == "compute-1" and cfg.server == "http://127.0.0.1:8470"
    assert cfg.report_interval == 30.0 and cfg.heartbeat_interval == 10.0
    assert cfg.token == "from-env"
    assert cfg.state_file == tmp_path / "state/agent.json"
    assert cfg.devices[0].match == {"vendor_id": "8086", "product_id": "154c"}
    assert cfg.devices[0].attributes == {"physical_network": "physnet1"}
    units = cfg.resources[0].units()
    assert [u.address for u in units] == ["static:Encryption_card/0", "static:Encryption_card/1"]
    assert all(address_error(DeviceKind.STATIC, u.address) is None for u in units)
    assert units[0].type == "Encryption_card"
    assert units[0].attributes == {"information": "USB: 0529:0620"}


def test_token_in_file_wins_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVASSIGN_TOKEN", "from-env")
    assert parse_config({"token": "from-file"}).token == "from-file"


def test_host_defaults_to_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "node-7")
    assert parse_config({}).host == "node-7"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('hots = "x"', "unknown key 'hots'"),
        ('host = "bad host"', "not a host name"),
        ('server = "127.0.0.1:8470"', "not an http(s) URL"),
        ("report_interval = 0", "report_interval must be a positive number"),
        ('report_interval = "30"', "report_interval must be a positive number"),
        ('[[device]]\ntype = "X"\nmatch = { vendor = "8086" }', "#1 (type X): match: unknown key 'vendor'"),
        ('[[device]]\ntype = "X"\nmatch = { vendor_id = "80861" }', "match.vendor_id '80861' must be 4 hex"),
        ('[[device]]\ntype = "X"\nmatch = { class = "net" }', "match.class 'net' must be 2, 4 or 6 hex"),
        ('[[device]]\ntype = "X"\nmatch = { class = "3" }', "match.class '3' must be 2, 4 or 6 hex"),
        ('[[device]]\ntype = "X"\nmatch = { kind = "gpu" }', "match.kind 'gpu' must be one of"),
        (
            '[[device]]\ntype = "X"\nmatch = { vendor_id = 8086 }',
            "match.vendor_id must be a non-empty string",
        ),
        ('[[device]]\ntype = "X"\nmatch = {}', "needs a match table"),
        ('[[device]]\ntype = "bad-name"\nmatch = { kind = "pci" }', "[[device]] #1: type 'bad-name'"),
        (
            '[[device]]\ntype = "X"\nmatch = { kind = "pci" }\ncolour = 1',
            "[[device]] #1: unknown key 'colour'",
        ),
        (
            '[[device]]\ntype = "X"\nmatch = { kind = "pci" }\nattributes = { a = { b = 1 } }',
            "attribute 'a' must be text",
        ),
        (
            '[[device]]\ntype = "X"\nmatch = { vendor_id = "10de" }\nmatch_vfs = "yes"',
            "match_vfs must be true or false",
        ),
        (
            '[[device]]\ntype = "X"\nmatch = { kind = "pci" }\nmatch_vfs = true',
            "match_vfs = true contradicts match.kind 'pci'",
        ),
        (
            '[[device]]\ntype = "X"\nmatch = { kind = "sriov_vf" }\nmatch_vfs = false',
            "match_vfs = false contradicts match.kind 'sriov_vf'",
        ),
        ('[[resource]]\ntype = "T"\ncount = 0', "[[resource]] #1 (type T): count must be"),
        ('[[resource]]\ntype = "T"\ncount = true', "count must be"),
        ('[[resource]]\ntype = "T"\nid = "a b"', "id 'a b' must be"),
        ('[[resource]]\ntype = "T"\nid = "x"\n[[resource]]\ntype = "U"\nid = "x"', "declared twice"),
        ("device = 3", "device must be written as [[device]] tables"),
        ("host = ", "not valid TOML"),
    ],
)
def test_config_errors_name_file_and_rule(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: ")
    assert expected in str(err.value)


def test_second_rule_is_named(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[device]]\ntype = "A"\nmatch = { kind = "pci" }\n'
        '[[device]]\ntype = "B"\nmatch = { drvier = "ice" }\n',
    )
    with pytest.raises(ConfigError, match=r"\[\[device\]\] #2 \(type B\): match: unknown key 'drvier'"):
        load_config(path)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


def test_match_vfs_is_read_with_the_rule() -> None:
    cfg = parse_config({"device": [{"type": "G", "match": {"vendor_id": "10de"}, "match_vfs": True}]})
    assert cfg.devices[0].match_vfs is True
    assert (
        parse_config({"device": [{"type": "G", "match": {"vendor_id": "10de"}}]}).devices[0].match_vfs is None
    )


def test_an_address_as_lspci_prints_it_reads_its_domain_as_any(tmp_path: Path) -> None:
    """``06:00.0`` (no domain, as lspci and Nova's device_spec write it) matched nothing, and
    nothing said so."""
    from devassign.agent.inventory import build_inventory
    from devassign.hostio import Sysfs
    from devassign.testing.sysfs import host

    h = host(tmp_path)
    h.pci("0000:06:00.0", "10de", "15f8", cls="030200", driver="vfio-pci", iommu_group=6)
    h.pci("0001:06:00.0", "10de", "15f8", cls="030200", driver="vfio-pci", iommu_group=7)
    h.pci("0000:07:00.0", "10de", "15f8", cls="030200", driver="vfio-pci", iommu_group=8)
    config = parse_config({"host": "h", "device": [{"type": "GPU_P100", "match": {"address": "06:00.0"}}]})
    assert config.devices[0].match["address"] == "*:06:00.0"
    found = build_inventory(Sysfs(h.root), config, None).devices
    assert sorted(d.address for d in found if d.type == "GPU_P100") == ["0000:06:00.0", "0001:06:00.0"]
