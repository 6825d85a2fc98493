"""A function the host itself uses (its disks, its swap, its network link) is never offered unless
its rule says ``allow_host_in_use``: a captured NVMe holding a dm volume, and SYNTHETIC trees with
a ``proc`` folder beside their ``sys`` for mounts, swap and routes."""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from devassign.agent.cli import _table, app
from devassign.agent.config import ConfigError, parse_config
from devassign.agent.inventory import Inventory, build_inventory
from devassign.agent.model import FLAG_HOST_IN_USE, FoundDevice
from devassign.hostio import HostFiles, Sysfs
from devassign.testing.sysfs import SyntheticHost, host

NVME = "0000:01:00.0"
NIC = "0000:3b:00.0"
NVME_RULE = {"type": "NVME", "match": {"class": "0108"}}
NIC_RULE = {"type": "NIC", "match": {"vendor_id": "8086", "product_id": "1572"}}
# /proc/net/route: the header, then a default route (destination and mask 0, flags 0003: up, gateway).
ROUTE_HEADER = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
V4_DEFAULT = "{}\t00000000\t0102A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
V4_LAN = "{}\t0002A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n"
V6_DEFAULT = (
    "00000000000000000000000000000000 00 "
    + "0" * 32
    + " 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 {}\n"
)
# The unreachable default the kernel lists on lo (flags 0x200: reject).
V6_LO_REJECT = (
    "00000000000000000000000000000000 00 "
    + "0" * 32
    + " 00 "
    + "0" * 32
    + " ffffffff 00000001 00000000 00200200 lo\n"
)
Unpack = Callable[[str], Path]


def inventory(root: Path, *rules: dict[str, Any], warned: set[str] | None = None) -> Inventory:
    return build_inventory(
        Sysfs(root), parse_config({"host": "h", "device": list(rules)}), None, warned=warned
    )


def by_address(inv: Inventory) -> dict[str, FoundDevice]:
    return {d.address: d for d in inv.devices}


def proc(tmp_path: Path, rel: str, text: str) -> None:
    """A file of the host's /proc, beside the generated ``sys`` (``tmp_path/proc/...``)."""
    path = tmp_path / "proc" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def nvme(h: SyntheticHost, partitions: int = 2) -> None:
    """An NVMe controller with its disk nvme0n1 and partitions, as the kernel lays them out."""
    h.pci(NVME, "144d", "a808", cls="010802", driver="nvme", iommu_group=11)
    disk = f"{h.dev(NVME)}/nvme/nvme0/nvme0n1"
    h.write(f"{disk}/dev", "259:0")
    (h.root / disk / "holders").mkdir()
    for i in range(1, partitions + 1):
        h.write(f"{disk}/nvme0n1p{i}/dev", f"259:{i}")
        (h.root / disk / f"nvme0n1p{i}" / "holders").mkdir()


def nic(h: SyntheticHost, ifname: str = "eno1") -> None:
    h.pci(NIC, "8086", "1572", driver="i40e", iommu_group=20)
    h.netdev(NIC, ifname)


def test_the_hosts_nvme_whose_partition_holds_a_dm_volume_is_not_offered(realdata: Unpack) -> None:
    """Captured tree (prometheus/procfs): nvme0n1p3 of 01:00.0 holds dm-0, the host's LVM or
    dm-crypt volume. A rule for every NVMe drive must not hand the host's disk to a tenant."""
    root = realdata("procfs-nvme-in-use.tar.gz") / "sys"
    dev = by_address(inventory(root, NVME_RULE))[NVME]
    assert (dev.vendor_id, dev.product_id, dev.iommu_group, dev.driver) == ("c0a9", "540a", 11, "nvme")
    assert dev.type == "NVME" and not dev.offered
    assert FLAG_HOST_IN_USE in dev.flags and dev.host_use == ["nvme0n1p3 is held by dm-0"]
    opted = by_address(inventory(root, {**NVME_RULE, "allow_host_in_use": True}))[NVME]
    assert opted.offered and opted.host_use == ["nvme0n1p3 is held by dm-0"]


