"""NVIDIA vGPU 17 and later (Ada, Hopper, Blackwell: L40S, H100, H200, B200): vGPUs without mdev.

Each VF of such a GPU lists the vGPU types it can take now in ``nvidia/creatable_vgpu_types``
(lines ``1428 : NVIDIA H200X-141C``) and runs the one whose id is written to
``nvidia/current_vgpu_type`` (``0``: none); the VF itself is then the guest's PCI device.
A GPU runs one type at a time in time-sliced mode, and only as many as its framebuffer holds:
once a type runs, the other VFs list only that type while room is left.

Each VF and type that any VF of the GPU lists (or runs) is one device, a partition of the GPU
(scheduler/shares.py): it consumes its type's framebuffer (the number before the type's
letter: ``141C`` is 141 GB) from the GPU's, in the type's mode. The GPU's framebuffer is the
built-in table's where the GPU is in it, else the largest type seen (the whole GPU). The types
seen on a GPU are remembered (the agent's state file), since a GPU that runs one type lists
no other: its devices stay, kept from claims by the mode, not removed and added again.
MIG-backed types (``H100-1-10C``: GPU instance 1, 10 GB) are left out, with a warning: they
are partitions of MIG slices, not of time.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from typing import Any

from devassign.agent.model import FoundDevice
from devassign.domain import DeviceKind, ascii_digits, vgpu_address
from devassign.hostio import Sysfs
from devassign.lifecycle.handlers.nvidia_vgpu import CREATABLE, CURRENT, creatable

log = logging.getLogger(__name__)

_SIZE_RE = re.compile(r"-([0-9]{1,4})([A-Z]{1,2})$")
_MIG_BACKED_RE = re.compile(r"-[0-9]+-[0-9]+[A-Z]{1,2}$")


def is_mig_backed(name: str) -> bool:
    """Whether a vGPU type (``NVIDIA H100-1-10C``, mdev ``GRID A100D-1-10C``) runs in a MIG GPU
    instance: a partition of MIG slices, not of time."""
    return _MIG_BACKED_RE.search(name.strip()) is not None


def framebuffer_mb(name: str) -> int | None:
    """The framebuffer of a vGPU type from its name: ``NVIDIA H200X-141C`` -> 141 GB."""
    m = _SIZE_RE.search(name)
    return int(m.group(1)) * 1024 if m else None


def add_vgpus(
    sysfs: Sysfs,
    devices: list[FoundDevice],
    seen: dict[str, dict[str, Any]],
    gpu_memory_mb: dict[str, int] | None = None,
) -> None:
    """Append a device per VF and vGPU type of every vGPU 17+ GPU in ``devices``.

    ``seen``: ``GPU address@VF vendor:device`` -> {type id: name} of every type seen on it so
    far, updated here (the agent keeps it in its state file): a GPU that runs one type lists
    no other, and the types it offers when empty must not come and go with what runs.
    ``gpu_memory_mb``: the GPU's framebuffer by PF address, where the built-in table knows it.
    """
    per_pf: dict[str, list[tuple[FoundDevice, dict[int, str], int]]] = defaultdict(list)
    for dev in devices:
        if dev.vendor_id != "10de" or dev.parent is None or dev.kind is not DeviceKind.SRIOV_VF:
            continue
        base = f"bus/pci/devices/{dev.address}"
        listed = sysfs.read(f"{base}/{CREATABLE}")
        if listed is None:
            continue
        current = sysfs.read(f"{base}/{CURRENT}") or "0"
        per_pf[dev.parent].append((dev, creatable(listed), int(current) if ascii_digits(current) else 0))
    for pf, vfs in per_pf.items():
        # Remembered per GPU model too: a card swapped for another in the same slot must not
        # be offered the old card's types (nor sized by them).
        key = f"{pf}@{vfs[0][0].vendor_id}:{vfs[0][0].product_id}"
        for old in [k for k in seen if k == pf or (k.startswith(pf + "@") and k != key)]:
            del seen[old]
        types: dict[int, str] = {}
        types.update((int(t), str(n)) for t, n in seen.get(key, {}).items() if ascii_digits(str(t)))
        for _, offered, _running in vfs:
            types.update(offered)
        for _, _, running in vfs:
            if running and running not in types:
                types[running] = f"vGPU type {running}"  # running, listed by no VF now
        sizes = {}
        for tid, name in sorted(types.items()):
            if is_mig_backed(name):
                log.warning("%s: vGPU type %d (%s) is MIG-backed: not offered", pf, tid, name)
                continue
            size = framebuffer_mb(name)
            if size is None:
                log.warning(
                    "%s: vGPU type %d (%s): no framebuffer size in its name, not offered", pf, tid, name
                )
                continue
            sizes[tid] = size
        if not sizes:
            continue
        seen[key] = {str(t): n for t, n in sorted(types.items()) if not n.startswith("vGPU type ")}
        total = (gpu_memory_mb or {}).get(pf) or max(sizes.values())
        for vf, _, running in vfs:
            for tid, size in sorted(sizes.items()):
                devices.append(
                    FoundDevice(
                        address=vgpu_address(vf.address, tid),
                        kind=DeviceKind.VGPU,
                        vendor_id=vf.vendor_id,
                        product_id=vf.product_id,
                        numa_node=vf.numa_node,
                        iommu_group=vf.iommu_group,  # the VF is what the guest gets
                        parent=vf.address,
                        attributes={
                            "vgpu_type_id": tid,
                            "vgpu_name": types[tid],
                            "vf_driver": vf.driver,
                            "running": running == tid,
                        },
                        pool=pf,
                        pool_counters={"framebuffer_mb": total},
                        consumes={"framebuffer_mb": size},
                        mode=types[tid],
                    )
                )
