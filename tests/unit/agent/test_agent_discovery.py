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


def test_a_switchdev_pf_is_known_by_its_uplink_not_its_representors(tmp_path: Path) -> None:
    """A ConnectX in switchdev mode: the PF's ``net/`` has the uplink (``phys_port_name``
    p0) and one representor per VF (pf0vfN), whose names may sort first. The PF's netdev,
    its link and speed, and its VFs' ``pf_netdev`` are the uplink's."""
    h = host(tmp_path)
    pf = "0000:af:00.0"
    vfs = h.sriov_pf(pf, "15b3", "101d", vfs=2, vf_device="101e", driver="mlx5_core")
    h.netdev(pf, "p3p1")
    h.write(f"{h.dev(pf)}/net/p3p1/phys_port_name", "p0")
    h.write(f"{h.dev(pf)}/net/p3p1/speed", "100000")
    for i in range(2):
        h.netdev(pf, f"eth{4 + i}", operstate="down")
        h.write(f"{h.dev(pf)}/net/eth{4 + i}/phys_port_name", f"pf0vf{i}")
        h.write(f"{h.dev(pf)}/net/eth{4 + i}/speed", "-1")
    devs = by_address(scan_pci(Sysfs(h.root), pci_ids=None).devices)
    attrs = devs[pf].attributes
    assert (attrs["netdev"], attrs["operstate"], attrs["link_speed_mbps"]) == ("p3p1", "up", 100000)
    assert [devs[vf].attributes["pf_netdev"] for vf in vfs] == ["p3p1", "p3p1"]


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
    assert dev.vendor_id is None and dev.product_id is None
    assert dev.numa_node == 0  # "lots" left out; on a one-node host that is node 0
    assert "class" not in dev.attributes and dev.iommu_group == 3
    assert "odd vendor" in caplog.text and "not-an-address" in caplog.text


def test_iommu_group_as_empty_folder_means_no_group(tmp_path: Path) -> None:
    h = host(tmp_path)
    h.pci("0000:01:00.0", "8086", "1521")
    (h.root / h.dev("0000:01:00.0") / "iommu_group").mkdir()
    (dev,) = scan_pci(Sysfs(h.root), pci_ids=None).devices
    assert dev.iommu_group is None
    assert dev.attributes["no_iommu_group"] is True


def test_a_function_without_an_iommu_group_says_so(tmp_path: Path) -> None:
    """The server refuses such a function for a type whose handler needs VFIO (the IOMMU is off)."""
    h = host(tmp_path)
    h.pci("0000:3b:00.0", "10de", "20b5", cls="030200")
    h.pci("0000:3c:00.0", "10de", "20b5", cls="030200", iommu_group=7)
    devs = by_address(scan_pci(Sysfs(h.root), pci_ids=None).devices)
    assert devs["0000:3b:00.0"].attributes["no_iommu_group"] is True
    assert "no_iommu_group" not in devs["0000:3c:00.0"].attributes


def test_iommu_group_members(tmp_path: Path) -> None:
    h = host(tmp_path)
    h.pci("0000:00:01.0", "8086", "1901", cls="060400", iommu_group=1)
    h.pci("0000:01:00.0", "10de", "1eb8", cls="030000", iommu_group=1)
    h.pci("0000:01:00.1", "10de", "10f8", cls="040300", iommu_group=1)
    groups = scan_pci(Sysfs(h.root), pci_ids=None).iommu_groups
    assert groups == {1: ["0000:00:01.0", "0000:01:00.0", "0000:01:00.1"]}


@pytest.mark.parametrize(
    ("raw", "want"), [("10", "0010"), ("154c", "154c"), ("0x10ed", "10ed"), ("a", "000a")]
)
def test_sriov_vf_device_printed_without_padding_is_padded(tmp_path: Path, raw: str, want: str) -> None:
    """The kernel prints sriov_vf_device with %x: QEMU's NVMe PF shows ``10``."""
    h = host(tmp_path)
    h.sriov_pf("0000:01:00.0", "1b36", "0010", vfs=0, total_vfs=4)
    h.set("0000:01:00.0", "sriov_vf_device", raw)
    pf = by_address(scan_pci(Sysfs(h.root), pci_ids=None).devices)["0000:01:00.0"]
    assert pf.attributes["sriov_vf_device"] == want


