"""PCI discovery from sysfs: functions, SR-IOV PFs and VFs, mediated-device slots, IOMMU groups.

Reads only through :class:`~devassign.hostio.Sysfs` so tests point it at generated trees.
Devices come and go while a scan runs (Nova bug 1972028 crashed on that): a device that
vanished is skipped, an unreadable or odd attribute is left out, each with a warning.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devassign.agent.gpus import add_mig_placements, memory_mb
from devassign.agent.hostuse import HostUse, host_use_reasons, read_host_use
from devassign.agent.model import (
    FLAG_HOST_IN_USE,
    FLAG_ID_UNREADABLE,
    FLAG_MDEV_IN_USE,
    FLAG_VFS_ENABLED,
    FoundDevice,
)
from devassign.agent.pciids import DEFAULT_PCI_IDS, pci_name
from devassign.agent.vgpu import add_vgpus, is_mig_backed
from devassign.domain import PCI_ADDRESS_RE, DeviceKind, ascii_digits, mdev_address, nvidia_vgpu
from devassign.hostio import HostFiles, Sysfs
from devassign.schemas import value_problem

log = logging.getLogger(__name__)

_HEX_ID_RE = re.compile(r"^(?:0x)?([0-9a-fA-F]{4})$")
# ``sriov_vf_device`` is printed with %x, unpadded: ``10`` for 0x0010.
_VF_DEVICE_RE = re.compile(r"^(?:0x)?([0-9a-fA-F]{1,4})$")
_CLASS_RE = re.compile(r"^(?:0x)?([0-9a-fA-F]{6})$")
_CPULIST_RE = re.compile(r"^[0-9,\-]*$")
# What the kernel prints for a number: decimal (``-1`` for an unknown NUMA node) or ``0x`` hex.
# int() alone also takes ``1_000``, blanks and non-ASCII digits (``\u0663``).
_INT_RE = re.compile(r"^(?:-?[0-9]{1,19}|0x[0-9a-fA-F]{1,16})$")
_MDEV_TYPE_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
# Slots offered per mdev type at most: a driver that claims more (an odd or hostile value) would
# otherwise make one host's report larger than the server takes.
MAX_MDEV_SLOTS = 1024


@dataclass
class PciScan:
    """The PCI side of a host: every device found and every IOMMU group's members."""

    devices: list[FoundDevice] = field(default_factory=list)
    iommu_groups: dict[int, list[str]] = field(default_factory=dict)


def hex_id(raw: str | None, what: str, where: str) -> str | None:
    """``0x8086`` -> ``8086``; ``None`` (with a warning for odd values) otherwise."""
    if raw is None:
        return None
    m = _HEX_ID_RE.match(raw)
    if not m:
        log.warning("%s: ignoring odd %s %r", where, what, raw)
        return None
    return m.group(1).lower()


def vf_device_id(raw: str | None, where: str) -> str | None:
    """``sriov_vf_device`` as 4 digits: the kernel prints it with %x (``10`` -> ``0010``)."""
    if raw is None:
        return None
    m = _VF_DEVICE_RE.match(raw)
    if not m:
        log.warning("%s: ignoring odd sriov_vf_device %r", where, raw)
        return None
    return f"{int(m.group(1), 16):04x}"


def to_int(raw: str | None, what: str, where: str) -> int | None:
    """A number as the kernel prints it (ASCII decimal or ``0x`` hex); ``None``, with a
    warning for anything else."""
    if raw is None:
        return None
    if not _INT_RE.fullmatch(raw):
        log.warning("%s: ignoring odd %s %r", where, what, raw)
        return None
    return int(raw, 16) if raw.startswith("0x") else int(raw)


# A PCI root complex's folder: ``pci`` + domain (4 hex digits, 5 behind Intel VMD) + ``:`` + bus.
_ROOT_COMPLEX_RE = re.compile(r"^pci[0-9a-fA-F]{4,5}:[0-9a-fA-F]{2}$")


