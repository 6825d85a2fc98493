"""Host-in-use detection at its edges: a multi-device btrfs, a non-UTF-8 interface name, mount
points holding blanks the kernel does not escape.

Trees are SYNTHETIC (devassign.testing.sysfs) with a ``proc`` folder beside ``sys``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from devassign.agent.config import parse_config
from devassign.agent.inventory import build_inventory
from devassign.agent.model import FoundDevice
from devassign.hostio import Sysfs
from devassign.testing.sysfs import SyntheticHost, host

NVME = "0000:01:00.0"
NVME2 = "0000:02:00.0"
NIC = "0000:3b:00.0"
NVME_RULE = {"type": "NVME", "match": {"class": "0108"}}
NIC_RULE = {"type": "NIC", "match": {"vendor_id": "8086", "product_id": "1572"}}
ROUTE_HEADER = b"Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"


def devices(root: Path, *rules: dict[str, Any]) -> dict[str, FoundDevice]:
    inv = build_inventory(Sysfs(root), parse_config({"host": "h", "device": list(rules)}), None)
    return {d.address: d for d in inv.devices}


def proc(tmp_path: Path, rel: str, data: bytes) -> None:
    path = tmp_path / "proc" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def nvme(h: SyntheticHost, addr: str, n: int, group: int) -> str:
    """NVMe controller ``addr`` with disk nvme<n>n1 and partitions p1, p2; returns the disk folder."""
    h.pci(addr, "144d", "a808", cls="010802", driver="nvme", iommu_group=group)
    disk = f"{h.dev(addr)}/nvme/nvme{n}/nvme{n}n1"
    h.write(f"{disk}/dev", f"259:{n * 10}")
    (h.root / disk / "holders").mkdir()
    for i in (1, 2):
        h.write(f"{disk}/nvme{n}n1p{i}/dev", f"259:{n * 10 + i}")
        (h.root / disk / f"nvme{n}n1p{i}" / "holders").mkdir()
    h.link(f"class/block/nvme{n}n1", f"../../{disk}")
    return disk


def test_the_second_disk_of_a_mounted_multi_device_btrfs_is_host_in_use(tmp_path: Path) -> None:
    """Root is btrfs RAID1 over nvme0n1p2 and nvme1n1p2 (``mkfs.btrfs -d raid1 -m raid1``).
    mountinfo names one device only (and an anonymous 0:NN number); btrfs takes no holders.
    The kernel lists every member under /sys/fs/btrfs/<fsid>/devices. Today the second drive
    is offered, and binding it to vfio-pci drops a leg of the host's root filesystem."""
    h = host(tmp_path)
    nvme(h, NVME, 0, 11)
    disk1 = nvme(h, NVME2, 1, 12)
    fsid = "fs/btrfs/3b4f9c7e-1d2a-4c5b-9e8f-0a1b2c3d4e5f"
    h.link(f"{fsid}/devices/nvme0n1p2", "../../../../devices/x")  # targets only name the member
    h.link(f"{fsid}/devices/nvme1n1p2", f"../../../../{disk1}/nvme1n1p2")
    proc(tmp_path, "self/mountinfo", b"29 1 0:33 / / rw,relatime shared:1 - btrfs /dev/nvme0n1p2 rw\n")
    devs = devices(h.root, NVME_RULE)
    assert devs[NVME].host_use == ["nvme0n1p2 is mounted at /"]
    assert devs[NVME2].host_use, "the btrfs member nvme1n1p2 of / is offered to tenants"
    assert not devs[NVME2].offered


def test_a_non_utf8_interface_carrying_the_default_route_is_host_in_use(tmp_path: Path) -> None:
    """sysfs names the interface b'\\xe9th0' (os.listdir: surrogate '\\udce9th0'); HostFiles
    reads /proc/net/route with errors='replace' ('\\ufffdth0'), so the names never match and
    the host's uplink is offered. ba796db takes care that such names do not drop VFs; the
    host-use check misses them."""
    h = host(tmp_path)
    h.pci(NIC, "8086", "1572", driver="i40e", iommu_group=20)
    name = os.fsdecode(b"\xe9th0")
    h.netdev(NIC, name)
    route = b"\xe9th0\t00000000\t0102A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
    proc(tmp_path, "net/route", ROUTE_HEADER + route)
    dev = devices(h.root, NIC_RULE)[NIC]
    assert dev.host_use, "the interface with the default route is not seen"
    assert not dev.offered


def test_unicode_whitespace_in_a_mount_point_does_not_mark_another_disk_mounted(tmp_path: Path) -> None:
    """The kernel escapes only space, tab, newline and backslash in mountinfo; fields are
    separated by ' ' alone. str.split() also splits at U+00A0 (and \\x1c-\\x1f, U+2028, ...),
    so a USB stick auto-mounted under its label ('A<NBSP>B<NBSP>-<NBSP>vfat<NBSP>/dev/nvme0n1p2')
    shifts the fields: the '-' inside the label is taken as the separator and the host's
    (unused) NVMe is reported mounted and withheld."""
    h = host(tmp_path)
    nvme(h, NVME, 0, 11)
    label = "A\u00a0B\u00a0-\u00a0vfat\u00a0/dev/nvme0n1p2".encode()
    line = b"40 29 8:17 / /media/u/" + label + b" rw,nosuid shared:5 - vfat /dev/sdb1 rw\n"
    proc(tmp_path, "self/mountinfo", line)
    dev = devices(h.root, NVME_RULE)[NVME]
    assert dev.host_use == [] and dev.offered


def test_a_line_separator_in_a_mount_point_does_not_hide_the_mount(tmp_path: Path) -> None:
    """str.splitlines() also breaks at \\x1c, \\x1d, \\x1e, \\x85, U+2028: a disk mounted at
    '/srv/a\\x1cb' (a legal name the kernel does not escape) drops out of the table, and the
    disk is offered while mounted."""
    h = host(tmp_path)
    nvme(h, NVME, 0, 11)
    line = b"40 29 259:1 / /srv/a\x1cb rw,relatime shared:5 - xfs /dev/nvme0n1p1 rw\n"
    proc(tmp_path, "self/mountinfo", line)
    dev = devices(h.root, NVME_RULE)[NVME]
    assert dev.host_use and not dev.offered
