"""From a sysfs tree and a configuration to the list of devices this host offers.

Discovery sees the machine as it is; this module applies the operator's ``[[device]]``
rules (first match wins), refuses what cannot be isolated, and adds the declared
``[[resource]]`` units. Pure apart from the reads through :class:`Sysfs`.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devassign.agent.config import AgentConfig, DeviceRule
from devassign.agent.discovery import scan_pci
from devassign.agent.hostuse import read_host_use
from devassign.agent.model import (
    FLAG_DUPLICATE,
    FLAG_HOST_IN_USE,
    FLAG_IOMMU_SHARED,
    FLAG_NOT_ENDPOINT,
    FoundDevice,
    first_time,
)
from devassign.agent.pciids import DEFAULT_PCI_IDS
from devassign.agent.state import HeldType
from devassign.agent.usb import name_usb, scan_usb
from devassign.domain import DeviceKind
from devassign.hostio import HostFiles, Sysfs
from devassign.schemas import ReportedDevice

log = logging.getLogger(__name__)

VFIO_DRIVER = "vfio-pci"  # what a setup binds a held PCI function to


@dataclass
class Inventory:
    """Every device found (typed or not) and the IOMMU groups they sit in."""

    devices: list[FoundDevice] = field(default_factory=list)
    iommu_groups: dict[int, list[str]] = field(default_factory=dict)

    def offered(self) -> list[FoundDevice]:
        return [d for d in self.devices if d.offered]

    def reported(self) -> list[ReportedDevice]:
        """What goes on the wire: typed devices with nothing blocking them."""
        out = []
        for dev in self.offered():
            try:
                out.append(dev.to_reported())
            except ValueError as exc:  # an identity the server would refuse anyway
                log.warning("%s: not reported: %s", dev.address, exc)
        return out


def build_inventory(
    sysfs: Sysfs,
    config: AgentConfig,
    pci_ids: Path | None = DEFAULT_PCI_IDS,
    vgpu_seen: dict[str, dict[str, Any]] | None = None,
    *,
    files: HostFiles | None = None,
    warned: set[str] | None = None,
    held_drivers: Mapping[str, str] | None = None,
    held_types: Mapping[str, HeldType] | None = None,
    own_mdevs: Collection[str] = (),
    usb_names: dict[str, dict[str, Any]] | None = None,
) -> Inventory:
    """Discover, match, check isolation, add static units (``vgpu_seen``: see agent/vgpu.py;
    ``files``: the host's ``/proc``, default beside the sysfs root; ``warned``,
    ``held_drivers``, ``held_types``: see :func:`apply_rules`; ``own_mdevs``: the UUIDs of
    the mdevs the agent made for the slots it holds, which leave their GPU reported, see
    :func:`~devassign.agent.discovery.scan_pci`; ``usb_names``: the USB names given before,
    kept up to date: see :func:`~devassign.agent.usb.name_usb`)."""
    use = read_host_use(files if files is not None else HostFiles.beside(sysfs), sysfs)
    scan = scan_pci(sysfs, config.pci_ids or pci_ids, vgpu_seen, use=use, own_mdevs=own_mdevs)
    devices = scan.devices + scan_usb(sysfs, use)
    name_usb(devices, {} if usb_names is None else usb_names, held_types or {}, warned)
    _flag_duplicates(devices)
    apply_rules(devices, config.devices, warned, held_drivers, held_types)
    check_isolation(devices, scan.iommu_groups, warned)
    for res in config.resources:
        devices.extend(res.units())
    return Inventory(devices, scan.iommu_groups)


def apply_rules(
    devices: list[FoundDevice],
    rules: tuple[DeviceRule, ...],
    warned: set[str] | None = None,
    held_drivers: Mapping[str, str] | None = None,
    held_types: Mapping[str, HeldType] | None = None,
) -> None:
    """Give each device the type of the first rule it matches, with the rule's attributes.

    ``held_types``: address -> type of each device the agent holds for a consumer; one that no
    rule takes any more (its rule removed or edited meanwhile) keeps that type until its
    cleanup is posted, so its holder is not told it is missing and it is cleaned before the
    server retires it; another device at its address (another model in the slot) does not.

    ``held_drivers``: address -> the host driver of each device the agent holds for a
    consumer (set up on vfio-pci, until its cleanup is posted), which ``driver`` rules match:
    else a device taken by its driver left the inventory once assigned, and its cleanup
    was refused as a device the agent did not report.

    A device the host uses is not offered unless its rule says ``allow_host_in_use``; that is
    logged once per device and reason for each ``warned`` set (an agent keeps one, so a
    report every 30 s does not repeat it), every time without one."""
    by_address = {d.address: d for d in devices}
    held = held_drivers or {}
    for dev in devices:
        for rule in rules:
            # The driver before its setup stands in only for the one its setup gives it (or
            # none, half-way): another driver there is another device, or the operator's.
            host_driver = held.get(dev.address) if dev.driver in (None, VFIO_DRIVER) else None
            if rule.matches(dev, host_driver):
                if dev.is_bridge:
                    dev.flag(FLAG_NOT_ENDPOINT)
                    log.warning("%s: a bridge (class %s) is not offered", dev.address, dev.class_code)
                dev.type = rule.type
                dev.attributes.update(rule.attributes)
                dev.allow_shared_iommu_group = rule.allow_shared_iommu_group
                dev.allow_host_in_use = rule.allow_host_in_use
                if FLAG_HOST_IN_USE in dev.flags and not rule.allow_host_in_use:
                    _warn_host_use(dev, warned)
                if rule.pf_bandwidth_mbps is not None:
                    _share_bandwidth(dev, by_address.get(dev.parent or ""), rule.pf_bandwidth_mbps)
                break
        else:
            held_type = (held_types or {}).get(dev.address)
            if held_type is not None and held_type.is_device(dev.kind.value, dev.vendor_id, dev.product_id):
                kept = dev.type = held_type.type
                if warned is None or f"{dev.address}:kept" not in warned:
                    log.warning(
                        "%s: no rule takes it any more; reported as %s until its holder is done "
                        "and it is cleaned",
                        dev.address,
                        kept,
                    )
                    if warned is not None:
                        warned.add(f"{dev.address}:kept")


def _warn_host_use(dev: FoundDevice, warned: set[str] | None) -> None:
    if not first_time(warned, f"{dev.address} {dev.type}: {'; '.join(dev.host_use)}"):
        return
    log.warning(
        "%s: matches the rule for type %s but is not offered: the host uses it (%s); "
        "allow_host_in_use = true in the rule offers it anyway",
        dev.address,
        dev.type,
        "; ".join(dev.host_use),
    )


def _share_bandwidth(vf: FoundDevice, pf: FoundDevice | None, bandwidth: int | str) -> None:
    """Make ``vf`` a partition of its PF's bandwidth (scheduler/shares.py)."""
    if vf.kind is not DeviceKind.SRIOV_VF or vf.parent is None:
        return
    if bandwidth == "link":
        speed = pf.attributes.get("link_speed_mbps") if pf is not None else None
        if not isinstance(speed, int) or speed <= 0:
            log.warning(
                "%s: the link speed of its PF %s is unknown; its bandwidth is not shared",
                vf.address,
                vf.parent,
            )
            return
        bandwidth = speed
    vf.pool = vf.parent
    vf.pool_counters = {"bandwidth_mbps": int(bandwidth)}