def pcie_root(sysfs: Sysfs, addr: str) -> str | None:
    """The PCI root complex a function sits under (``pci0000:3a``, as Kubernetes DRA's
    ``pcieRoot``): the first folder below ``devices`` of the path ``bus/pci/devices/ADDR``
    links to (``../../../devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0``). Devices under one
    root complex (a GPU and a NIC behind one socket's root ports or one switch) can talk
    peer to peer without crossing the socket interconnect. ``None`` where the entry is no link
    (some captured trees copy folders) or its target names no root complex."""
    target = sysfs.readlink(f"bus/pci/devices/{addr}")
    if target is None:
        return None
    parts = target.split("/")
    for before, part in itertools.pairwise(parts):
        if before == "devices" and _ROOT_COMPLEX_RE.fullmatch(part):
            return part.lower()
    return None


def drop_odd_values(devices: list[FoundDevice]) -> None:
    """Leave out, with a warning, each value no report can carry: names taken from the
    filesystem (an interface renamed to ``b'\\xe9th0'``, a driver's folder) may hold bytes
    that are no UTF-8 text (lone surrogates here), and a file may hold a NUL. The server
    would refuse the whole device for one such attribute; only the attribute goes."""
    for dev in devices:
        for key in [k for k, v in dev.attributes.items() if value_problem(v, k) or value_problem(k)]:
            log.warning("%s: ignoring odd %s %s", dev.address, key, ascii(dev.attributes.pop(key)))
        for name in ("driver", "parent", "mode"):
            value = getattr(dev, name)
            if value is not None and value_problem(value):
                log.warning("%s: ignoring odd %s %s", dev.address, name, ascii(value))
                setattr(dev, name, None)


def scan_pci(
    sysfs: Sysfs,
    pci_ids: Path | None = DEFAULT_PCI_IDS,
    vgpu_seen: dict[str, dict[str, Any]] | None = None,
    *,
    use: HostUse | None = None,
    own_mdevs: Collection[str] = (),
) -> PciScan:
    """Every PCI function under ``bus/pci/devices``, with mdev slots, vGPUs and IOMMU groups.

    ``vgpu_seen``: the vGPU 17+ types seen on each GPU so far (agent/vgpu.py), kept up to date.
    ``use``: what the host uses (agent/hostuse.py; the inventory reads it once for PCI and USB),
    by default read from the ``/proc`` beside the sysfs root. ``own_mdevs``: the UUIDs of the
    mdevs the agent made for its own holdings (:func:`_mdev_slots`)."""
    scan = PciScan()
    if not sysfs.is_dir("bus/pci/devices"):
        # A host without PCI is rare; a wrong --sysfs-root (or a container without /sys) is not.
        missing = "bus/pci/devices" if sysfs.is_dir("bus/pci") else "bus/pci"
        log.warning(
            "%s: no such folder, so no PCI devices found (is this sysfs? it is at /sys on a host)",
            sysfs.path(missing),
        )
        return scan
    physfn_of: dict[str, tuple[str, int]] = {}  # VF -> (PF, index), from the PF's virtfn links
    if use is None:
        use = read_host_use(HostFiles.beside(sysfs), sysfs)
    for addr in sysfs.listdir("bus/pci/devices"):
        if not PCI_ADDRESS_RE.fullmatch(addr):
            log.warning("bus/pci/devices: ignoring odd entry %r", addr)
            continue
        try:
            found = _read_function(sysfs, addr, pci_ids, physfn_of, use, own_mdevs)
        except OSError as exc:  # the seam should absorb these; never let one device end a scan
            log.warning("%s: skipped, %s", addr, exc)
            continue
        if found is not None:
            scan.devices.extend(found)
    _link_sriov(scan.devices, physfn_of)
    add_vgpus(sysfs, scan.devices, {} if vgpu_seen is None else vgpu_seen, memory_mb(scan.devices))
    add_mig_placements(scan.devices)
    _single_node_is_node_0(sysfs, scan.devices)
    scan.iommu_groups = _iommu_groups(sysfs, scan.devices)
    drop_odd_values(scan.devices)
    return scan


