"""Names the kernel allows but discovery finds odd (SYNTHETIC trees): one such entry leaves out
only itself, with a warning, never the whole scan or the devices around it."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from devassign.agent.config import parse_config
from devassign.agent.discovery import scan_pci
from devassign.agent.inventory import build_inventory
from devassign.domain import DeviceKind, ascii_digits
from devassign.hostio import Sysfs
from devassign.testing.sysfs import host

PF = "0000:a2:00.0"
GPU = "0000:01:00.0"


def scan(root: Path) -> dict[str, object]:
    return {d.address: d for d in scan_pci(Sysfs(root), pci_ids=None).devices}


def test_ascii_digits_takes_only_0_to_9() -> None:
    assert ascii_digits("12") and not ascii_digits("") and not ascii_digits("-1")
    assert not ascii_digits("\u00b2") and not ascii_digits("\u0663") and not ascii_digits("1\u00b2")


def test_a_virtfn_link_with_a_superscript_digit_does_not_end_the_scan(tmp_path: Path) -> None:
    """``'²'.isdigit()`` is true but ``int('²')`` fails: the whole host's scan failed with it."""
    h = host(tmp_path)
    h.sriov_pf(PF, "8086", "159b", vfs=2, vf_device="1889", vf_iommu_group_start=10)
    h.pci(GPU, "10de", "1db6", cls="030200", iommu_group=1)
    os.symlink("../0000:a2:10.1", h.root / h.dev(PF) / "virtfn\u00b2")
    found = {d.address: d for d in scan_pci(Sysfs(h.root), pci_ids=None).devices}
    assert found[GPU].vendor_id == "10de"
    assert found["0000:a2:10.0"].kind is DeviceKind.SRIOV_VF
    assert found["0000:a2:10.1"].attributes["vf_index"] == 1  # from virtfn1, not virtfn²


@pytest.mark.parametrize("name", ["\u00b2", "\u0663"])  # superscript two, Arabic-Indic three
def test_an_iommu_group_folder_with_a_non_ascii_digit_does_not_end_the_scan(
    tmp_path: Path, name: str
) -> None:
    h = host(tmp_path)
    h.pci(GPU, "10de", "1db6", cls="030200", iommu_group=1)
    (h.root / "kernel/iommu_groups" / name / "devices").mkdir(parents=True)
    result = scan_pci(Sysfs(h.root), pci_ids=None)
    assert result.iommu_groups == {1: [GPU]}
    assert result.devices[0].iommu_group == 1


def test_an_iommu_group_link_to_a_non_ascii_number_is_no_group(tmp_path: Path) -> None:
    """``int('\u0663\u0663')`` is 33: an odd name must not become a group number."""
    h = host(tmp_path)
    h.pci(GPU, "10de", "1db6", cls="030200")
    h.link(f"{h.dev(GPU)}/iommu_group", "../../../kernel/iommu_groups/\u0663\u0663")
    (dev,) = scan_pci(Sysfs(h.root), pci_ids=None).devices
    assert dev.iommu_group is None


def test_the_vfs_of_a_pf_with_a_non_utf8_interface_name_are_reported_without_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Linux takes any byte but '/', ':' and blanks in an interface name. A PF renamed to
    b'\\xe9th0' gave its VFs a ``pf_netdev`` no report can carry, and each VF was refused."""
    h = host(tmp_path)
    vfs = h.sriov_pf(PF, "8086", "159b", vfs=2, vf_device="1889", ifname="ens1", vf_iommu_group_start=10)
    net = os.fsencode(h.root / h.dev(PF) / "net")
    os.rename(net + b"/ens1", net + b"/\xe9th0")
    cfg = parse_config({"host": "h", "device": [{"type": "VF", "match": {"product_id": "1889"}}]})
    with caplog.at_level(logging.WARNING):
        inv = build_inventory(Sysfs(h.root), cfg, pci_ids=None)
    reported = inv.reported()
    assert sorted(d.address for d in reported) == vfs
    assert all("pf_netdev" not in d.attributes and d.attributes["pf_product_id"] == "159b" for d in reported)
    pf = {d.address: d for d in inv.devices}[PF]
    assert "netdev" not in pf.attributes and pf.attributes["operstate"] == "up"
    assert f"{vfs[0]}: ignoring odd pf_netdev '\\udce9th0'" in caplog.text


def test_a_driver_with_a_non_utf8_name_leaves_out_only_the_driver(tmp_path: Path) -> None:
    h = host(tmp_path)
    h.pci(GPU, "10de", "1db6", cls="030200", iommu_group=1)
    os.symlink(b"../../../bus/pci/drivers/nv\xffidia", os.fsencode(h.root / h.dev(GPU) / "driver"))
    cfg = parse_config({"host": "h", "device": [{"type": "GPU", "match": {"vendor_id": "10de"}}]})
    (reported,) = build_inventory(Sysfs(h.root), cfg, pci_ids=None).reported()
    assert reported.address == GPU and reported.driver is None


def test_an_mdev_name_with_a_nul_leaves_out_only_that_attribute(tmp_path: Path) -> None:
    h = host(tmp_path)
    h.mdev_parent(GPU, types={"nvidia-35": {"name": "GRID\x00M60", "available": 2}}, iommu_group=1)
    cfg = parse_config({"host": "h", "device": [{"type": "VGPU", "match": {"mdev_type": "nvidia-35"}}]})
    reported = build_inventory(Sysfs(h.root), cfg, pci_ids=None).reported()
    assert [d.address for d in reported] == [f"{GPU}/nvidia-35/0", f"{GPU}/nvidia-35/1"]
    assert all("mdev_name" not in d.attributes and d.attributes["device_api"] == "vfio-pci" for d in reported)


@pytest.mark.parametrize("vendor", [b"", b"0x80\xff6\n", None])
def test_a_function_whose_id_cannot_be_read_is_shown_but_not_offered(
    tmp_path: Path, vendor: bytes | None
) -> None:
    """A dying or half-removed function (an empty, garbled or missing ``vendor``): a rule without
    ids (``kind = "pci"``) took it and the server showed it available with no vendor."""
    h = host(tmp_path)
    h.pci(GPU, "10de", "1db6", cls="030200", iommu_group=1)
    h.pci("0000:02:00.0", "8086", "0001", cls="120000", iommu_group=2)
    path = h.root / h.dev("0000:02:00.0") / "vendor"
    if vendor is None:
        path.unlink()
    else:
        path.write_bytes(vendor)
    config = parse_config({"host": "h", "device": [{"type": "ANY", "match": {"kind": "pci"}}]})
    inventory = build_inventory(Sysfs(h.root), config, None)
    offered = {d.address for d in inventory.reported()}
    assert offered == {GPU}
    odd = next(d for d in inventory.devices if d.address == "0000:02:00.0")
    assert "id_unreadable" in odd.flags