@pytest.mark.parametrize(
    ("rel", "text", "why"),
    [
        ("self/mounts", "/dev/nvme0n1p2 / ext4 rw,relatime 0 0\n", "nvme0n1p2 is mounted at /"),
        ("mounts", "/dev/nvme0n1p1 /boot\\040efi vfat rw 0 0\n", "nvme0n1p1 is mounted at /boot efi"),
        ("self/mounts", "/dev/nvme0n1 /srv xfs rw 0 0\n", "nvme0n1 is mounted at /srv"),
        (
            "swaps",
            "Filename\tType\tSize\tUsed\tPriority\n/dev/nvme0n1p2 partition 8388604 0 -2\n",
            "nvme0n1p2 is swap",
        ),
    ],
)
def test_a_mounted_or_swap_block_device_makes_its_controller_host_in_use(
    tmp_path: Path, rel: str, text: str, why: str
) -> None:
    h = host(tmp_path)
    nvme(h)
    proc(tmp_path, rel, text)
    dev = by_address(inventory(h.root, NVME_RULE))[NVME]
    assert dev.host_use == [why] and not dev.offered


def test_a_mount_named_by_a_dev_disk_link_is_followed(tmp_path: Path) -> None:
    h = host(tmp_path)
    nvme(h)
    (tmp_path / "dev/disk/by-uuid").mkdir(parents=True)
    os.symlink("../../nvme0n1p2", tmp_path / "dev/disk/by-uuid/0a1b")
    proc(tmp_path, "self/mounts", "/dev/disk/by-uuid/0a1b /home ext4 rw 0 0\n")
    assert by_address(inventory(h.root, NVME_RULE))[NVME].host_use == ["nvme0n1p2 is mounted at /home"]


def test_a_disk_nothing_uses_is_offered_and_missing_proc_files_mean_unknown(tmp_path: Path) -> None:
    """No /proc beside the tree (a captured tree, a wrong root): nothing is known to be in use;
    mounts of other disks, tmpfs and device-mapper volumes say nothing about this one."""
    h = host(tmp_path)
    nvme(h)
    assert by_address(inventory(h.root, NVME_RULE))[NVME].offered
    proc(
        tmp_path,
        "self/mounts",
        "tmpfs /run tmpfs rw 0 0\n/dev/sda1 / ext4 rw 0 0\n/dev/mapper/vg-root /x ext4 rw 0 0\n",
    )
    proc(tmp_path, "swaps", "Filename\tType\tSize\tUsed\tPriority\n/swapfile file 1024 0 -2\n")
    dev = by_address(inventory(h.root, NVME_RULE))[NVME]
    assert dev.offered and dev.flags == [] and dev.host_use == []


@pytest.mark.parametrize(
    ("route", "ipv6_route", "why"),
    [
        (V4_DEFAULT.format("eno1"), None, "eno1 carries the default route (IPv4)"),
        (None, V6_LO_REJECT + V6_DEFAULT.format("eno1"), "eno1 carries the default route (IPv6)"),
        (V4_DEFAULT.format("eno1"), V6_DEFAULT.format("eno1"), "eno1 carries the default route (IPv4, IPv6)"),
    ],
)
def test_a_nic_carrying_the_default_route_is_not_offered(
    tmp_path: Path, route: str | None, ipv6_route: str | None, why: str
) -> None:
    h = host(tmp_path)
    nic(h)
    if route is not None:
        proc(tmp_path, "net/route", ROUTE_HEADER + route)
    if ipv6_route is not None:
        proc(tmp_path, "net/ipv6_route", ipv6_route)
    dev = by_address(inventory(h.root, NIC_RULE))[NIC]
    assert dev.host_use == [why] and not dev.offered


def test_routes_to_a_lan_only_and_the_reject_route_on_lo_leave_a_nic_free(tmp_path: Path) -> None:
    h = host(tmp_path)
    nic(h)
    proc(tmp_path, "net/route", ROUTE_HEADER + V4_LAN.format("eno1") + V4_DEFAULT.format("eno2"))
    proc(tmp_path, "net/ipv6_route", V6_LO_REJECT)
    assert by_address(inventory(h.root, NIC_RULE))[NIC].offered


