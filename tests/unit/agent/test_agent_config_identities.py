"""What an operator writes in agent.toml and what `devassign agent discover -f json` then shows:
address globs over identities with capitals, several `[[resource]]` entries of one type."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from devassign.agent import cli
from tests.fixtures.sysfs import host

runner = CliRunner()


def discover(tmp_path: Path, config: str, sysfs_root: Path) -> dict[str, dict[str, Any]]:
    conf = tmp_path / "agent.toml"
    conf.write_text(config)
    res = runner.invoke(
        cli.app, ["discover", "--config", str(conf), "--sysfs-root", str(sysfs_root), "-f", "json"]
    )
    assert res.exit_code == 0, res.output
    return {d["address"]: d for d in json.loads(res.stdout)}


def test_address_glob_matches_a_usb_identity_with_an_uppercase_serial(tmp_path: Path) -> None:
    # match "also: address (glob)"; a device's identity is "a USB identity
    # (vendor:product:serial ...)". Naming that identity must match it.
    h = host(tmp_path)
    h.usb("1-2", "0529", "0620", serial="ABC123")
    devs = discover(
        tmp_path,
        'host = "compute-1"\n[[device]]\ntype = "Encryption_card"\n'
        'match = { kind = "usb", address = "usb:0529:0620:ABC123" }\n',
        h.root,
    )
    assert devs["usb:0529:0620:ABC123"]["type"] == "Encryption_card"


def test_address_glob_matches_an_mdev_slot_of_a_mixed_case_mdev_type(tmp_path: Path) -> None:
    # an mdev slot's identity is "parent address + mdev type + index"; Intel GVT-g
    # types are mixed case (i915-GVTg_V5_4). An address glob over the slots must match them.
    h = host(tmp_path)
    h.mdev_parent("0000:00:02.0", "8086", "3e92", types={"i915-GVTg_V5_4": {"available": 2}}, iommu_group=5)
    devs = discover(
        tmp_path,
        'host = "compute-1"\n[[device]]\ntype = "GVT_V5_4"\n'
        'match = { kind = "mdev_type", address = "0000:00:02.0/i915-GVTg_V5_4/*" }\n',
        h.root,
    )
    assert devs["0000:00:02.0/i915-GVTg_V5_4/0"]["type"] == "GVT_V5_4"


def test_two_resource_entries_of_one_type_are_two_declared_resources(tmp_path: Path) -> None:
    # "Statically declared resources, in the shape of the original proposal" as
    # repeatable [[resource]] tables of type, information, count. Two cards of one type with
    # different information are two declarations, not an error.
    h = host(tmp_path)
    devs = discover(
        tmp_path,
        'host = "compute-1"\n'
        '[[resource]]\ntype = "Encryption_card"\ninformation = "USB: 0529:0620"\ncount = 1\n'
        '[[resource]]\ntype = "Encryption_card"\ninformation = "USB: 1050:0407"\ncount = 1\n',
        h.root,
    )
    static = [d for d in devs.values() if d["kind"] == "static"]
    assert len(static) == 2 and {d["type"] for d in static} == {"Encryption_card"}


def test_resource_entries_with_an_id_keep_their_own_numbering(tmp_path: Path) -> None:
    h = host(tmp_path)
    devs = discover(
        tmp_path,
        'host = "compute-1"\n'
        '[[resource]]\ntype = "Encryption_card"\ncount = 2\n'
        '[[resource]]\ntype = "Encryption_card"\nid = "yubi"\ncount = 1\n'
        '[[resource]]\ntype = "Encryption_card"\ncount = 1\n',
        h.root,
    )
    static = sorted(a for a, d in devs.items() if d["kind"] == "static")
    assert static == [
        "static:Encryption_card/0",
        "static:Encryption_card/1",
        "static:Encryption_card/2",
        "static:yubi/0",
    ]


def test_the_same_id_twice_is_still_refused(tmp_path: Path) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text(
        'host = "compute-1"\n[[resource]]\ntype = "A"\nid = "x"\n[[resource]]\ntype = "B"\nid = "x"\n'
    )
    res = runner.invoke(cli.app, ["discover", "--config", str(conf), "-f", "json"])
    assert res.exit_code != 0 and "declared twice" in res.output, res.output