def _read_function(
    sysfs: Sysfs,
    addr: str,
    pci_ids: Path | None,
    physfn_of: dict[str, tuple[str, int]],
    use: HostUse,
    own_mdevs: Collection[str] = (),
) -> list[FoundDevice] | None:
    """One function and its mdev slots; ``None`` if it vanished while we looked."""
    base = f"bus/pci/devices/{addr}"
    entries = set(sysfs.listdir(base))
    if not entries:
        log.warning("%s: vanished during the scan, skipped", addr)
        return None

    def read(name: str) -> str | None:
        return sysfs.read(f"{base}/{name}") if name in entries else None

    dev = FoundDevice(address=addr, kind=DeviceKind.PCI)
    dev.vendor_id = hex_id(read("vendor"), "vendor", addr)
    dev.product_id = hex_id(read("device"), "device", addr)
    if dev.vendor_id is None or dev.product_id is None:
        log.warning("%s: vendor or device id unreadable, not offered", addr)
        dev.flag(FLAG_ID_UNREADABLE)
    attrs = dev.attributes
    cls = read("class")
    if cls is not None:
        m = _CLASS_RE.match(cls)
        if m:
            attrs["class"] = m.group(1).lower()
        else:
            log.warning("%s: ignoring odd class %r", addr, cls)
    for name in ("subsystem_vendor", "subsystem_device"):
        value = hex_id(read(name), name, addr)
        if value is not None:
            attrs[f"{name}_id"] = value
    numa = to_int(read("numa_node"), "numa_node", addr)
    dev.numa_node = numa if numa is not None and numa >= 0 else None
    cpus = read("local_cpulist")
    if cpus is not None and _CPULIST_RE.match(cpus):
        attrs["local_cpulist"] = cpus
    if "driver" in entries:
        dev.driver = sysfs.link_name(f"{base}/driver")
    if "iommu_group" in entries:
        # A link on real hosts; an empty folder in some captured trees (NFD): no group then.
        dev.iommu_group = to_int(sysfs.link_name(f"{base}/iommu_group"), "iommu_group", addr)
    if dev.iommu_group is None:
        # The IOMMU is off (or the tree does not say): VFIO cannot pass it through, and the
        # server refuses it for the types whose handler would (store/inventory.py).
        attrs["no_iommu_group"] = True
    # The server refuses a function the kernel cannot reset (a tenant's state could reach the
    # next one) unless its type accepts that; ``reset_method`` lists how (flr, pm, bus ...).
    # The kernel shows ``reset`` and ``reset_method`` together, but ``reset`` is write-only and
    # tools that capture sysfs trees drop it: either one says the function can be reset.
    methods = (read("reset_method") or "").split() if "reset_method" in entries else None
    attrs["resettable"] = "reset" in entries or bool(methods)
    if methods is not None:
        attrs["reset_methods"] = methods
    root = pcie_root(sysfs, addr)
    if root is not None:
        attrs["pcie_root"] = root
    human = pci_name(dev.vendor_id, dev.product_id, pci_ids)
    if human:
        attrs["name"] = human

    # SR-IOV (pci-iov-howto.rst): the PF lists virtfnN, each VF points back with physfn.
    if "physfn" in entries:
        dev.parent = sysfs.link_name(f"{base}/physfn")
    totalvfs = to_int(read("sriov_totalvfs"), "sriov_totalvfs", addr)
    numvfs = to_int(read("sriov_numvfs"), "sriov_numvfs", addr)
    virtfns = sorted(e for e in entries if e.startswith("virtfn") and ascii_digits(e[6:]))
    for link in virtfns:
        vf = sysfs.link_name(f"{base}/{link}")
        if vf is not None:
            physfn_of[vf] = (addr, int(link[6:]))
    if (totalvfs or 0) > 0 or virtfns:
        dev.kind = DeviceKind.SRIOV_PF
        attrs["sriov_totalvfs"] = totalvfs
        attrs["sriov_numvfs"] = numvfs if numvfs is not None else len(virtfns)
        vf_device = vf_device_id(read("sriov_vf_device"), addr)
        if vf_device:
            attrs["sriov_vf_device"] = vf_device
        if (numvfs or 0) > 0 or virtfns:
            dev.flag(FLAG_VFS_ENABLED)
    if "net" in entries:
        ifname = sysfs.netdev(base)
        if ifname:
            attrs["netdev"] = ifname
            state = sysfs.read(f"{base}/net/{ifname}/operstate")
            if state is not None:
                attrs["operstate"] = state
            speed = to_int(sysfs.read(f"{base}/net/{ifname}/speed"), "link speed", addr)
            if speed is not None and speed > 0:  # -1 while the link is down
                attrs["link_speed_mbps"] = speed
    dev.host_use = host_use_reasons(sysfs, base, use)
    if dev.host_use:
        dev.flag(FLAG_HOST_IN_USE)

    out = [dev]
    if "mdev_supported_types" in entries:
        out.extend(_mdev_slots(sysfs, dev, f"{base}/mdev_supported_types", own_mdevs))
    return out