def test_a_bridge_or_bond_port_and_a_vlan_carrying_the_default_route_are_host_in_use(tmp_path: Path) -> None:
    h = host(tmp_path)
    nic(h)
    h.link(f"{h.dev(NIC)}/net/eno1/master", "../../../../virtual/net/br0")
    assert by_address(inventory(h.root, NIC_RULE))[NIC].host_use == ["eno1 is enslaved to br0"]
    (h.root / h.dev(NIC) / "net/eno1/master").unlink()
    h.link(f"{h.dev(NIC)}/net/eno1/upper_eno1.100", "../../../../virtual/net/eno1.100")
    proc(tmp_path, "net/route", ROUTE_HEADER + V4_DEFAULT.format("eno1.100"))
    dev = by_address(inventory(h.root, NIC_RULE))[NIC]
    assert dev.host_use == ["eno1 carries the default route (IPv4) through eno1.100"]


def test_the_vfs_of_a_pf_carrying_the_default_route_are_still_offered(tmp_path: Path) -> None:
    """Handing out a VF leaves the PF, and its link, with the host."""
    h = host(tmp_path)
    vfs = h.sriov_pf(NIC, "8086", "1572", vfs=2, vf_device="154c", ifname="eno1", vf_iommu_group_start=30)
    proc(tmp_path, "net/route", ROUTE_HEADER + V4_DEFAULT.format("eno1"))
    inv = inventory(h.root, {"type": "VF", "match": {"product_id": "154c"}})
    assert FLAG_HOST_IN_USE in by_address(inv)[NIC].flags
    assert sorted(d.address for d in inv.reported()) == vfs


def test_a_host_in_use_group_mate_keeps_the_group_from_a_guest(tmp_path: Path) -> None:
    """VFIO takes an IOMMU group whole: a GPU sharing one with the host's boot disk stays."""
    h = host(tmp_path)
    nvme(h)
    h.pci("0000:01:00.1", "10de", "1eb8", cls="030200", iommu_group=11)
    proc(tmp_path, "self/mounts", "/dev/nvme0n1p2 / ext4 rw 0 0\n")
    gpu_rule = {"type": "GPU", "match": {"vendor_id": "10de"}}
    devs = by_address(inventory(h.root, NVME_RULE, gpu_rule))
    assert not devs[NVME].offered and not devs["0000:01:00.1"].offered
    assert "iommu_group_not_isolated" in devs["0000:01:00.1"].flags


def test_allow_host_in_use_must_be_true_or_false() -> None:
    with pytest.raises(ConfigError, match="allow_host_in_use must be true or false"):
        parse_config({"device": [{**NVME_RULE, "allow_host_in_use": "yes"}]})
    assert parse_config({"device": [{**NVME_RULE, "allow_host_in_use": True}]}).devices[0].allow_host_in_use


