"""Whether the host itself uses a PCI function: its disks, its swap, the link it talks on.

A plain rule such as ``class = "0108"`` (every NVMe drive) also matches the controller the host
boots from, and binding that to vfio-pci pulls the host's storage (or, for a NIC, its network)
from under it. Discovery therefore flags a function whose block devices (the disk or any
partition) are held by another block device (LVM, dm-crypt, md RAID), mounted or used as swap,
or whose network interface carries the default route or is enslaved to a bridge or bond.

The ``/proc`` files are read once per scan (:func:`read_host_use`), through
:class:`~devassign.hostio.HostFiles` beside the sysfs root, so tests give both. A file that is
missing or unreadable says nothing: unknown is not "in use" (holders and ``master`` links,
read from sysfs, still count).
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
_OCTAL_RE = re.compile(r"\\([0-7]{3})")
_RTF_UP = 0x0001
_RTF_REJECT = 0x0200


@dataclass(frozen=True)
class HostUse:
    """What the host's ``/proc`` says it uses, by kernel name."""

    mounts: dict[str, str] = field(default_factory=dict)  # block device -> its first mount point
    swaps: frozenset[str] = frozenset()  # block devices used as swap
    routes: dict[str, str] = field(default_factory=dict)  # interface -> "IPv4", "IPv6", "IPv4, IPv6"


def read_host_use(files: HostFiles) -> HostUse:
    """Mounts, swap and default routes, each file read once."""
    mounts: dict[str, str] = {}
    for line in (files.read("proc/self/mounts") or files.read("proc/mounts") or "").splitlines():
        parts = line.split()
        if len(parts) >= 2:
            name = _device_name(files, parts[0])
            if name is not None:
                mounts.setdefault(name, _unescape(parts[1]))
    swaps = set()
    for line in (files.read("proc/swaps") or "").splitlines()[1:]:  # a header line first
        parts = line.split()
        name = _device_name(files, _unescape(parts[0])) if parts else None
        if name is not None:
            swaps.add(name)
    routes: dict[str, list[str]] = {}
    for iface in _default_v4(files.read("proc/net/route") or ""):
        routes.setdefault(iface, []).append("IPv4")
    for iface in _default_v6(files.read("proc/net/ipv6_route") or ""):
        if "IPv6" not in routes.setdefault(iface, []):
            routes[iface].append("IPv6")
    return HostUse(mounts, frozenset(swaps), {i: ", ".join(f) for i, f in routes.items()})


def _unescape(text: str) -> str:
    """``/mnt/my\\040disk`` -> ``/mnt/my disk`` (the kernel escapes blanks in these files)."""
    return _OCTAL_RE.sub(lambda m: chr(int(m.group(1), 8)), text)


def _device_name(files: HostFiles, source: str) -> str | None:
    """The kernel name of a mounted or swap device: ``/dev/nvme0n1p2`` -> ``nvme0n1p2``, a
    ``/dev/disk/by-*`` link by its target. Others (``/dev/mapper/*`` is a device-mapper volume,
    whose disks list it as a holder anyway; ``tmpfs``; a swap file) are ``None``."""
    if not source.startswith("/dev/") or source.startswith("/dev/mapper/"):
        return None
    return files.link_name(source) or source.rsplit("/", 1)[1] or None


def _default_v4(text: str) -> Iterator[str]:
    """Interfaces of ``/proc/net/route`` lines with destination and mask 0, up."""
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) >= 8 and f[1] == "00000000" and f[7] == "00000000" and _flags(f[3]) & _RTF_UP:
            yield f[0]


def _default_v6(text: str) -> Iterator[str]:
    """Interfaces of ``/proc/net/ipv6_route`` lines for ``::/0`` that are up and no reject
    route (the kernel lists an unreachable default on ``lo``)."""
    for line in text.splitlines():
        f = line.split()
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


def host_use_reasons(sysfs: Sysfs, base: str, entries: set[str], use: HostUse) -> list[str]:
    """Why the host uses the function at ``base`` (``bus/pci/devices/ADDR``), empty when it
    does not: each block device below it that is held, mounted or swap, each of its network
    interfaces that carries a default route or has a master."""
    reasons: list[str] = []
    if "net" in entries:
        for ifname in sysfs.listdir(f"{base}/net"):
            reasons.extend(_net_reasons(sysfs, f"{base}/net/{ifname}", ifname, use))
    for rel, name in _block_devices(sysfs, base, sysfs.subfolders(base), 0):
        holders = sysfs.listdir(f"{rel}/holders")
        if holders:
            reasons.append(f"{_shown(name)} is held by {', '.join(map(_shown, holders))}")
        if name in use.mounts:
            reasons.append(f"{_shown(name)} is mounted at {_shown(use.mounts[name])}")
        if name in use.swaps:
            reasons.append(f"{_shown(name)} is swap")
        if len(reasons) >= MAX_REASONS:
            break
    return reasons[:MAX_REASONS]


def _net_reasons(sysfs: Sysfs, rel: str, ifname: str, use: HostUse) -> list[str]:
    out = []
    shown = _shown(ifname)
    if ifname in use.routes:
        out.append(f"{shown} carries the default route ({use.routes[ifname]})")
    listing = sysfs.listdir(rel)
    if "master" in listing:  # a bridge port, a bond's slave (an OVS port: ovs-system)
        master = sysfs.link_name(f"{rel}/master")
        out.append(f"{shown} is enslaved to {_shown(master) if master else 'another interface'}")
    for entry in listing:  # a VLAN or macvlan on top of it that carries the default route
        upper = entry.removeprefix("upper_")
        if entry.startswith("upper_") and upper in use.routes:
            out.append(f"{shown} carries the default route ({use.routes[upper]}) through {_shown(upper)}")
    return out


def _block_devices(sysfs: Sysfs, rel: str, subs: list[str], depth: int) -> Iterator[tuple[str, str]]:
    """``(path, kernel name)`` of each block device in the folders ``subs`` of ``rel``: a folder
    with ``holders`` (disks and partitions have one). Below a disk only its partitions are
    looked at; other PCI functions (below a bridge) and folders that hold no storage are not
    entered, and each folder is read once."""
    for sub in subs:
        if sub in _NO_STORAGE or PCI_ADDRESS_RE.fullmatch(sub):
            continue
        path = f"{rel}/{sub}"
        inner = sysfs.subfolders(path)
        if "holders" in inner:
            yield path, sub
            for part in inner:
                if part.startswith(sub) and part != sub:
                    yield f"{path}/{part}", part
        elif depth < _MAX_DEPTH:
            yield from _block_devices(sysfs, path, inner, depth + 1)