def test_sriov_vf_device_that_is_not_hex_is_left_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    h = host(tmp_path)
    h.sriov_pf("0000:01:00.0", "1b36", "0010", vfs=0, total_vfs=4)
    h.set("0000:01:00.0", "sriov_vf_device", "12345")
    pf = by_address(scan_pci(Sysfs(h.root), pci_ids=None).devices)["0000:01:00.0"]
    assert "sriov_vf_device" not in pf.attributes
    assert "odd sriov_vf_device" in caplog.text


def test_a_function_behind_intel_vmd_has_a_five_digit_domain(tmp_path: Path) -> None:
    """VMD puts its NVMe drives in domains from 10000 up: such an address is not odd."""
    h = host(tmp_path)
    h.pci("10000:01:00.0", "8086", "0a54", cls="010802", iommu_group=40)
    h.pci("10000:01:00.1", "8086", "0a54", cls="010802", iommu_group=40)
    inv = build_inventory(
        Sysfs(h.root),
        parse_config({"device": [{"type": "NVME", "match": {"address": "10000:01:00.*"}}]}),
        pci_ids=None,
    )
    devs = by_address(inv.devices)
    assert devs["10000:01:00.0"].type == "NVME" and devs["10000:01:00.0"].offered
    assert devs["10000:01:00.0"].attributes["iommu_group_peers"] == ["10000:01:00.1"]
    assert address_error(DeviceKind.PCI, "10000:01:00.0") is None
    assert address_error(DeviceKind.PCI, "100000:01:00.0") is not None
    assert address_error(DeviceKind.MDEV_TYPE, "10000:01:00.0/nvidia-1/0") is None
    assert {d.address for d in inv.reported()} == {"10000:01:00.0", "10000:01:00.1"}


def nvidia_vfs(root: Path) -> tuple[Sysfs, list[str]]:
    """An NVIDIA-like PF whose VFs carry its own device id, and an Intel PF whose VFs do not."""
    h = host(root)
    vfs = h.sriov_pf(
        "0000:3b:00.0",
        "10de",
        "2331",
        vfs=2,
        vf_device="2331",
        driver="nvidia",
        cls="030200",
        vf_driver=None,
        iommu_group=10,
        vf_iommu_group_start=20,
    )
    vfs += h.sriov_pf(
        "0000:5e:00.0", "8086", "1572", vfs=1, vf_device="154c", iommu_group=11, vf_iommu_group_start=30
    )
    return Sysfs(h.root), vfs


@pytest.mark.parametrize(
    ("rule", "typed"),
    [
        # Only the ids: the GPU itself, never its VFs; Intel's VF id names VFs, so it takes them.
        ({"match": {"vendor_id": "10de", "product_id": "2331"}}, {"0000:3b:00.0"}),
        ({"match": {"vendor_id": "8086", "product_id": "154c"}}, {"0000:5e:10.0"}),
        ({"match": {"vendor_id": "10de"}}, {"0000:3b:00.0"}),
        ({"match": {"class": "03"}}, {"0000:3b:00.0"}),
        ({"match": {"address": "0000:3b:*"}}, {"0000:3b:00.0"}),
        # Saying so: kind, parent, one address, or match_vfs.
        ({"match": {"vendor_id": "10de", "kind": "sriov_vf"}}, {"0000:3b:10.0", "0000:3b:10.1"}),
        ({"match": {"parent": "0000:3b:00.0"}}, {"0000:3b:10.0", "0000:3b:10.1"}),
        ({"match": {"address": "0000:3b:10.1"}}, {"0000:3b:10.1"}),
        (
            {"match": {"vendor_id": "10de", "product_id": "2331"}, "match_vfs": True},
            {"0000:3b:00.0", "0000:3b:10.0", "0000:3b:10.1"},
        ),
        ({"match": {"vendor_id": "8086", "product_id": "154c"}, "match_vfs": False}, set()),
    ],
)
def test_a_rule_takes_sriov_vfs_only_when_it_says_so(
    tmp_path: Path, rule: dict[str, object], typed: set[str]
) -> None:
    sysfs, _ = nvidia_vfs(tmp_path)
    inv = build_inventory(sysfs, parse_config({"device": [{"type": "T", **rule}]}), pci_ids=None)
    assert {d.address for d in inv.devices if d.type == "T"} == typed


def test_vfs_know_their_pfs_device_id(tmp_path: Path) -> None:
    sysfs, vfs = nvidia_vfs(tmp_path)
    devs = by_address(scan_pci(sysfs, pci_ids=None).devices)
    assert [devs[vf].attributes["pf_product_id"] for vf in vfs] == ["2331", "2331", "1572"]
