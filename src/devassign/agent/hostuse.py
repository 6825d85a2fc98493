"""Whether the host itself uses a device: its disks, its swap, the link it talks on.

A plain rule such as ``class = "0108"`` (every NVMe drive) also matches the controller the host
boots from, and binding that to vfio-pci pulls the host's storage (or, for a NIC, its network)
from under it; a ``kind = "usb"`` rule likewise takes a USB disk from usb-storage. Discovery
therefore flags a PCI function or USB device whose block devices (the disk or any partition;
for a hidden NVMe multipath path device, the namespace's head disk) are held by another block
device (LVM, dm-crypt, md RAID), mounted or used as swap, or whose network interface carries
the default route, itself or through the interfaces stacked on it (VLANs, bridges, bonds,
followed up to a few levels), or is enslaved to a bridge or bond.

Mounts are matched by device number (``/proc/self/mountinfo`` against each block device's
``dev``), so ``/dev/root`` counts, and by the source's kernel name (``/proc/self/mounts`` where
there is no mountinfo). The ``/proc`` files are read once per scan (:func:`read_host_use`),
through :class:`~devassign.hostio.HostFiles` beside the sysfs root, so tests give both. A file
that is missing or unreadable says nothing: unknown is not "in use" (holders and ``master``
links, read from sysfs, still count).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from devassign.domain import PCI_ADDRESS_RE
from devassign.hostio import HostFiles, Sysfs
from devassign.schemas import value_problem

# Sub-folders of a device that never hold block devices: skipped so that a walk below a NIC
# or a GPU stays a handful of folder reads (a NIC's ``net/*/queues`` alone can be hundreds).
_NO_STORAGE = frozenset(
    {
        "drm",
        "graphics",
        "holders",
        "hwmon",
        "infiniband",
        "infiniband_verbs",
        "mdev_supported_types",
        "msi_irqs",
        "net",
        "power",
        "ptp",
        "slaves",
        "sound",
    }
)
# Deep enough for a USB disk behind hubs: usb1/1-1/1-1.2/1-1.2:1.0/host4/target4:0:0/4:0:0:0/block/sdb/sdb1.
_MAX_DEPTH = 12
# Reasons kept per function: enough to say why, not a host's whole mount table.
MAX_REASONS = 8
# Interfaces stacked on a NIC, followed upwards: levels (eno1 -> bond0 -> bond0.100 -> br0 is
# three) and interfaces in all (a trunk with many VLANs).
_MAX_NET_DEPTH = 6
_MAX_NET_SEEN = 64
# A hidden path device of native NVMe multipath: nvme<subsystem>c<controller>n<namespace>.
_NVME_PATH_RE = re.compile(r"nvme([0-9]+)c([0-9]+)n([0-9]+)")
_OCTAL_RE = re.compile(r"\\([0-7]{3})")
_RTF_UP = 0x0001
_RTF_REJECT = 0x0200


@dataclass(frozen=True)
class HostUse:
    """What the host's ``/proc`` says it uses, by kernel name and by device number."""

    mounts: dict[str, str] = field(default_factory=dict)  # block device -> its first mount point
    swaps: frozenset[str] = frozenset()  # block devices used as swap
    routes: dict[str, str] = field(default_factory=dict)  # interface -> "IPv4", "IPv6", "IPv4, IPv6"
    mounted_numbers: dict[str, str] = field(default_factory=dict)  # "MAJOR:MINOR" -> first mount point
    # Members of a mounted multi-device filesystem that mountinfo does not name: btrfs lists
    # its devices under /sys/fs/btrfs/<fsid>/devices (a mounted filesystem's only), by name.
    members: dict[str, str] = field(default_factory=dict)  # block device -> "btrfs <fsid>"
    # The block devices sysfs lists (``block/``, ``class/block/``): a disk is known by its name
    # there as well as by its ``holders`` folder, which a captured or filtered tree may lack.
    disks: frozenset[str] = frozenset()


def read_host_use(files: HostFiles, sysfs: Sysfs | None = None) -> HostUse:
    """Mounts, swap and default routes, each file read once; with ``sysfs``, the members of
    mounted btrfs filesystems too."""
    mounts: dict[str, str] = {}
    numbers: dict[str, str] = {}
    mountinfo = files.read("proc/self/mountinfo")
    if mountinfo is not None:
        for number, source, point in _mountinfo(mountinfo):
            if not number.startswith("0:"):  # major 0: no block device (tmpfs, proc, btrfs subvolumes)
                numbers.setdefault(number, point)
            _add_mount(files, mounts, source, point)
    else:
        for line in _lines(files.read("proc/self/mounts") or files.read("proc/mounts") or ""):
            parts = line.split(" ")
            if len(parts) >= 2:
                _add_mount(files, mounts, _unescape(parts[0]), _unescape(parts[1]))
    swaps = set()
    for line in _lines(files.read("proc/swaps") or "")[1:]:  # a header line first
        source = line.split(" ", 1)[0].split("\t", 1)[0]  # the path, its blanks escaped
        name = _device_name(files, _unescape(source)) if source else None
        if name is not None:
            swaps.add(name)
    routes: dict[str, list[str]] = {}
    for iface in _default_v4(files.read("proc/net/route") or ""):
        routes.setdefault(iface, []).append("IPv4")
    for iface in _default_v6(files.read("proc/net/ipv6_route") or ""):
        if "IPv6" not in routes.setdefault(iface, []):
            routes[iface].append("IPv6")
    members: dict[str, str] = {}
    disks: set[str] = set()
    if sysfs is not None:
        for fsid in sysfs.listdir("fs/btrfs"):
            for name in sysfs.listdir(f"fs/btrfs/{fsid}/devices"):
                members.setdefault(name, f"btrfs {fsid}")
        disks.update(sysfs.listdir("block"), sysfs.listdir("class/block"))
    by_route = {i: ", ".join(f) for i, f in routes.items()}
    return HostUse(mounts, frozenset(swaps), by_route, numbers, members, frozenset(disks))


