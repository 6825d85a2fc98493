"""The ``nvidia_vgpu`` handler: vGPUs of NVIDIA vGPU 17 and later (no mdev; agent/vgpu.py).

Setup writes the vGPU type id to the VF's ``nvidia/current_vgpu_type``; the VF is then the
guest's PCI device (``managed='no'`` in the libvirt XML: it stays on NVIDIA's driver). Cleanup
writes ``0`` (no type), refused while a guest still holds the VF through VFIO, and leaves a
type it never set (another one, given by hand, that made the setup fail). Both are
idempotent: a setup finding its type already set (an agent killed after the write) adopts it,
a cleanup of a VF without a type does nothing.
"""

from __future__ import annotations

import re

from devassign.lifecycle.base import (
    LEFTOVER,
    PARENT_IN_USE,
    VGPU_HELD,
    Facts,
    HandlerError,
    HealthResult,
    LifecycleDevice,
    TypeConfig,
)
from devassign.lifecycle.handlers.common import config_space_problem, pci_dir, write
from devassign.lifecycle.handlers.pci import refuse_if_held
from devassign.lifecycle.host import HostOps

CURRENT = "nvidia/current_vgpu_type"
CREATABLE = "nvidia/creatable_vgpu_types"
# [0-9], not \d: \d also takes other scripts' digits.
_LINE_RE = re.compile(r"^\s*([0-9]{1,9})\s*:\s*(\S.{0,127}?)\s*$")


def creatable(text: str | None) -> dict[int, str]:
    """``{type id: name}`` from a VF's ``creatable_vgpu_types`` (a header line is skipped): the
    types it can take now (discovery reads it, and a free slot's health check)."""
    out: dict[int, str] = {}
    for line in (text or "").splitlines():
        m = _LINE_RE.match(line)
        if m:
            out[int(m.group(1))] = m.group(2)
    return out


def _vf_and_type(device: LifecycleDevice) -> tuple[str, int]:
    vf = device.parent
    tid = device.known("vgpu_type_id")
    if vf is None or not isinstance(tid, int) or isinstance(tid, bool) or tid <= 0:
        raise HandlerError(f"{device.address}: not a vGPU of a VF (needs its parent VF and vgpu_type_id)")
    return vf, tid


def _current(ops: HostOps, vf: str) -> int:
    text = ops.sysfs.read(f"{pci_dir(vf)}/{CURRENT}")
    if text is None or not text.isdecimal():
        raise HandlerError(f"VF {vf} has no readable {CURRENT} ({text!r}): not a vGPU 17+ VF")
    return int(text)


class NvidiaVgpuHandler:
    def setup(self, device: LifecycleDevice, config: TypeConfig, ops: HostOps) -> Facts:
        vf, tid = _vf_and_type(device)
        now = _current(ops, vf)
        if now not in (0, tid):
            raise HandlerError(f"VF {vf} already runs vGPU type {now}, not {tid}")
        if now == 0:
            write(ops.sysfs, f"{pci_dir(vf)}/{CURRENT}", str(tid), f"set vGPU type {tid} on VF {vf}")
            if _current(ops, vf) != tid:
                raise HandlerError(f"VF {vf} does not show vGPU type {tid} after it was set")
        return {"vgpu_type_id": tid}

    def cleanup(self, device: LifecycleDevice, config: TypeConfig, ops: HostOps) -> None:
        vf, tid = _vf_and_type(device)
        if not ops.sysfs.is_dir(pci_dir(vf)):
            raise HandlerError(f"VF {vf} is not present")
        now = _current(ops, vf)
        if now == 0:
            return
        if now != tid and device.facts.get("vgpu_type_id") is None:
            # No setup of this device set a type (it failed on the VF running another one,
            # given by hand): that type is not this device's to clear.
            return
        refuse_if_held(ops.sysfs, ops.vfio_users, vf)
        write(ops.sysfs, f"{pci_dir(vf)}/{CURRENT}", "0", f"clear the vGPU type of VF {vf}")
        if _current(ops, vf) != 0:
            raise HandlerError(f"VF {vf} still shows a vGPU type after it was cleared")

    def health(self, device: LifecycleDevice, config: TypeConfig, ops: HostOps) -> HealthResult:
        vf, tid = _vf_and_type(device)
        if not ops.sysfs.is_dir(pci_dir(vf)):
            return HealthResult(False, f"VF {vf} is not present")
        dead = config_space_problem(ops.sysfs, vf)
        if dead:
            return HealthResult(False, dead)
        if device.consumer is not None:
            try:
                now = _current(ops, vf)
            except HandlerError as exc:
                return HealthResult(False, str(exc))
            if now != tid:
                return HealthResult(False, f"VF {vf} runs vGPU type {now}, not the assigned {tid}")
        elif (ops.sysfs.read(f"{pci_dir(vf)}/{CURRENT}") or "").strip() == str(tid):
            # Nobody holds it, yet the VF runs its type (set by hand for a guest devassign
            # does not manage): a setup would adopt that VF for a tenant, a cleanup clear it.
            return HealthResult(
                False,
                f"VF {vf} runs vGPU type {tid}, which nobody holds (set by hand?): write 0 to its "
                f"{CURRENT} once its guest is gone, or the device stays out of service",
                details={LEFTOVER: True, PARENT_IN_USE: True},
            )
        else:
            taken = _taken_by_others(device, ops, vf, tid)
            if taken:
                return HealthResult(False, taken)
        return HealthResult(True)


def _taken_by_others(device: LifecycleDevice, ops: HostOps, vf: str, tid: int) -> str | None:
    """Why this free slot cannot be set up now because of vGPU types this agent did not set
    (given by hand), or ``None``: its VF runs another type, or a VF of its GPU runs one and
    the VF no longer lists this type as creatable (the GPU's framebuffer, or its one type at a
    time). Types the agent set itself are the scheduler's to count, never a failure here."""
    raw = device.facts.get(VGPU_HELD) or []
    held = {str(v) for v in raw} if isinstance(raw, list) else set()
    if vf in held:
        return None
    text = ops.sysfs.read(f"{pci_dir(vf)}/{CURRENT}")
    now = int(text) if text is not None and text.isdecimal() else 0
    if now:
        return (
            f"VF {vf} runs vGPU type {now}, which none of this agent's devices set (set by hand?): "
            f"write 0 to its {CURRENT} once its guest is gone, or this slot stays out of service"
        )
    pf = ops.sysfs.link_name(f"{pci_dir(vf)}/physfn")
    if pf is None:
        return None
    others = []
    for name in ops.sysfs.listdir(pci_dir(pf)):
        sibling = ops.sysfs.link_name(f"{pci_dir(pf)}/{name}") if name.startswith("virtfn") else None
        if sibling is None or sibling == vf or sibling in held:
            continue
        runs = ops.sysfs.read(f"{pci_dir(sibling)}/{CURRENT}")
        if runs is not None and runs.isdecimal() and int(runs):
            others.append(f"VF {sibling} runs vGPU type {int(runs)}")
    if not others:
        return None
    if tid in creatable(ops.sysfs.read(f"{pci_dir(vf)}/{CREATABLE}")):
        return None
    return (
        f"{'; '.join(others[:3])}, which none of this agent's devices set (set by hand?), and VF {vf} "
        f"cannot take vGPU type {tid} beside it: clear it, or this slot stays out of service"
    )