def test_the_warning_is_logged_once_per_warned_set(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An agent reports every 30 s: it says once why the host's disk is not offered; a rule
    that does not match the device says nothing."""
    h = host(tmp_path)
    nvme(h)
    proc(tmp_path, "self/mounts", "/dev/nvme0n1p2 / ext4 rw 0 0\n")
    warned: set[str] = set()
    with caplog.at_level(logging.WARNING, logger="devassign.agent.inventory"):
        for _ in range(3):
            inventory(h.root, NVME_RULE, warned=warned)
        inventory(h.root, NIC_RULE, warned=set())
    lines = [r.getMessage() for r in caplog.records if "allow_host_in_use" in r.getMessage()]
    assert lines == [
        f"{NVME}: matches the rule for type NVME but is not offered: the host uses it "
        "(nvme0n1p2 is mounted at /); allow_host_in_use = true in the rule offers it anyway"
    ]


@pytest.mark.parametrize(
    ("present", "read"),
    [
        ("self/mountinfo", ["proc/self/mountinfo"]),  # mountinfo: mounts is not read
        ("self/mounts", ["proc/self/mountinfo", "proc/self/mounts"]),  # the fallback
    ],
)
def test_each_proc_file_is_read_once_per_scan(tmp_path: Path, present: str, read: list[str]) -> None:
    h = host(tmp_path)
    for i in range(4):
        h.pci(f"0000:0{i}:00.0", "144d", "a808", cls="010802")
    nic(h)
    h.usb("1-2", "0781", "5581")
    h.usb("1-3", "0bda", "8153")
    proc(tmp_path, present, "/dev/nvme0n1p2 / ext4 rw 0 0\n")
    reads: list[str] = []

    class Counting(HostFiles):
        def read(self, rel: str) -> str | None:
            reads.append(rel)
            return super().read(rel)

    config = parse_config({"host": "h", "device": [NVME_RULE]})
    build_inventory(Sysfs(h.root), config, None, files=Counting(tmp_path))
    assert sorted(reads) == sorted([*read, "proc/net/ipv6_route", "proc/net/route", "proc/swaps"])


def test_agent_discover_shows_the_flag_and_why(tmp_path: Path) -> None:
    h = host(tmp_path)
    nvme(h)
    proc(tmp_path, "swaps", "Filename\tType\tSize\tUsed\tPriority\n/dev/nvme0n1p1 partition 8 0 -2\n")
    conf = tmp_path / "agent.toml"
    conf.write_text('host = "h1"\n[[device]]\ntype = "NVME"\nmatch = { class = "0108" }\n')
    runner = CliRunner()
    res = runner.invoke(app, ["discover", "-c", str(conf), "--sysfs-root", str(h.root), "-f", "json"])
    assert res.exit_code == 0, res.output
    (dev,) = [d for d in json.loads(res.stdout) if d["address"] == NVME]
    assert (dev["offered"], dev["flags"], dev["host_use"]) == (False, ["host_in_use"], ["nvme0n1p1 is swap"])
    # The table's notes column (the printed table wraps it to the terminal's width).
    headers, rows = _table(build_inventory(Sysfs(h.root), parse_config({"device": [NVME_RULE]}), None))
    assert [row[headers.index("notes")] for row in rows] == ["host_in_use: nvme0n1p1 is swap"]


# ---------------------------------------------------------------- mounts by device number
def test_a_root_the_kernel_lists_as_dev_root_is_found_by_its_device_number(tmp_path: Path) -> None:
    """A kernel that mounts the root itself (no initramfs: Ubuntu's cloud images, Raspberry Pi
    OS) lists it as ``/dev/root``, a name with no node in /dev; mountinfo's MAJOR:MINOR
    (259:2) is nvme0n1p2's ``dev``."""
    h = host(tmp_path)
    nvme(h)
    proc(tmp_path, "self/mounts", "/dev/root / ext4 rw,relatime,discard 0 0\n")
    proc(tmp_path, "self/mountinfo", "22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/root rw,discard\n")
    dev = by_address(inventory(h.root, NVME_RULE))[NVME]
    assert dev.host_use == ["nvme0n1p2 is mounted at /"] and not dev.offered


def test_mountinfo_sources_still_count_by_name_and_its_fields_are_unescaped(tmp_path: Path) -> None:
    """btrfs shows an anonymous device number (0:NN) that no block device has: its source
    names the disk. Optional fields before ``-`` vary in number; mount points are escaped."""
    h = host(tmp_path)
    nvme(h, partitions=3)
    proc(
        tmp_path,
        "self/mountinfo",
        "22 1 0:31 /@ / rw shared:1 - btrfs /dev/nvme0n1p1 rw\n"
        "23 22 0:5 / /dev rw shared:2 master:7 - devtmpfs udev rw\n"
        "24 22 259:3 / /mnt/my\\040disk rw - ext4 /dev/disk/by-label/x rw\n",
    )
    dev = by_address(inventory(h.root, NVME_RULE))[NVME]
    assert dev.host_use == ["nvme0n1p1 is mounted at /", "nvme0n1p3 is mounted at /mnt/my disk"]


def test_an_escaped_mount_source_is_unescaped_before_its_dev_disk_link_is_followed(tmp_path: Path) -> None:
    """The kernel escapes a backslash in a mount's source as ``\\134``; udev names
    /dev/disk/by-partlabel links with ``\\x20`` for a blank ("EFI System Partition")."""
    h = host(tmp_path)
    nvme(h)
    links = tmp_path / "dev/disk/by-partlabel"
    links.mkdir(parents=True)
    os.symlink("../../nvme0n1p1", links / "EFI\\x20System\\x20Partition")
    proc(
        tmp_path,
        "self/mounts",
        "/dev/disk/by-partlabel/EFI\\134x20System\\134x20Partition /boot/efi vfat rw 0 0\n",
    )
    dev = by_address(inventory(h.root, NVME_RULE))[NVME]
    assert dev.host_use == ["nvme0n1p1 is mounted at /boot/efi"] and not dev.offered


# ---------------------------------------------------------------- NVMe multipath
def multipath_nvme(h: SyntheticHost) -> None:
    """Native NVMe multipath: below the controller only the hidden path device ``nvme0c0n1``;
    the namespace the host uses, ``nvme0n1`` and its partitions, is under
    ``virtual/nvme-subsystem`` (links as the kernel makes them)."""
    h.pci(NVME, "144d", "a824", cls="010802", driver="nvme", iommu_group=11)
    path_dev = f"{h.dev(NVME)}/nvme/nvme0/nvme0c0n1"
    (h.root / path_dev / "holders").mkdir(parents=True)
    (h.root / path_dev / "slaves").mkdir()
    head = "devices/virtual/nvme-subsystem/nvme-subsys0/nvme0n1"
    h.write(f"{head}/dev", "259:0")
    (h.root / head / "holders").mkdir()
    for i in (1, 2):
        h.write(f"{head}/nvme0n1p{i}/dev", f"259:{i}")
        (h.root / head / f"nvme0n1p{i}" / "holders").mkdir()
    h.link(f"{head}/multipath/nvme0c0n1", f"../../../../../../{path_dev}")
    h.link("devices/virtual/nvme-subsystem/nvme-subsys0/nvme0", f"../../../../{h.dev(NVME)}/nvme/nvme0")
    h.link("block/nvme0n1", f"../{head}")
    h.link("class/block/nvme0n1", f"../../{head}")
    h.link("class/block/nvme0c0n1", f"../../{path_dev}")


@pytest.mark.parametrize(
    ("rel", "text", "why"),
    [
        ("self/mounts", "/dev/nvme0n1p2 / ext4 rw 0 0\n", "nvme0n1p2 is mounted at /"),
        ("self/mountinfo", "22 1 259:2 / / rw - ext4 /dev/root rw\n", "nvme0n1p2 is mounted at /"),
        ("swaps", "Filename Type Size Used Priority\n/dev/nvme0n1p1 partition 8 0 -2\n", "nvme0n1p1 is swap"),
    ],
)
def test_a_multipath_nvme_namespace_the_host_uses_keeps_its_controller(
    tmp_path: Path, rel: str, text: str, why: str
) -> None:
    h = host(tmp_path)
    multipath_nvme(h)
    proc(tmp_path, rel, text)
    dev = by_address(inventory(h.root, NVME_RULE))[NVME]
    assert dev.host_use == [why] and not dev.offered


def test_a_multipath_nvme_namespace_held_by_a_volume_keeps_its_controller_and_an_unused_one_does_not(
    tmp_path: Path,
) -> None:
    h = host(tmp_path)
    multipath_nvme(h)
    assert by_address(inventory(h.root, NVME_RULE))[NVME].offered
    (h.root / "devices/virtual/nvme-subsystem/nvme-subsys0/nvme0n1/holders/md0").mkdir()
    assert by_address(inventory(h.root, NVME_RULE))[NVME].host_use == ["nvme0n1 is held by md0"]


# ---------------------------------------------------------------- stacked interfaces
def vlan_on_bridge(h: SyntheticHost) -> None:
    """eno1 -> eno1.100 (a VLAN) -> br0 (a bridge with the VLAN as its port): Proxmox's vmbr0
    on a VLAN."""
    nic(h)
    h.link(f"{h.dev(NIC)}/net/eno1/upper_eno1.100", "../../../../virtual/net/eno1.100")
    h.write("devices/virtual/net/eno1.100/operstate", "up")
    nic_dir = h.dev(NIC).removeprefix("devices/")
    h.link("devices/virtual/net/eno1.100/lower_eno1", f"../../../{nic_dir}/net/eno1")
    h.link("devices/virtual/net/eno1.100/master", "../br0")
    h.link("devices/virtual/net/eno1.100/upper_br0", "../br0")
    h.write("devices/virtual/net/br0/operstate", "up")
    h.link("devices/virtual/net/br0/lower_eno1.100", "../eno1.100")
    h.link("class/net/eno1", f"../../{h.dev(NIC)}/net/eno1")
    for name in ("eno1.100", "br0"):
        h.link(f"class/net/{name}", f"../../devices/virtual/net/{name}")


def test_a_nic_under_a_vlan_that_is_a_bridge_port_carrying_the_default_route_is_host_in_use(
    tmp_path: Path,
) -> None:
    h = host(tmp_path)
    vlan_on_bridge(h)
    assert by_address(inventory(h.root, NIC_RULE))[NIC].offered  # no default route anywhere
    proc(tmp_path, "net/route", ROUTE_HEADER + V4_DEFAULT.format("br0"))
    dev = by_address(inventory(h.root, NIC_RULE))[NIC]
    assert dev.host_use == ["eno1 carries the default route (IPv4) through eno1.100 -> br0"]
    assert not dev.offered


def test_a_master_only_link_is_followed_and_a_loop_of_links_ends(tmp_path: Path) -> None:
    """A bridge reached through ``master`` alone (no ``upper_`` link) counts; links that lead
    back (br0 -> eno1.100) are not followed twice, so the walk ends."""
    h = host(tmp_path)
    vlan_on_bridge(h)
    (h.root / "devices/virtual/net/eno1.100/upper_br0").unlink()
    h.link("devices/virtual/net/br0/upper_eno1.100", "../eno1.100")
    h.link("devices/virtual/net/br0/master", "../eno1.100")
    proc(tmp_path, "net/route", ROUTE_HEADER + V4_DEFAULT.format("br0"))
    dev = by_address(inventory(h.root, NIC_RULE))[NIC]
    assert dev.host_use == ["eno1 carries the default route (IPv4) through eno1.100 -> br0"]


def test_interfaces_stacked_deeper_than_the_walk_goes_are_not_followed(tmp_path: Path) -> None:
    """eno1 -> v0 -> v1 ... -> v9: six levels up are looked at, no more."""
    h = host(tmp_path)
    nic(h)
    names = ["eno1"] + [f"v{i}" for i in range(10)]
    h.link("class/net/eno1", f"../../{h.dev(NIC)}/net/eno1")
    for lower, upper in itertools.pairwise(names):
        folder = f"{h.dev(NIC)}/net/eno1" if lower == "eno1" else f"class/net/{lower}"
        h.link(f"{folder}/upper_{upper}", "x")
    for name in names[1:]:
        (h.root / "class/net" / name).mkdir(parents=True, exist_ok=True)
    proc(tmp_path, "net/route", ROUTE_HEADER + V4_DEFAULT.format("v5"))
    assert by_address(inventory(h.root, NIC_RULE))[NIC].host_use == [
        "eno1 carries the default route (IPv4) through v0 -> v1 -> v2 -> v3 -> v4 -> v5"
    ]
    proc(tmp_path, "net/route", ROUTE_HEADER + V4_DEFAULT.format("v6"))
    assert by_address(inventory(h.root, NIC_RULE))[NIC].offered


# ---------------------------------------------------------------- USB devices
USB_RULE = {"type": "USB", "match": {"kind": "usb"}}


def test_a_usb_disk_the_host_has_mounted_is_not_offered(tmp_path: Path) -> None:
    """Passing a USB device through detaches usb-storage from the host as vfio-pci detaches
    nvme: the host's boot stick or backup disk stays."""
    h = host(tmp_path)
    d = h.usb("1-2", "0781", "5581", serial="4C530001")
    disk = d / "1-2:1.0" / "host4" / "target4:0:0" / "4:0:0:0" / "block" / "sdb"
    (disk / "holders").mkdir(parents=True)
    (disk / "dev").write_text("8:16\n")
    (disk / "sdb1" / "holders").mkdir(parents=True)
    (disk / "sdb1" / "dev").write_text("8:17\n")
    (dev,) = [x for x in inventory(h.root, USB_RULE).devices if x.kind.value == "usb"]
    assert dev.offered
    proc(tmp_path, "self/mounts", "/dev/sdb1 / ext4 rw,relatime 0 0\n")
    (dev,) = [x for x in inventory(h.root, USB_RULE).devices if x.kind.value == "usb"]
    assert dev.type == "USB" and dev.host_use == ["sdb1 is mounted at /"] and not dev.offered


def test_a_usb_nic_carrying_the_default_route_is_not_offered(tmp_path: Path) -> None:
    h = host(tmp_path)
    d = h.usb("1-3", "0bda", "8153", serial="000001")
    (d / "1-3:1.0" / "net" / "enx00e04c680001").mkdir(parents=True)
    proc(tmp_path, "net/route", ROUTE_HEADER + V4_DEFAULT.format("enx00e04c680001"))
    (dev,) = [x for x in inventory(h.root, USB_RULE).devices if x.kind.value == "usb"]
    assert dev.host_use == ["enx00e04c680001 carries the default route (IPv4)"] and not dev.offered


def test_a_disk_captured_without_holders_is_still_seen(tmp_path: Path) -> None:
    """Captured trees (ghw's) keep no ``holders`` folders: the laptop's NVMe holding /boot and
    the server's RAID controller holding /boot were offered. A disk is known by its name in
    ``block/`` and by its place in a ``block`` folder too."""
    h = host(tmp_path)
    h.pci(NVME, "144d", "a808", cls="010802", driver="nvme", iommu_group=11)
    disk = f"{h.dev(NVME)}/nvme/nvme0/nvme0n1"
    h.write(f"{disk}/dev", "259:0")
    h.write(f"{disk}/nvme0n1p2/dev", "259:2")
    (h.root / "block").mkdir(exist_ok=True)
    os.symlink(h.root / disk, h.root / "block" / "nvme0n1")
    raid = "0000:03:00.0"
    h.pci(raid, "1000", "0060", cls="010400", driver="megaraid_sas", iommu_group=12)
    h.write(f"{h.dev(raid)}/host2/target2:2:0/2:2:0:0/block/sda/sda2/dev", "8:2")
    proc(tmp_path, "self/mounts", "/dev/nvme0n1p2 /boot ext4 rw 0 0\n/dev/sda2 /srv xfs rw 0 0\n")
    found = by_address(inventory(h.root, NVME_RULE, {"type": "RAID", "match": {"class": "0104"}}))
    assert found[NVME].host_use == ["nvme0n1p2 is mounted at /boot"] and not found[NVME].offered
    assert found[raid].host_use == ["sda2 is mounted at /srv"] and not found[raid].offered


def test_a_sysfs_root_given_through_a_link_finds_the_hosts_files_beside_the_tree(tmp_path: Path) -> None:
    h = host(tmp_path / "machine")
    nvme(h)
    proc(tmp_path / "machine", "self/mounts", "/dev/nvme0n1p2 / ext4 rw 0 0\n")
    link = tmp_path / "elsewhere" / "sysroot"
    link.parent.mkdir()
    os.symlink(h.root, link)
    assert by_address(inventory(link, NVME_RULE))[NVME].host_use == ["nvme0n1p2 is mounted at /"]


def test_agent_discover_says_which_rules_type_nothing(tmp_path: Path) -> None:
    h = host(tmp_path)
    nvme(h)
    conf = tmp_path / "agent.toml"
    conf.write_text(
        'host = "h1"\n[[device]]\ntype = "NVME"\nmatch = { class = "0108" }\n'
        '[[device]]\ntype = "GPU"\nmatch = { vendor_id = "10de" }\n'
    )
    res = CliRunner().invoke(app, ["discover", "-c", str(conf), "--sysfs-root", str(h.root), "-f", "json"])
    assert res.exit_code == 0, res.output
    assert "no device here matches the rules for type GPU" in res.stderr
    assert "type NVME" not in res.stderr
    assert [d["type"] for d in json.loads(res.stdout) if d["address"] == NVME] == ["NVME"]


def test_agent_discover_says_when_a_type_takes_devices_of_several_classes(tmp_path: Path) -> None:
    """A vendor-only rule took an AMD GPU and its HDMI audio function as two GPUs."""
    h = host(tmp_path)
    h.pci("0000:0a:00.0", "1002", "6758", cls="030000", driver="vfio-pci", iommu_group=14)
    h.pci("0000:0a:00.1", "1002", "aa90", cls="040300", driver="vfio-pci", iommu_group=14)
    conf = tmp_path / "agent.toml"
    conf.write_text('host = "h1"\n[[device]]\ntype = "GPU_AMD"\nmatch = { vendor_id = "1002" }\n')
    res = CliRunner().invoke(app, ["discover", "-c", str(conf), "--sysfs-root", str(h.root)])
    assert res.exit_code == 0, res.output
    assert "type GPU_AMD takes devices of PCI classes 03, 04" in res.stderr


def test_agent_discover_says_when_a_glob_leaves_out_the_vfs_it_matches(tmp_path: Path) -> None:
    """Nova's address globs take VFs; a devassign rule only with match_vfs. The note said only
    that nothing matched, with four VFs at the addresses the glob names."""
    h = host(tmp_path)
    h.sriov_pf("0000:5e:00.0", "8086", "1572", vfs=4, vf_device="154c", ifname="ens1f0")
    conf = tmp_path / "agent.toml"
    conf.write_text('host = "h1"\n[[device]]\ntype = "VF"\nmatch = { address = "0000:5e:10.*" }\n')
    res = CliRunner().invoke(app, ["discover", "-c", str(conf), "--sysfs-root", str(h.root), "-f", "json"])
    assert res.exit_code == 0, res.output
    assert (
        "type VF: 4 SR-IOV VFs match its rule, which does not take VFs (add match_vfs = true)" in res.stderr
    )
    conf.write_text(conf.read_text() + "match_vfs = true\n")
    res = CliRunner().invoke(app, ["discover", "-c", str(conf), "--sysfs-root", str(h.root), "-f", "json"])
    assert "note:" not in res.stderr and sum(d["type"] == "VF" for d in json.loads(res.stdout)) == 4


def test_agent_discover_names_the_earlier_rule_that_takes_a_types_devices(tmp_path: Path) -> None:
    """Two rules match the same VFs: the first gives their type. The second's note said no
    device matched it and, for a rule that takes VFs already, to add match_vfs."""
    h = host(tmp_path)
    h.sriov_pf("0000:5e:00.0", "8086", "1572", vfs=2, vf_device="154c", ifname="ens1f0")
    conf = tmp_path / "agent.toml"
    conf.write_text(
        'host = "h1"\n[[device]]\ntype = "A"\nmatch = { product_id = "154c", kind = "sriov_vf" }\n'
        '[[device]]\ntype = "B"\nmatch = { vendor_id = "8086", kind = "sriov_vf" }\n'
    )
    res = CliRunner().invoke(app, ["discover", "-c", str(conf), "--sysfs-root", str(h.root), "-f", "json"])
    assert res.exit_code == 0, res.output
    assert (
        "type B gets no device: its rule matches devices an earlier rule takes (2 to type A (" in res.stderr
    )
    assert "match_vfs" not in res.stderr and "no device here matches" not in res.stderr


def test_agent_discover_says_the_state_file_cannot_be_read(tmp_path: Path) -> None:
    h = host(tmp_path)
    nvme(h)
    (tmp_path / "state.json").write_text("{not json")
    conf = tmp_path / "agent.toml"
    conf.write_text(
        'host = "h1"\nstate_file = "state.json"\n[[device]]\ntype = "NVME"\nmatch = { class = "0108" }\n'
    )
    res = CliRunner().invoke(app, ["discover", "-c", str(conf), "--sysfs-root", str(h.root)])
    assert res.exit_code == 0, res.output
    assert "state.json cannot be read (`agent run` refuses it" in res.stderr


def test_agent_discover_notes_a_function_without_an_iommu_group(tmp_path: Path) -> None:
    h = host(tmp_path)
    h.pci("0000:90:00.0", "1d0f", "efa0", cls="020000", iommu_group=None)
    conf = tmp_path / "agent.toml"
    conf.write_text('host = "h1"\n[[device]]\ntype = "EFA"\nmatch = { vendor_id = "1d0f" }\n')
    res = CliRunner().invoke(app, ["discover", "-c", str(conf), "--sysfs-root", str(h.root)])
    assert res.exit_code == 0, res.output
    assert "no_iommu_group" in res.stdout
