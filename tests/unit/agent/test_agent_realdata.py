"""Discovery over sysfs trees captured from real machines (tests/data/realdata) and this host's /sys."""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from devassign.agent.config import parse_config
from devassign.agent.discovery import scan_pci
from devassign.agent.inventory import build_inventory
from devassign.agent.model import FLAG_VFS_ENABLED, FoundDevice
from devassign.domain import DeviceKind
from devassign.hostio import HostFiles, Sysfs
from tests.data.realdata.trim import select
from tests.unit.agent.conftest import REALDATA

Unpack = Callable[[str], Path]


def scan(root: Path) -> dict[str, FoundDevice]:
    return {d.address: d for d in scan_pci(Sysfs(root), pci_ids=None).devices}


def test_ghw_dell_igb_vfs(realdata: Unpack) -> None:
    root = realdata("ghw/linux-amd64-8581cf3a529e5d8b97ea876eade2f60d.tar.gz") / "sys"
    devs = scan(root)
    assert len(devs) == 82
    vfs = {a: d for a, d in devs.items() if (d.vendor_id, d.product_id) == ("8086", "1520")}
    assert sorted(vfs) == [f"0000:05:{slot}.{fn}" for slot in ("10", "11") for fn in (0, 1, 4, 5)]
    assert all(d.driver == "igbvf" and d.attributes["class"] == "020000" for d in vfs.values())
    # functions 0 and 4 sit on node 0, 1 and 5 on node 1, like their PFs 05:00.0 / 05:00.1
    assert {a: d.numa_node for a, d in vfs.items()} == {a: int(a[-1]) % 2 for a in vfs}
    assert devs["0000:05:00.0"].numa_node == 0 and devs["0000:05:00.1"].numa_node == 1
    assert devs["0000:05:00.0"].driver == "igb"
    # the snapshot keeps no iommu_group, sriov_* or physfn: nothing is invented
    assert all(d.iommu_group is None and d.parent is None for d in devs.values())
    ids = {(d.vendor_id, d.product_id) for d in devs.values()}
    assert {("14e4", "1639"), ("1000", "0060"), ("102b", "0532")} <= ids


def test_ghw_nvidia_guest(realdata: Unpack) -> None:
    devs = scan(realdata("ghw/linux-amd64-accel-nvidia.tar.gz") / "sys")
    gpus = [d for d in devs.values() if (d.vendor_id, d.product_id) == ("10de", "15f8")]
    assert len(gpus) == 1
    assert gpus[0].attributes["class"] == "030200" and gpus[0].driver == "nvidia"


def test_nfd_qat_pf_with_16_vfs(realdata: Unpack) -> None:
    root = realdata("nfd-rootfs-1.tar.gz") / "rootfs-1" / "sys"
    devs = scan(root)
    qat = devs["0000:3b:00.0"]
    assert (qat.vendor_id, qat.product_id, qat.kind) == ("8086", "37c8", DeviceKind.SRIOV_PF)
    assert qat.attributes["sriov_totalvfs"] == 16 and qat.attributes["sriov_numvfs"] == 16
    assert qat.attributes["sriov_vf_device"] == "37c9"
    assert FLAG_VFS_ENABLED in qat.flags
    x722 = devs["0000:3f:00.0"]
    assert x722.kind is DeviceKind.SRIOV_PF and x722.attributes["sriov_totalvfs"] == 32
    assert FLAG_VFS_ENABLED not in x722.flags
    assert devs["0000:02:00.0"].vendor_id == "1a03"
    assert all(d.iommu_group is None for d in devs.values())  # iommu_group is an empty folder


def test_nfd_matched_qat_pf_is_not_reported(realdata: Unpack) -> None:
    root = realdata("nfd-rootfs-1.tar.gz") / "rootfs-1" / "sys"
    cfg = parse_config({"device": [{"type": "QAT", "match": {"vendor_id": "8086", "product_id": "37c8"}}]})
    inv = build_inventory(Sysfs(root), cfg, pci_ids=None)
    assert [d.type for d in inv.devices if d.address == "0000:3b:00.0"] == ["QAT"]
    assert inv.reported() == []


def test_procfs_e810_and_nvme(realdata: Unpack) -> None:
    devs = scan(realdata("procfs-pci.tar.gz") / "sys")
    e810 = devs["0000:a2:00.0"]
    assert (e810.vendor_id, e810.product_id, e810.driver) == ("8086", "159b", "ice")
    assert e810.kind is DeviceKind.SRIOV_PF and e810.attributes["sriov_totalvfs"] == 128
    assert e810.numa_node == 1 and e810.iommu_group is None
    assert e810.attributes["netdev"] == "enp162s0f0np0"
    nvme = devs["0000:01:00.0"]
    assert (nvme.vendor_id, nvme.product_id, nvme.iommu_group) == ("c0a9", "540a", 11)
    assert nvme.numa_node is None  # -1 in the tree
    assert devs["0000:00:02.1"].iommu_group == 2 and devs["0000:00:02.1"].is_bridge


@pytest.mark.parametrize(
    "name",
    [
        "ghw/linux-amd64-415ee03b8c4d1c4f07ae2e9d8b3d3d6d.tar.gz",
        "ghw/linux-amd64-61797caf7c0b6bca1725ad7975ed4773.tar.gz",
        "ghw/linux-amd64-accel.tar.gz",
        "ghw/linux-amd64-offlineCPUs.tar.gz",
        "ghw/linux-arm64-c288e0776090cd558ef793b2a4e61939.tar.gz",
        "ghw/linux-s390x-snapshot.tar.gz",
    ],
)
def test_other_snapshots_find_every_listed_function(realdata: Unpack, name: str) -> None:
    root = realdata(name) / "sys"
    listed = sorted(os.listdir(root / "bus/pci/devices")) if (root / "bus/pci/devices").is_dir() else []
    inv = build_inventory(Sysfs(root), parse_config({}), pci_ids=None)
    assert sorted(d.address for d in inv.devices if d.kind is not DeviceKind.MDEV_TYPE) == listed


def test_every_sample_is_described_and_already_trimmed() -> None:
    """Each archive has its origin in the README, and trimming it again leaves nothing out."""
    archives = sorted(REALDATA.rglob("*.tar.gz"))
    assert len(archives) == 11
    readme = (REALDATA / "README.md").read_text()
    for archive in archives:
        name = archive.relative_to(REALDATA).as_posix()
        assert f"`{name}`" in readme, f"{name} is not described in {REALDATA / 'README.md'}"
        with tarfile.open(archive) as tar:
            members = {m.name.rstrip("/"): m for m in tar.getmembers()}
        sys_root = "rootfs-1/sys" if name.startswith("nfd-") else "sys"
        assert select(members, sys_root) == set(members), name


def test_this_machines_sys(tmp_path: Path) -> None:
    """The real /sys: no crash, and every function the kernel lists is found (none without PCI)."""
    root = Path("/sys/bus/pci/devices")
    listed = set(os.listdir(root)) if root.is_dir() else set()
    # The host's /proc is not read: tests never depend on what this machine mounts or routes.
    inv = build_inventory(Sysfs("/sys"), parse_config({}), files=HostFiles(tmp_path))
    found = {d.address for d in inv.devices}
    assert listed <= found