# Peers listed in a device's ``iommu_group_peers``: a switch without ACS can put a thousand
# functions in one group, and every member listing every other made the report quadratic.
MAX_LISTED_PEERS = 32


def check_isolation(
    devices: list[FoundDevice], groups: dict[int, list[str]], warned: set[str] | None = None
) -> None:
    """Flag offered devices whose IOMMU group holds an endpoint that is not offered too.

    VFIO takes a group whole and devices in one group can reach each other without the
    IOMMU, so handing out one member while another stays with the host is unsafe: a mate
    that no rule types, and as well one that a rule types but something else keeps from
    being offered (a PF whose VFs are enabled, a GPU with mdev instances running). Flagging
    one member can block its mates, so this runs until nothing changes. Bridges do not
    count; a member we could not read counts as an endpoint (the safe side). A vGPU of a
    VF (vGPU 17+) is the VF passed through whole: the VF's group is checked for it.

    Each flagged device is logged with every mate that is not offered (as things stand once
    nothing changes), once per device and reason for each ``warned`` set.
    """
    by_addr = {d.address: d for d in devices}
    # Each device with the function a guest gets for it, and that function's group mates.
    checked: list[tuple[FoundDevice, FoundDevice, list[str]]] = []
    for dev in devices:
        vehicle = _vehicle(dev, by_addr)
        if vehicle is None or vehicle.iommu_group is None:
            continue
        members = groups.get(vehicle.iommu_group, [])
        peers = [a for a in members if a != vehicle.address]
        checked.append((dev, vehicle, peers))
        if peers:
            dev.attributes["iommu_group_size"] = len(members)
            dev.attributes["iommu_group_peers"] = peers[:MAX_LISTED_PEERS]
    flagged: list[tuple[FoundDevice, FoundDevice, list[str]]] = []
    changed = True
    while changed:
        changed = False
        for dev, vehicle, peers in checked:
            if not dev.offered or dev.allow_shared_iommu_group:
                continue
            if any(not _harmless(by_addr.get(a)) for a in peers):
                dev.flag(FLAG_IOMMU_SHARED)
                flagged.append((dev, vehicle, peers))
                changed = True
    for dev, vehicle, peers in flagged:
        blockers = [_why_blocking(a, by_addr.get(a)) for a in peers if not _harmless(by_addr.get(a))]
        more = f" and {len(blockers) - 8} more" if len(blockers) > 8 else ""
        shown = _and(blockers[:8]) if not more else ", ".join(blockers[:8]) + more
        message = f"IOMMU group {vehicle.iommu_group} also holds {shown}"
        if not first_time(warned, f"{dev.address}: {message}"):
            continue
        log.warning(
            "%s: not offered (%s): %s; VFIO gives a guest the whole group, so every member must "
            "be offered for any to be",
            dev.address,
            FLAG_IOMMU_SHARED,
            message,
        )


