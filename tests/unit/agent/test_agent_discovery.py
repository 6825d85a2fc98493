"""Discovery over synthetic sysfs trees (tests/fixtures/sysfs.py): PCI, SR-IOV, mdev, USB."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from devassign.agent.config import parse_config
from devassign.agent.discovery import scan_pci
from devassign.agent.inventory import build_inventory
from devassign.agent.model import FLAG_MDEV_IN_USE, FLAG_VFS_ENABLED, FoundDevice
from devassign.agent.usb import scan_usb
from devassign.domain import DeviceKind, address_error
from devassign.hostio import Sysfs
from tests.fixtures.sysfs import host, vf_addresses


def by_address(devices: list[FoundDevice]) -> dict[str, FoundDevice]:
    return {d.address: d for d in devices}


def test_pci_function_attributes(tmp_path: Path) -> None:
    h = host(tmp_path)
    h.pci(
        "0000:3b:00.0",
        "10DE",
        "1eb8",
        cls="030200",
        numa=1,
        iommu_group=12,
        driver="vfio-pci",
        subsystem_vendor="10de",
        subsystem_device="12a2",
        local_cpulist="16-31",
    )
    h.pci("0000:00:1f.0", "8086", "a1c8", cls="060100", numa=-1)

    devs = by_address(scan_pci(Sysfs(h.root), pci_ids=None).devices)

    gpu = devs["0000:3b:00.0"]
    assert (gpu.kind, gpu.vendor_id, gpu.product_id) == (DeviceKind.PCI, "10de", "1eb8")
    assert (gpu.numa_node, gpu.iommu_group, gpu.driver, gpu.parent) == (1, 12, "vfio-pci", None)
    assert gpu.attributes["class"] == "030200"
    assert gpu.attributes["subsystem_vendor_id"] == "10de"
    assert gpu.attributes["subsystem_device_id"] == "12a2"
    assert gpu.attributes["local_cpulist"] == "16-31"
    lpc = devs["0000:00:1f.0"]
    assert lpc.numa_node is None and lpc.iommu_group is None and lpc.driver is None


def test_human_name_from_pci_ids(tmp_path: Path) -> None:
    h = host(tmp_path)
    h.pci("0000:05:10.0", "8086", "1520")
    h.pci("0000:06:00.0", "8086", "ffff")
    h.pci("0000:07:00.0", "abcd", "0001")
    ids = tmp_path / "pci.ids"
    ids.write_text(
        "# comment\n8086  Intel Corporation\n\t1520  I350 Ethernet Controller Virtual Function\n"
        "\t\t8086 0001  subsystem\nC 02  Network controller\n\t00  Ethernet controller\n"
    )
    devs = by_address(scan_pci(Sysfs(h.root), pci_ids=ids).devices)
    assert devs["0000:05:10.0"].attributes["name"] == (
        "Intel Corporation I350 Ethernet Controller Virtual Function"
    )
    assert devs["0000:06:00.0"].attributes["name"] == "Intel Corporation"
    assert "name" not in devs["0000:07:00.0"].attributes
    absent = scan_pci(Sysfs(h.root), pci_ids=tmp_path / "missing.ids").devices
    assert all("name" not in d.attributes for d in absent)


def test_sriov_pf_and_vfs(tmp_path: Path) -> None:
    h = host(tmp_path)
    vfs = h.sriov_pf(
        "0000:5e:00.0",
        "8086",
        "1572",
        vfs=4,
        total_vfs=64,
        vf_device="154c",
        ifname="ens1f0",
        numa=0,
        vf_iommu_group_start=100,
    )
    h.sriov_pf("0000:5e:00.1", "8086", "1572", vfs=0, total_vfs=64, ifname="ens1f1", operstate="down")

    devs = by_address(scan_pci(Sysfs(h.root), pci_ids=None).devices)

    pf = devs["0000:5e:00.0"]
    assert pf.kind is DeviceKind.SRIOV_PF
    assert pf.attributes["sriov_totalvfs"] == 64 and pf.attributes["sriov_numvfs"] == 4
    assert pf.attributes["netdev"] == "ens1f0" and pf.attributes["operstate"] == "up"
    assert FLAG_VFS_ENABLED in pf.flags
    assert vfs == vf_addresses("0000:5e:00.0", 4)
    for i, vf in enumerate(vfs):
        d = devs[vf]
        assert (d.kind, d.parent, d.product_id) == (DeviceKind.SRIOV_VF, pf.address, "154c")
        assert d.attributes["vf_index"] == i and d.attributes["pf_netdev"] == "ens1f0"
        assert d.iommu_group == 100 + i
    idle = devs["0000:5e:00.1"]
    assert idle.kind is DeviceKind.SRIOV_PF and idle.flags == []
    assert idle.attributes["operstate"] == "down"


def test_vf_found_from_virtfn_link_alone(tmp_path: Path) -> None:
    """Some trees keep only one direction of the SR-IOV links; either is enough."""
    h = host(tmp_path)
    vfs = h.sriov_pf("0000:5e:00.0", "8086", "1572", vfs=2)
    (h.root / h.dev(vfs[0]) / "physfn").unlink()
    devs = by_address(scan_pci(Sysfs(h.root), pci_ids=None).devices)
    assert devs[vfs[0]].kind is DeviceKind.SRIOV_VF and devs[vfs[0]].parent == "0000:5e:00.0"


def test_mdev_types_become_slots(tmp_path: Path) -> None:
    h = host(tmp_path)
    h.mdev_parent(
        "0000:3b:00.0",
        numa=1,
        types={
            "nvidia-230": {"name": "GRID T4-4Q", "available": 2, "instances": 2},
            "nvidia-231": {"name": "GRID T4-8Q", "available": 0},
        },
    )
    found = scan_pci(Sysfs(h.root), pci_ids=None).devices
    slots = [d for d in found if d.kind is DeviceKind.MDEV_TYPE]
    assert [s.address for s in slots] == [f"0000:3b:00.0/nvidia-230/{i}" for i in range(4)]
    assert all(address_error(DeviceKind.MDEV_TYPE, s.address) is None for s in slots)
    slot = slots[0]
    assert slot.parent == "0000:3b:00.0" and slot.numa_node == 1
    assert slot.attributes["mdev_name"] == "GRID T4-4Q"
    assert slot.attributes["device_api"] == "vfio-pci"
    assert slot.attributes["mdev_total"] == 4
    gpu = by_address(found)["0000:3b:00.0"]
    assert FLAG_MDEV_IN_USE in gpu.flags


def test_usb_devices_skip_hubs_and_interfaces(tmp_path: Path) -> None:
    h = host(tmp_path)
    h.usb("1-2", "0529", "0620", serial="ABC123", manufacturer="SafeNet", product_name="Token")
    h.usb("1-3.1", "1050", "0407")
    h.usb("2-1", "0529", "0620", serial="bad serial!")
    devs = by_address(scan_usb(Sysfs(h.root)))
    assert set(devs) == {"usb:0529:0620:ABC123", "usb:1-3.1", "usb:2-1"}
    token = devs["usb:0529:0620:ABC123"]
    assert token.kind is DeviceKind.USB and token.driver == "usb"
    assert token.attributes["manufacturer"] == "SafeNet"
    assert token.attributes["product"] == "Token" and token.attributes["bus_path"] == "1-2"
    assert all(address_error(DeviceKind.USB, a) is None for a in devs)


def test_usb_devices_sharing_a_serial_fall_back_to_bus_path(tmp_path: Path) -> None:
    h = host(tmp_path)
    h.usb("1-2", "0529", "0620", serial="0001")
    h.usb("1-3", "0529", "0620", serial="0001")
    inv = build_inventory(Sysfs(h.root), parse_config({}), pci_ids=None)
    assert sorted(d.address for d in inv.devices) == ["usb:1-2", "usb:1-3"]


def test_removed_device_is_gone(tmp_path: Path) -> None:
    h = host(tmp_path)
    vfs = h.sriov_pf("0000:5e:00.0", "8086", "1572", vfs=2, vf_iommu_group_start=7)
    h.usb("1-2", "0529", "0620", serial="S1")
    h.remove(vfs[1])
    h.remove("1-2")
    found = by_address(scan_pci(Sysfs(h.root), pci_ids=None).devices + scan_usb(Sysfs(h.root)))
    assert vfs[1] not in found and vfs[0] in found and "usb:0529:0620:S1" not in found
    assert not (h.root / "kernel/iommu_groups/8/devices" / vfs[1]).exists()


class VanishingSysfs(Sysfs):
    """Removes a device right after the listing that named it, as a hot-unplug would."""

    def __init__(self, root: Path, victim: Path) -> None:
        super().__init__(root)
        self.victim = victim

    def listdir(self, rel: str) -> list[str]:
        out = super().listdir(rel)
        if rel == "bus/pci/devices" and self.victim.exists():
            import shutil

            shutil.rmtree(self.victim)
        return out


def test_device_vanishing_mid_scan_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    h = host(tmp_path)
    h.pci("0000:01:00.0", "8086", "1521")
    gone = h.pci("0000:02:00.0", "8086", "1521")
    with caplog.at_level(logging.WARNING):
        found = scan_pci(VanishingSysfs(h.root, gone), pci_ids=None).devices
    assert [d.address for d in found] == ["0000:01:00.0"]
    assert "vanished" in caplog.text


def test_odd_values_are_left_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    h = host(tmp_path)
    h.pci("0000:01:00.0", "8086", "1521", numa=0, iommu_group=3)
    h.set("0000:01:00.0", "vendor", "0xZZZZ")
    h.set("0000:01:00.0", "numa_node", "lots")
    h.set("0000:01:00.0", "class", "network")
    (h.root / h.dev("0000:01:00.0") / "device").write_bytes(b"\xff\xfe\x00")
    (h.root / "bus/pci/devices/not-an-address").mkdir()
    with caplog.at_level(logging.WARNING):
        (dev,) = scan_pci(Sysfs(h.root), pci_ids=None).devices
    assert dev.vendor_id is None and dev.product_id is None and dev.numa_node is None
    assert "class" not in dev.attributes and dev.iommu_group == 3
    assert "odd vendor" in caplog.text and "not-an-address" in caplog.text


def test_iommu_group_as_empty_folder_means_no_group(tmp_path: Path) -> None:
    h = host(tmp_path)
    h.pci("0000:01:00.0", "8086", "1521")
    (h.root / h.dev("0000:01:00.0") / "iommu_group").mkdir()
    (dev,) = scan_pci(Sysfs(h.root), pci_ids=None).devices
    assert dev.iommu_group is None


def test_iommu_group_members(tmp_path: Path) -> None:
    h = host(tmp_path)
    h.pci("0000:00:01.0", "8086", "1901", cls="060400", iommu_group=1)
    h.pci("0000:01:00.0", "10de", "1eb8", cls="030000", iommu_group=1)
    h.pci("0000:01:00.1", "10de", "10f8", cls="040300", iommu_group=1)
    groups = scan_pci(Sysfs(h.root), pci_ids=None).iommu_groups
    assert groups == {1: ["0000:00:01.0", "0000:01:00.0", "0000:01:00.1"]}