def _vgpu_pool(sysfs: Sysfs, parent: FoundDevice, base: str, rel: str) -> tuple[str, int] | None:
    """Where the NVIDIA vGPUs of ``parent`` draw from (the GPU; for a VF of an SR-IOV GPU, its
    PF) and its framebuffer in MiB (the largest type's framebuffer x max instances), or ``None``
    when its types are not the NVIDIA vGPU manager's."""
    sizes = []
    for type_id in sysfs.listdir(base):
        found = nvidia_vgpu(sysfs.read(f"{base}/{type_id}/description"))
        if found is None:
            return None
        if not is_mig_backed(sysfs.read(f"{base}/{type_id}/name") or ""):
            sizes.append(found[0] * found[1])
    if not sizes:
        return None
    pf = sysfs.link_name(f"{rel}/physfn")
    return (pf if pf and PCI_ADDRESS_RE.match(pf) else parent.address), max(sizes)


def _mdev_slots(
    sysfs: Sysfs, parent: FoundDevice, base: str, own_mdevs: Collection[str] = ()
) -> list[FoundDevice]:
    """Each mdev type as N slots: free instances plus those already created (vfio-mediated-device.rst).

    A GPU with instances is flagged ``mdev_in_use`` (never offered whole), except where each
    of them is one the agent made for a slot it holds (``own_mdevs``) and the slots are
    partitions of the GPU itself: the server then knows the GPU is carved (the held slot's
    pool and parent) and counts it ``partitioned``; were it left out of the report, it would
    be ``removed`` for as long as the slot is used.

    The NVIDIA vGPU manager's types are partitions of their GPU (scheduler/shares.py): a
    time-sliced GPU runs one type at a time, and its driver shows 0 ``available_instances``
    for every other type while one runs. Their slots are what the GPU offers when empty
    (``max_instance`` of the type's description; one per VF on an SR-IOV GPU), whatever runs
    now, each consuming its framebuffer from the GPU's and running the GPU in its type's mode:
    the server then knows what fits, and no slot comes and goes with the mode.
    """
    slots: list[FoundDevice] = []
    vgpu = _vgpu_pool(sysfs, parent, base, base.rsplit("/", 1)[0])
    own = frozenset(own_mdevs) if vgpu is not None and vgpu[0] == parent.address else frozenset()
    type_ids = sysfs.listdir(base)
    # Another vendor's types of one parent draw on what it has (Intel GVT-g: the aperture and
    # fences; each type's available_instances is what is left now, for that type alone), in
    # proportions the kernel does not show: one type at a time, as a mode of the parent, so
    # two types' full counts are never promised together.
    one_mode = vgpu is None and len([t for t in type_ids if _MDEV_TYPE_RE.fullmatch(t)]) > 1
    # With nothing running on a GPU, each type's 0 is its own (the vGPU manager cannot create
    # it: ECC on, a type of another series): those slots could only fail their setups.
    idle_gpu = (
        vgpu is not None
        and vgpu[0] == parent.address
        and not any(sysfs.listdir(f"{base}/{t}/devices") for t in type_ids)
    )
    for type_id in type_ids:
        where = f"{parent.address} mdev type {type_id}"
        # Instances first: whatever else about the type is odd (its name too), the parent is
        # in use and must not be offered whole (unless the agent holds them: above).
        instances = sysfs.listdir(f"{base}/{type_id}/devices")
        in_use = len(instances)
        if any(uid not in own for uid in instances):
            parent.flag(FLAG_MDEV_IN_USE)
        if not _MDEV_TYPE_RE.fullmatch(type_id):
            log.warning("%s mdev type %s: odd type name, skipped", parent.address, ascii(type_id))
            continue
        available = to_int(sysfs.read(f"{base}/{type_id}/available_instances"), "count", where)
        if available is None or available < 0:
            log.warning("%s: available_instances unreadable, skipped", where)
            continue
        if vgpu is not None and is_mig_backed(sysfs.read(f"{base}/{type_id}/name") or ""):
            log.warning("%s: a MIG-backed vGPU type, not offered (it needs a MIG GPU instance)", where)
            continue
        total = available + in_use
        share: dict[str, object] = {"pool": parent.address, "mode": type_id} if one_mode else {}
        if vgpu is not None:
            pool, framebuffer = vgpu
            fb, most = nvidia_vgpu(sysfs.read(f"{base}/{type_id}/description")) or (0, 0)
            total = most if pool == parent.address else max(total, 1)
            if idle_gpu and available == 0:
                log.warning(
                    "%s: 0 available instances while nothing runs on the GPU (the vGPU manager "
                    "cannot create this type now: ECC on, or another series), not offered",
                    where,
                )
                total = 0
            share = {
                "pool": pool,
                "pool_counters": {"framebuffer_mb": framebuffer},
                "consumes": {"framebuffer_mb": fb},
                "mode": sysfs.read(f"{base}/{type_id}/name") or type_id,
            }
        attrs: dict[str, object] = {"mdev_type": type_id, "mdev_total": total}
        for key, file in (("mdev_name", "name"), ("device_api", "device_api")):
            text = sysfs.read(f"{base}/{type_id}/{file}")
            if text:
                attrs[key] = text
        if "name" in parent.attributes:
            attrs["parent_name"] = parent.attributes["name"]
        if total > MAX_MDEV_SLOTS:
            log.warning("%s: %d instances, only the first %d offered", where, total, MAX_MDEV_SLOTS)
            total = MAX_MDEV_SLOTS
        for i in range(total):
            slots.append(
                FoundDevice(
                    address=mdev_address(parent.address, type_id, i),
                    kind=DeviceKind.MDEV_TYPE,
                    vendor_id=parent.vendor_id,
                    product_id=parent.product_id,
                    numa_node=parent.numa_node,
                    parent=parent.address,
                    attributes=dict(attrs),
                    **share,  # type: ignore[arg-type]
                )
            )
    return slots