def _why_blocking(address: str, peer: FoundDevice | None) -> str:
    """A group mate that keeps the group from a guest, and why: ``0000:5e:00.0 (no rule takes
    it)``, ``0000:5e:10.2 (not offered: iommu_group_not_isolated)``."""
    if peer is None:
        return f"{address} (not read)"
    if peer.type is None:
        return f"{address} (no rule takes it)"
    return f"{address} (not offered: {', '.join(peer.flags) or 'unknown'})"


def _and(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _vehicle(dev: FoundDevice, by_addr: dict[str, FoundDevice]) -> FoundDevice | None:
    """The PCI function a guest gets for ``dev``: itself, or for a vGPU its VF; ``None`` for
    what no group concerns (mdev slots and MIG instances stay behind the host's driver, USB)."""
    if dev.kind is DeviceKind.VGPU:
        return by_addr.get(dev.parent or "")
    if dev.kind in (DeviceKind.MDEV_TYPE, DeviceKind.MIG, DeviceKind.USB, DeviceKind.STATIC):
        return None
    return dev


def _harmless(peer: FoundDevice | None) -> bool:
    """A group mate that does not keep the group from a guest: a bridge, or a device that is
    offered itself (the server hands a group out whole). An unknown member is not."""
    if peer is None:
        return False
    return not peer.keeps_group or peer.offered


def _flag_duplicates(devices: list[FoundDevice]) -> None:
    """Two devices with one identity are flagged (USB ones were named apart by ``name_usb``)."""
    seen: dict[str, FoundDevice] = {}
    for dev in devices:
        first = seen.setdefault(dev.address, dev)
        if first is not dev:
            first.flag(FLAG_DUPLICATE)
            dev.flag(FLAG_DUPLICATE)
            log.warning("%s: two devices share this identity; neither is offered", dev.address)