def _lines(text: str) -> list[str]:
    """The lines of a /proc file: split at newlines only, as the kernel writes them
    (``splitlines`` also splits at U+2028, ``\\x1c``..., which a mount point may hold)."""
    return text.split("\n")


def _mountinfo(text: str) -> Iterator[tuple[str, str, str]]:
    """``(MAJOR:MINOR, source, mount point)`` of each ``/proc/self/mountinfo`` line: ``36 35
    98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw`` (proc(5)); the optional fields
    before ``-`` vary in number."""
    for line in _lines(text):
        f = line.split(" ")  # the kernel's separator: a mount point may hold other blanks
        if len(f) < 7 or "-" not in f[6:]:
            continue
        rest = f[f.index("-", 6) + 1 :]
        yield f[2], _unescape(rest[1]) if len(rest) >= 2 else "", _unescape(f[4])


def _add_mount(files: HostFiles, mounts: dict[str, str], source: str, point: str) -> None:
    name = _device_name(files, source)
    if name is not None:
        mounts.setdefault(name, point)


def _unescape(text: str) -> str:
    """``/mnt/my\\040disk`` -> ``/mnt/my disk`` (the kernel escapes blanks, tabs, newlines and
    backslashes in these files, in mount sources as in mount points)."""
    return _OCTAL_RE.sub(lambda m: chr(int(m.group(1), 8)), text)


def _device_name(files: HostFiles, source: str) -> str | None:
    """The kernel name of a mounted or swap device: ``/dev/nvme0n1p2`` -> ``nvme0n1p2``, a
    ``/dev/disk/by-*`` link by its target. Others (``/dev/mapper/*`` is a device-mapper volume,
    whose disks list it as a holder anyway; ``tmpfs``; a swap file) are ``None``. ``/dev/root``
    gives ``root``, which names no device: mountinfo's device number finds that one."""
    if not source.startswith("/dev/") or source.startswith("/dev/mapper/"):
        return None
    return files.link_name(source) or source.rsplit("/", 1)[1] or None


def _default_v4(text: str) -> Iterator[str]:
    """Interfaces of ``/proc/net/route`` lines with destination and mask 0, up."""
    for line in _lines(text)[1:]:
        f = [x.strip(" ") for x in line.split("\t")]  # tab-separated, padded with blanks
        if len(f) >= 8 and f[1] == "00000000" and f[7] == "00000000" and _flags(f[3]) & _RTF_UP:
            yield f[0]


def _default_v6(text: str) -> Iterator[str]:
    """Interfaces of ``/proc/net/ipv6_route`` lines for ``::/0`` that are up and no reject
    route (the kernel lists an unreachable default on ``lo``)."""
    for line in _lines(text):
        f = [x for x in line.split(" ") if x]  # blank-separated, the name right-aligned
        if len(f) >= 10 and f[0] == "0" * 32 and f[1] == "00" and f[9] != "lo":
            flags = _flags(f[8])
            if flags & _RTF_UP and not flags & _RTF_REJECT:
                yield f[9]


def _shown(name: str) -> str:
    """A name as a reason may print it: ``ascii()`` of one that is no text (an interface
    renamed to ``b'\\xe9th0'``), so that ``agent discover`` can always print the reason."""
    return name if name.isprintable() and value_problem(name) is None else ascii(name)


def _flags(text: str) -> int:
    try:
        return int(text, 16)
    except ValueError:
        return 0


def host_use_reasons(sysfs: Sysfs, base: str, use: HostUse) -> list[str]:
    """Why the host uses the device at ``base`` (``bus/pci/devices/ADDR``, a USB device's
    ``bus/usb/devices/BUSID``), empty when it does not: each block device below it that is
    held, mounted or swap, each network interface below it that carries a default route
    (itself or through the interfaces stacked on it) or has a master."""
    reasons: list[str] = []
    for kind, rel, name in _below(sysfs, base, sysfs.subfolders(base), 0, set(), use.disks):
        if kind == "net":
            reasons.extend(_net_reasons(sysfs, rel, name, use))
        else:
            reasons.extend(_block_reasons(sysfs, rel, name, use))
        if len(reasons) >= MAX_REASONS:
            break
    return reasons[:MAX_REASONS]