def _link_sriov(devices: list[FoundDevice], physfn_of: dict[str, tuple[str, int]]) -> None:
    """Mark VFs (from either direction of the links) and give them their PF's interface name."""
    by_addr = {d.address: d for d in devices}
    for dev in devices:
        if dev.kind is DeviceKind.MDEV_TYPE:
            continue
        pf_index = physfn_of.get(dev.address)
        if dev.parent is None and pf_index is not None:
            dev.parent = pf_index[0]
        if dev.parent is None:
            continue
        dev.kind = DeviceKind.SRIOV_VF
        if pf_index is not None:
            dev.attributes["vf_index"] = pf_index[1]
        pf = by_addr.get(dev.parent)
        if pf is None:
            continue
        if "netdev" in pf.attributes:
            dev.attributes["pf_netdev"] = pf.attributes["netdev"]
        if pf.product_id is not None:
            # Some VFs carry their PF's device id (NVIDIA's, QEMU's NVMe): rules need to know.
            dev.attributes["pf_product_id"] = pf.product_id
        dev.pf_driver = pf.driver


_NODE_RE = re.compile(r"^node[0-9]+$")


def _single_node_is_node_0(sysfs: Sysfs, devices: list[FoundDevice]) -> None:
    """On a host with one NUMA node (or none: ``devices/system/node`` lists at most one
    ``nodeN``, and no device names a node but 0), a device whose node the kernel does not know
    (``numa_node`` -1, as single-socket hosts and most VMs say) is on node 0: every device is,
    so a "same NUMA node" constraint holds there. On a host with more nodes it stays unknown."""
    nodes = {n for n in sysfs.listdir("devices/system/node") if _NODE_RE.fullmatch(n)}
    nodes |= {f"node{d.numa_node}" for d in devices if d.numa_node is not None}
    if nodes:
        nodes.add("node0")  # a device on node 1 in a tree without devices/system: two nodes
    if len(nodes) > 1:
        return
    for dev in devices:
        if dev.numa_node is None:
            dev.numa_node = 0


def _iommu_groups(sysfs: Sysfs, devices: list[FoundDevice]) -> dict[int, list[str]]:
    """Members per group: the kernel's listing joined with what each device's link says."""
    groups: dict[int, set[str]] = {}
    for name in sysfs.listdir("kernel/iommu_groups"):
        if ascii_digits(name):
            groups[int(name)] = set(sysfs.listdir(f"kernel/iommu_groups/{name}/devices"))
    for dev in devices:
        if dev.iommu_group is not None and dev.kind is not DeviceKind.VGPU:  # functions only
            groups.setdefault(dev.iommu_group, set()).add(dev.address)
    return {n: sorted(members) for n, members in sorted(groups.items())}
