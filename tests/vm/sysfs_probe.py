"""An independent reading of /sys, to hold devassign's discovery against: standard library only.

It must not import devassign: a mistake shared by discovery and this script would hide itself.
It reads the kernel's files the plainest way (``open``, ``os.readlink``) and prints JSON::

    python tests/vm/sysfs_probe.py [SYSFS_ROOT]
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return None


def _link(path: str) -> str | None:
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


def pci(root: str) -> dict[str, dict[str, Any]]:
    """Every PCI function: ids, class, driver, group, NUMA, SR-IOV links, reset methods."""
    out: dict[str, dict[str, Any]] = {}
    base = f"{root}/bus/pci/devices"
    for addr in sorted(os.listdir(base)):
        d = f"{base}/{addr}"
        entries = set(os.listdir(d))
        group = _link(f"{d}/iommu_group")
        info: dict[str, Any] = {
            "vendor": _read(f"{d}/vendor"),
            "device": _read(f"{d}/device"),
            "class": _read(f"{d}/class"),
            "driver": _link(f"{d}/driver"),
            "driver_override": _read(f"{d}/driver_override"),
            "iommu_group": int(group) if group is not None else None,
            "numa_node": _read(f"{d}/numa_node"),
            "local_cpulist": _read(f"{d}/local_cpulist"),
            "reset": "reset" in entries,
            "reset_method": _read(f"{d}/reset_method"),
            "physfn": _link(f"{d}/physfn"),
            "virtfn": {int(e[6:]): _link(f"{d}/{e}") for e in entries if e.startswith("virtfn")},
            "sriov_totalvfs": _read(f"{d}/sriov_totalvfs"),
            "sriov_numvfs": _read(f"{d}/sriov_numvfs"),
            "sriov_vf_device": _read(f"{d}/sriov_vf_device"),
            "net": sorted(os.listdir(f"{d}/net")) if "net" in entries else [],
        }
        out[addr] = info
    return out


def usb(root: str) -> dict[str, dict[str, Any]]:
    """Every USB device (bus ids like ``2-2``; no root hubs, no interfaces)."""
    out: dict[str, dict[str, Any]] = {}
    base = f"{root}/bus/usb/devices"
    for busid in sorted(os.listdir(base)):
        if busid.startswith("usb") or ":" in busid:
            continue
        d = f"{base}/{busid}"
        out[busid] = {
            name: _read(f"{d}/{name}")
            for name in ("idVendor", "idProduct", "serial", "authorized", "busnum", "devnum", "speed")
        }
        out[busid]["driver"] = _link(f"{d}/driver")
        out[busid]["interfaces"] = sorted(e for e in os.listdir(base) if e.startswith(busid + ":"))
    return out


def groups(root: str) -> dict[int, list[str]]:
    base = f"{root}/kernel/iommu_groups"
    return {int(g): sorted(os.listdir(f"{base}/{g}/devices")) for g in os.listdir(base) if g.isdigit()}


def probe(root: str = "/sys") -> dict[str, Any]:
    return {"pci": pci(root), "usb": usb(root), "iommu_groups": groups(root)}


if __name__ == "__main__":
    json.dump(probe(sys.argv[1] if len(sys.argv) > 1 else "/sys"), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
