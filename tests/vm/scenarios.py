"""Kernel scenarios run the same way on the real kernel (in the guest) and on the simulation.

Each scenario is a list of writes and reads on a :class:`Kernel` with the answer the real
kernel gives written next to it, so a scenario that passes on both sides is a behaviour the
simulation (``devassign.lifecycle.simulated``) shares with the kernel. The guest runs them in
its sections ``scenario: NAME`` (tests/vm/guest.py); ``tests/unit/lifecycle/
test_kernel_scenarios.py`` runs them on the simulation, and reads the guest's results when
``DEVASSIGN_VM`` is set.

The devices are those QEMU emulates (tests/vm/machine.py): an SR-IOV PF with no VFs yet, two
functions of one device in one IOMMU group on a host driver, a USB device; :func:`simulation`
builds the same on a SYNTHETIC tree.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from devassign.hostio import HostIOError
from devassign.lifecycle.simulated import SimulatedSysfs
from devassign.testing.sysfs import host
from tests.vm import machine

VFIO = "vfio-pci"


@dataclass(frozen=True)
class Where:
    """The devices a scenario works on, as this kernel numbered them."""

    pf: str  # SR-IOV PF on its driver, VFs not enabled yet
    pair: tuple[str, str]  # two functions, one IOMMU group, on ``pair_driver``
    pair_driver: str
    stick: str  # USB bus id
    max_vfs: int = machine.NVME_MAX_VFS
    vfs: int = machine.NVME_VFS


@dataclass(frozen=True)
class Step:
    name: str
    got: Any
    want: Any

    @property
    def ok(self) -> bool:
        return bool(self.got == self.want)


class Kernel(Protocol):
    """What a scenario does to a kernel: sysfs writes (answered ``ok`` or an errno name), reads,
    links, device nodes, and a guest holding a VFIO group."""

    def write(self, rel: str, value: str) -> str: ...

    def read(self, rel: str) -> str | None: ...

    def listdir(self, rel: str) -> list[str]: ...

    def link(self, rel: str) -> str | None: ...

    def exists(self, rel: str) -> bool: ...

    def node(self, name: str) -> bool: ...

    def hold(self, group: str) -> contextlib.AbstractContextManager[bool]: ...


def _errname(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


class SimKernel:
    """:class:`Kernel` over :class:`SimulatedSysfs`."""

    def __init__(self, sysfs: SimulatedSysfs) -> None:
        self.sysfs = sysfs

    def write(self, rel: str, value: str) -> str:
        try:
            self.sysfs.write(rel, value)
        except OSError as exc:
            return _errname(exc)
        return "ok"

    def read(self, rel: str) -> str | None:
        return self.sysfs.read(rel)

    def listdir(self, rel: str) -> list[str]:
        return self.sysfs.listdir(rel)

    def link(self, rel: str) -> str | None:
        return self.sysfs.link_name(rel)

    def exists(self, rel: str) -> bool:
        return self.sysfs.exists(rel)

    def node(self, name: str) -> bool:
        return self.sysfs.dev_node(name).exists()

    @contextlib.contextmanager
    def hold(self, group: str) -> Iterator[bool]:
        try:
            self.sysfs.hold_group(group)
        except HostIOError:
            yield False
            return
        try:
            yield True
        finally:
            self.sysfs.release_group(group)


class RealKernel:
    """:class:`Kernel` over this machine's /sys and /dev (the guest's: never a host's)."""

    def __init__(self, sys_root: str = "/sys", dev_root: str = "/dev") -> None:
        self.sys, self.dev = sys_root, dev_root

    def write(self, rel: str, value: str) -> str:
        try:
            with open(f"{self.sys}/{rel}", "w", encoding="utf-8") as f:
                f.write(value)
        except OSError as exc:
            return _errname(exc)
        return "ok"

    def read(self, rel: str) -> str | None:
        try:
            with open(f"{self.sys}/{rel}", encoding="utf-8") as f:
                return f.read().strip()
        except OSError:
            return None

    def listdir(self, rel: str) -> list[str]:
        try:
            return sorted(os.listdir(f"{self.sys}/{rel}"))
        except OSError:
            return []

    def link(self, rel: str) -> str | None:
        try:
            return os.path.basename(os.readlink(f"{self.sys}/{rel}"))
        except OSError:
            return None

    def exists(self, rel: str) -> bool:
        return os.path.lexists(f"{self.sys}/{rel}")

    def node(self, name: str) -> bool:
        return os.path.exists(f"{self.dev}/{name}")

    @contextlib.contextmanager
    def hold(self, group: str) -> Iterator[bool]:
        """tests/vm/vfio_user.py in the background: a guest that attached the group."""
        script = str(Path(__file__).with_name("vfio_user.py"))
        proc = subprocess.Popen(
            [sys.executable, "-I", script, group], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None and proc.stdin is not None
        first: dict[str, Any] = json.loads(proc.stdout.readline() or "{}")
        try:
            yield bool(first.get("held"))
        finally:
            proc.stdin.close()
            proc.wait(timeout=60)


def dev(address: str) -> str:
    return f"bus/pci/devices/{address}"


def vf_list(k: Kernel, pf: str) -> list[str]:
    links = [e for e in k.listdir(dev(pf)) if e.startswith("virtfn") and e[6:].isdecimal()]
    return [k.link(f"{dev(pf)}/{e}") or "" for e in sorted(links, key=lambda e: int(e[6:]))]


# ---------------------------------------------------------------------------- the scenarios
def sriov(k: Kernel, w: Where) -> list[Step]:
    """``sriov_numvfs`` creates the VFs with their links; the kernel's refusals."""
    pf = dev(w.pf)
    steps = [
        Step("sriov_drivers_autoprobe 0", k.write(f"{pf}/sriov_drivers_autoprobe", "0"), "ok"),
        Step("above sriov_totalvfs", k.write(f"{pf}/sriov_numvfs", str(w.max_vfs + 1)), "ERANGE"),
        Step("no VFs after the refusal", (k.read(f"{pf}/sriov_numvfs"), vf_list(k, w.pf)), ("0", [])),
        Step(f"enable {w.vfs}", k.write(f"{pf}/sriov_numvfs", str(w.vfs)), "ok"),
        Step("from one count to another", k.write(f"{pf}/sriov_numvfs", "1"), "EBUSY"),
        Step("the same count again", k.write(f"{pf}/sriov_numvfs", str(w.vfs)), "ok"),
    ]
    vfs = vf_list(k, w.pf)
    steps.append(Step("virtfn links", len(vfs), w.vfs))
    vf_device = k.read(f"{pf}/sriov_vf_device") or "0"
    want_ids = (k.read(f"{pf}/vendor"), f"0x{int(vf_device, 16):04x}")
    groups = set()
    for vf in vfs:
        steps += [
            Step(f"VF {vf}: physfn", k.link(f"{dev(vf)}/physfn"), w.pf),
            Step(
                f"VF {vf}: ids (device from sriov_vf_device)",
                (k.read(f"{dev(vf)}/vendor"), k.read(f"{dev(vf)}/device")),
                want_ids,
            ),
            Step(f"VF {vf}: no driver (autoprobe off)", k.link(f"{dev(vf)}/driver"), None),
            Step(f"VF {vf}: in bus/pci/devices", k.exists(dev(vf)), True),
        ]
        groups.add(k.link(f"{dev(vf)}/iommu_group"))
    steps.append(Step("each VF in an IOMMU group of its own", len(groups - {None}), w.vfs))
    if vfs:
        probe = k.write("bus/pci/drivers_probe", vfs[0])
        steps.append(
            Step("drivers_probe a VF, no override", (probe, k.link(f"{dev(vfs[0])}/driver")), ("ok", None))
        )
    return steps


def driver_override(k: Kernel, w: Where) -> list[Step]:
    """An unset override reads ``(null)``; set, then cleared with a newline."""
    vf = dev(vf_list(k, w.pf)[0])
    return [
        Step("unset", k.read(f"{vf}/driver_override"), "(null)"),
        Step(
            "bind vfio-pci without an override",
            k.write(f"bus/pci/drivers/{VFIO}/bind", vf.rsplit("/", 1)[1]),
            "ENODEV",
        ),
        Step("set", (k.write(f"{vf}/driver_override", VFIO), k.read(f"{vf}/driver_override")), ("ok", VFIO)),
        Step(
            "cleared",
            (k.write(f"{vf}/driver_override", "\n"), k.read(f"{vf}/driver_override")),
            ("ok", "(null)"),
        ),
    ]


def reset_method(k: Kernel, w: Where) -> list[Step]:
    """Only supported methods; an empty write leaves none; ``default`` restores them."""
    vf = dev(vf_list(k, w.pf)[0])
    return [
        Step("a VF can FLR", k.read(f"{vf}/reset_method"), "flr"),
        Step("bus on a VF that has flr only", k.write(f"{vf}/reset_method", "bus"), "EINVAL"),
        Step("unchanged after the refusal", k.read(f"{vf}/reset_method"), "flr"),
        Step("reset 0", k.write(f"{vf}/reset", "0"), "EINVAL"),
        Step("empty", (k.write(f"{vf}/reset_method", "\n"), k.read(f"{vf}/reset_method")), ("ok", "")),
        Step("reset with no method left", k.write(f"{vf}/reset", "1"), "ENOTTY"),
        Step(
            "default", (k.write(f"{vf}/reset_method", "default"), k.read(f"{vf}/reset_method")), ("ok", "flr")
        ),
        Step("the same list again", k.write(f"{vf}/reset_method", "flr"), "ok"),
    ]


def vfio_nodes(k: Kernel, w: Where) -> list[Step]:
    """``/dev/vfio/<group>`` while a member is on vfio-pci, gone after."""
    address = vf_list(k, w.pf)[0]
    vf = dev(address)
    group = k.link(f"{vf}/iommu_group") or "?"
    steps = [
        Step("no node before", k.node(f"vfio/{group}"), False),
        Step("override", k.write(f"{vf}/driver_override", VFIO), "ok"),
        Step("drivers_probe", k.write("bus/pci/drivers_probe", address), "ok"),
        Step("on vfio-pci", k.link(f"{vf}/driver"), VFIO),
        Step("the group's node", k.node(f"vfio/{group}"), True),
        Step("unbind", k.write(f"bus/pci/drivers/{VFIO}/unbind", address), "ok"),
        Step("the node is gone", k.node(f"vfio/{group}"), False),
        Step("override cleared", k.write(f"{vf}/driver_override", "\n"), "ok"),
    ]
    return steps


def held_group(k: Kernel, w: Where) -> list[Step]:
    """A guest holding a group keeps host drivers off its members; it loses the group when the
    last member leaves vfio-pci. (An unbind of a device a guest has *open* blocks on the
    kernel; no scenario does that: the handlers must never get there.)"""
    first, second = w.pair
    group = k.link(f"{dev(first)}/iommu_group") or "?"
    steps = [Step("both in one group", k.link(f"{dev(second)}/iommu_group"), group)]
    for a in w.pair:
        k.write(f"{dev(a)}/driver_override", VFIO)
        k.write(f"bus/pci/drivers/{w.pair_driver}/unbind", a)
        k.write("bus/pci/drivers_probe", a)
    steps.append(Step("both on vfio-pci", [k.link(f"{dev(a)}/driver") for a in w.pair], [VFIO, VFIO]))
    with k.hold(group) as held:
        steps.append(Step("a guest holds the group", held, True))
        steps += [
            Step("unbind one member", k.write(f"bus/pci/drivers/{VFIO}/unbind", first), "ok"),
            Step("the node stays (a member is left)", k.node(f"vfio/{group}"), True),
            Step("its override cleared", k.write(f"{dev(first)}/driver_override", "\n"), "ok"),
            Step("drivers_probe it: refused", k.write("bus/pci/drivers_probe", first), "EINVAL"),
            Step(
                "bind its host driver: refused",
                k.write(f"bus/pci/drivers/{w.pair_driver}/bind", first),
                "EBUSY",
            ),
            Step("still on no driver", k.link(f"{dev(first)}/driver"), None),
            Step("unbind the last member", k.write(f"bus/pci/drivers/{VFIO}/unbind", second), "ok"),
            Step("the node is gone", k.node(f"vfio/{group}"), False),
            Step("the first taken back (the hold is gone)", k.write("bus/pci/drivers_probe", first), "ok"),
        ]
    k.write(f"{dev(second)}/driver_override", "\n")
    k.write("bus/pci/drivers_probe", second)
    steps.append(
        Step(
            "both back on the host driver", [k.link(f"{dev(a)}/driver") for a in w.pair], [w.pair_driver] * 2
        )
    )
    return steps


def usb_authorized(k: Kernel, w: Where) -> list[Step]:
    """``authorized`` 0 removes the device's interfaces, 1 makes them again."""
    base = f"bus/usb/devices/{w.stick}"
    was = k.read(f"{base}/authorized") or "1"

    def interfaces() -> list[str]:
        return [e for e in k.listdir("bus/usb/devices") if e.startswith(w.stick + ":")]

    steps = [Step("authorize", k.write(f"{base}/authorized", "1"), "ok")]
    present = interfaces()
    steps += [
        Step("interfaces while authorized", bool(present), True),
        Step("deauthorize", k.write(f"{base}/authorized", "0"), "ok"),
        Step("interfaces after authorized 0", interfaces(), []),
        Step("authorize again", k.write(f"{base}/authorized", "1"), "ok"),
        Step("the same interfaces back", interfaces(), present),
    ]
    k.write(f"{base}/authorized", was)
    return steps


def remove(k: Kernel, w: Where) -> list[Step]:
    """``remove`` takes a function out; a VF has no ``remove``; a PF's VFs stay when its driver
    (nvme) does not disable SR-IOV on remove. Destructive: run last."""
    vfs = vf_list(k, w.pf)
    groups = [k.link(f"{dev(vf)}/iommu_group") for vf in vfs]
    return [
        Step("PF has VFs", len(vfs), w.vfs),
        Step("echo 1 > a VF's remove", k.write(f"{dev(vfs[0])}/remove", "1"), "EACCES"),
        Step("echo 0 > remove", (k.write(f"{dev(w.pf)}/remove", "0"), k.exists(dev(w.pf))), ("ok", True)),
        Step("echo 1 > remove", k.write(f"{dev(w.pf)}/remove", "1"), "ok"),
        Step("the PF is gone", k.exists(dev(w.pf)), False),
        Step("its VFs stay", [k.exists(dev(vf)) for vf in vfs], [True] * len(vfs)),
        Step(
            "and their IOMMU groups",
            [k.exists(f"kernel/iommu_groups/{g}") for g in groups],
            [True] * len(groups),
        ),
    ]


# In order: each may rely on what the ones before it left (sriov makes the VFs).
ALL: dict[str, Callable[[Kernel, Where], list[Step]]] = {
    "sriov": sriov,
    "driver_override": driver_override,
    "reset_method": reset_method,
    "vfio_nodes": vfio_nodes,
    "held_group": held_group,
    "usb_authorized": usb_authorized,
    "remove": remove,
}
EARLY = ("sriov",)  # run in the guest before discovery; the others after the lifecycle checks


@dataclass
class Simulated:
    kernel: SimKernel
    where: Where
    sysfs: SimulatedSysfs = field(repr=False)


def simulation(root: Path) -> Simulated:
    """The guest's devices, SYNTHETIC, behind :class:`SimulatedSysfs`: QEMU's NVMe PF (VFs at
    offset 1, stride 1, carrying its device id), the two-function e1000e, the USB stick."""
    h = host(root, vfio=True)
    pf = "0000:01:00.0"
    h.sriov_pf(
        pf,
        machine.NVME_VENDOR,
        machine.NVME_DEVICE,
        vfs=0,
        total_vfs=machine.NVME_MAX_VFS,
        vf_device=machine.NVME_DEVICE,
        driver="nvme",
        cls=machine.NVME_CLASS,
        iommu_group=11,
    )
    h.set(pf, "sriov_offset", "1")
    pair = ("0000:02:00.0", "0000:02:00.1")
    for a in pair:
        h.pci(
            a, machine.E1000E_VENDOR, machine.E1000E_DEVICE, driver="e1000e", iommu_group=12, reset="flr bus"
        )
    h.usb("2-2", *machine.USB_STICK, serial=machine.STICK_SERIAL)
    sysfs = SimulatedSysfs(h.root)
    return Simulated(SimKernel(sysfs), Where(pf, pair, "e1000e", "2-2"), sysfs)


def run_all(k: Kernel, w: Where, until: str | None = None) -> dict[str, list[Step]]:
    """Every scenario in order (up to ``until``): name -> its steps."""
    out: dict[str, list[Step]] = {}
    for name, scenario in ALL.items():
        out[name] = scenario(k, w)
        if name == until:
            break
    return out