def _block_reasons(sysfs: Sysfs, rel: str, name: str, use: HostUse) -> list[str]:
    out = []
    holders = sysfs.listdir(f"{rel}/holders")
    if holders:
        out.append(f"{_shown(name)} is held by {', '.join(map(_shown, holders))}")
    point = use.mounts.get(name)
    if point is None and use.mounted_numbers:  # /dev/root, or a source no /dev name gives
        point = use.mounted_numbers.get(sysfs.read(f"{rel}/dev") or "")
    if point is not None:
        out.append(f"{_shown(name)} is mounted at {_shown(point)}")
    elif name in use.members:
        out.append(f"{_shown(name)} is a device of the mounted {_shown(use.members[name])}")
    if name in use.swaps:
        out.append(f"{_shown(name)} is swap")
    return out


def _net_reasons(sysfs: Sysfs, rel: str, ifname: str, use: HostUse) -> list[str]:
    out = []
    shown = _shown(ifname)
    if ifname in use.routes:
        out.append(f"{shown} carries the default route ({use.routes[ifname]})")
    listing = sysfs.listdir(rel)
    if "master" in listing:  # a bridge port, a bond's slave (an OVS port: ovs-system)
        master = sysfs.link_name(f"{rel}/master")
        out.append(f"{shown} is enslaved to {_shown(master) if master else 'another interface'}")
    # The interfaces stacked on it, breadth first: a VLAN or macvlan (upper_*), a bridge or
    # bond it or they are ports of (master), and so on (eno1 -> eno1.100 -> br0).
    seen = {ifname}
    level = [(rel, listing, "")]
    for _ in range(_MAX_NET_DEPTH):
        following = []
        for path, entries, chain in level:
            for upper in _uppers(sysfs, path, entries):
                if upper in seen or len(seen) >= _MAX_NET_SEEN:
                    continue
                seen.add(upper)
                through = f"{chain} -> {_shown(upper)}" if chain else _shown(upper)
                if upper in use.routes:
                    out.append(f"{shown} carries the default route ({use.routes[upper]}) through {through}")
                upper_rel = f"class/net/{upper}"
                following.append((upper_rel, sysfs.listdir(upper_rel), through))
        level = following
    return out


def _uppers(sysfs: Sysfs, rel: str, entries: list[str]) -> list[str]:
    """The interfaces directly on top of the one at ``rel``: its ``upper_*`` links and its
    ``master``."""
    found = [e.removeprefix("upper_") for e in entries if e.startswith("upper_") and e != "upper_"]
    if "master" in entries:
        master = sysfs.link_name(f"{rel}/master")
        if master and master not in found:
            found.append(master)
    return found


def _below(
    sysfs: Sysfs, rel: str, subs: list[str], depth: int, heads: set[str], disks: frozenset[str]
) -> Iterator[tuple[str, str, str]]:
    """``(kind, path, kernel name)`` of each block device (kind ``block``) and network
    interface (``net``) in the folders ``subs`` of ``rel``. A block device is a folder with
    ``holders`` (disks and partitions have one), one in a ``block`` folder (SCSI disks), or
    one by a name of ``disks`` (a tree captured without ``holders``); below a disk only its
    partitions are looked at. An interface is an entry of a ``net`` folder, not entered. Other
    PCI functions (below a bridge) and folders that hold no storage are not entered, and each
    folder is read once.

    A hidden NVMe multipath path device (``nvme0c1n1``) stands for its head (``nvme0n1``, under
    ``virtual/nvme-subsystem``): the disk the host sees, looked at through ``class/block``."""
    for sub in subs:
        if sub in _NO_STORAGE or PCI_ADDRESS_RE.fullmatch(sub):
            if sub == "net":
                for ifname in sysfs.listdir(f"{rel}/net"):
                    yield "net", f"{rel}/net/{ifname}", ifname
            continue
        path = f"{rel}/{sub}"
        inner = sysfs.subfolders(path)
        if "holders" in inner or sub in disks or rel.endswith("/block"):
            yield from _disk(path, sub, inner)
            m = _NVME_PATH_RE.fullmatch(sub)
            if m is not None:
                head = f"nvme{m.group(1)}n{m.group(3)}"  # drivers/nvme/host/multipath.c names it so
                if head not in heads:
                    heads.add(head)
                    head_rel = f"class/block/{head}"
                    head_inner = sysfs.subfolders(head_rel)
                    if "holders" in head_inner or head in disks:
                        yield from _disk(head_rel, head, head_inner)
        elif depth < _MAX_DEPTH:
            yield from _below(sysfs, path, inner, depth + 1, heads, disks)


def _disk(path: str, name: str, inner: list[str]) -> Iterator[tuple[str, str, str]]:
    """A disk and its partitions (its sub-folders named after it: ``nvme0n1p1``, ``sda1``)."""
    yield "block", path, name
    for part in inner:
        if part.startswith(name) and part != name:
            yield "block", f"{path}/{part}", part
