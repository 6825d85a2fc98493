"""Whole PCI functions handed to a guest through VFIO.

Setup moves the function to ``vfio-pci`` (``driver_override``, unbind, ``drivers_probe``)
and checks that its IOMMU group can be used: VFIO refuses a group unless every device in it
is on vfio (bridges excepted), and the group is the isolation boundary. Cleanup resets the
function (so the next tenant sees no state of the last) and gives it back to the host driver
it came from. A function with no reset is refused unless the type says ``reset = "none-ok"``.
Every driver name that becomes a path (recorded, discovered or configured) is checked first.
A cleanup while a guest still has the function's VFIO group or device open fails at once (the
kernel would block the unbind until the guest lets go, and the agent with it).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Protocol

from devassign.hostio import Sysfs
from devassign.lifecycle import names
from devassign.lifecycle.base import (
    Facts,
    HandlerError,
    HealthResult,
    LifecycleDevice,
    TypeConfig,
    config_choice,
)
from devassign.lifecycle.handlers.common import (
    config_space_problem,
    driver_dir,
    pci_dir,
    pci_driver,
    require_present,
    write,
)
from devassign.lifecycle.host import HostOps, VfioUsers

VFIO = "vfio-pci"

# What the kernel shows in driver_override when none is set.
NO_OVERRIDE = ("", "(null)")
RESET_CHOICES = ("required", "bus", "none-ok")
BRIDGE_CLASS_PREFIX = "0x0604"


class HasAddress(Protocol):
    @property
    def address(self) -> str: ...


@dataclass(frozen=True)
class ResetCapability:
    """Whether the kernel can reset the function, and how (``reset_method``: flr, pm, bus...)."""

    resettable: bool
    methods: tuple[str, ...]


def mdev_instances(sysfs: Sysfs, address: str) -> list[str]:
    """The UUIDs of the mdevs (vGPUs) made on the function at ``address``."""
    types = f"{pci_dir(address)}/mdev_supported_types"
    return sorted(uid for t in sysfs.listdir(types) for uid in sysfs.listdir(f"{types}/{t}/devices"))


def reset_capability(device: str | HasAddress, sysfs: Sysfs) -> ResetCapability:
    """Read the function's reset support; pure, so the report path can refuse a device early."""
    rel = pci_dir(device if isinstance(device, str) else device.address)
    if not sysfs.exists(f"{rel}/reset"):
        return ResetCapability(False, ())
    methods = tuple((sysfs.read(f"{rel}/reset_method") or "").split())
    return ResetCapability(True, methods)


def reset_refusal(device: str | HasAddress, config: TypeConfig, sysfs: Sysfs) -> str | None:
    """Why a function may not be assigned under ``config``'s reset policy, or ``None``."""
    policy = config_choice(config, "reset", "required", RESET_CHOICES)
    if policy == "none-ok":
        return None
    address = device if isinstance(device, str) else device.address
    cap = reset_capability(address, sysfs)
    if not cap.resettable:
        return (
            f"{address} supports no reset (no 'reset' file): a tenant's state could reach the "
            'next one; set reset = "none-ok" in the type config to accept it'
        )
    if policy == "bus" and cap.methods and "bus" not in cap.methods:
        return f"{address} cannot be bus-reset (reset_method: {' '.join(cap.methods)})"
    return None


# Why VFIO cannot take a function at all; the server refuses such functions of the types this
# handler sets up (store/inventory.py), so it is seen here only from an older agent or server.
NO_IOMMU_GROUP = (
    "it has no IOMMU group, so VFIO cannot pass it through: the IOMMU is off (turn on VT-d or "
    "AMD-Vi in the firmware and boot with intel_iommu=on or amd_iommu=on)"
)


def group_problems(sysfs: Sysfs, address: str, pending: frozenset[str]) -> list[str]:
    """Members of ``address``'s IOMMU group that keep VFIO from using it.

    ``pending`` are addresses the same consumer holds whose own setup will bind them.
    A member with no driver is viable to VFIO, as is a bridge.
    """
    rel = pci_dir(address)
    if not sysfs.exists(f"{rel}/iommu_group"):
        return [f"{address}: {NO_IOMMU_GROUP}"]
    group = sysfs.link_name(f"{rel}/iommu_group")
    problems = []
    for peer in sysfs.listdir(f"{rel}/iommu_group/devices"):
        if peer == address or peer in pending:
            continue
        if not names.PCI_ADDRESS_RE.fullmatch(peer):
            problems.append(f"IOMMU group {group} holds {peer!r}, which is not a PCI address")
            continue
        cls = sysfs.read(f"bus/pci/devices/{peer}/class") or ""
        driver = sysfs.link_name(f"bus/pci/devices/{peer}/driver")
        if cls.startswith(BRIDGE_CLASS_PREFIX) or driver in (None, VFIO):
            continue
        problems.append(f"IOMMU group {group} also holds {peer} (driver {driver})")
    return problems


def driver_override(sysfs: Sysfs, address: str) -> str | None:
    """The function's ``driver_override``; ``None`` when unset (the kernel shows ``(null)``)."""
    value = sysfs.read(f"{pci_dir(address)}/driver_override")
    return None if value is None or value in NO_OVERRIDE else value


def vfio_nodes(sysfs: Sysfs, address: str) -> list[str]:
    """The device nodes a guest opens to use the function: its group's ``/dev/vfio/<group>``
    (``noiommu-<group>`` without an IOMMU) and, where the kernel has them, its
    ``/dev/vfio/devices/vfioN``."""
    rel = pci_dir(address)
    nodes = []
    group = sysfs.link_name(f"{rel}/iommu_group")
    if group is not None and group.isdecimal():
        nodes += [f"/dev/vfio/{group}", f"/dev/vfio/noiommu-{group}"]
    for name in sysfs.listdir(f"{rel}/vfio-dev"):
        if name.startswith("vfio") and name[4:].isdecimal():
            nodes.append(f"/dev/vfio/devices/{name}")
    return nodes


def held_elsewhere(ops: HostOps, address: str) -> str | None:
    """Why a function nobody was given is not free: already on vfio-pci and open through VFIO
    by a process (a guest started by hand, a DPDK application), or ``None``. Offered or set up,
    it would be a second guest's, whose settings the setup would change under it."""
    if pci_driver(ops.sysfs, address) != VFIO:
        return None
    holders = ops.vfio_users.holders(vfio_nodes(ops.sysfs, address))
    if not holders:
        return None
    return (
        f"{address} is open through VFIO by {', '.join(holders)}, which devassign did not give it "
        "to: it is not offered until that process lets go of it"
    )


def refuse_if_held(sysfs: Sysfs, users: VfioUsers, address: str) -> None:
    """Fail while a guest holds the function through VFIO: giving it back to the host then
    would block in the kernel (a device open) or take it from under a guest (a group held)."""
    holders = users.holders(vfio_nodes(sysfs, address))
    if holders:
        group = sysfs.link_name(f"{pci_dir(address)}/iommu_group")
        raise HandlerError(
            f"{address} is still in use through VFIO (IOMMU group {group} open by "
            f"{', '.join(holders)}): a guest still holds it, so it is not given back to the host; "
            "stop that guest, then devassign device clear"
        )


def bind_vfio(sysfs: Sysfs, address: str) -> str | None:
    """Move the function to vfio-pci; returns the driver it was on (``None`` if unbound/vfio)."""
    rel = require_present(sysfs, address)
    if not sysfs.is_dir(driver_dir(VFIO)):
        raise HandlerError(f"the {VFIO} driver is not loaded on this host (modprobe vfio-pci)")
    current = pci_driver(sysfs, address)
    if driver_override(sysfs, address) != VFIO:
        write(sysfs, f"{rel}/driver_override", VFIO, f"cannot set driver_override of {address}")
    if current == VFIO:
        return None
    if current is not None:
        write(sysfs, f"{rel}/driver/unbind", address, f"cannot unbind {address} from {current}")
    write(sysfs, "bus/pci/drivers_probe", address, f"cannot probe {address}")
    if pci_driver(sysfs, address) != VFIO:
        write(sysfs, f"{driver_dir(VFIO)}/bind", address, f"cannot bind {address} to {VFIO}")
    now = pci_driver(sysfs, address)
    if now != VFIO:
        raise HandlerError(f"{address} is on {now or 'no driver'} after binding it to {VFIO}")
    return current


def reset_function(sysfs: Sysfs, address: str, config: TypeConfig) -> None:
    refusal = reset_refusal(address, config, sysfs)
    if refusal:
        raise HandlerError(f"cannot clean {address}: {refusal}")
    rel = pci_dir(address)
    if not sysfs.exists(f"{rel}/reset"):
        return  # reset = "none-ok"
    before = sysfs.read(f"{rel}/reset_method")
    if config.get("reset") != "bus" or not before or before == "bus":
        write(sysfs, f"{rel}/reset", "1", f"reset of {address} failed")
        return
    # Only the bus reset for this one reset, then the methods the function had before.
    write(sysfs, f"{rel}/reset_method", "bus", f"cannot select bus reset of {address}")
    restore = (f"{rel}/reset_method", before, f"cannot restore reset_method {before!r} of {address}")
    try:
        write(sysfs, f"{rel}/reset", "1", f"reset of {address} failed")
    except HandlerError:
        with contextlib.suppress(HandlerError):
            write(sysfs, *restore)
        raise
    write(sysfs, *restore)


def original_driver(device: LifecycleDevice, config: TypeConfig) -> str | None:
    """The host driver to give the function back to: what setup recorded (the agent's
    journal), else what discovery saw, else the type's ``host_driver``.

    Each is checked as a driver name before it can become ``bus/pci/drivers/<name>``: a bad
    one fails the action with the value named, it is never skipped over nor written.
    """
    candidates = (
        ("recorded original_driver", device.known("original_driver")),
        ("discovered driver", device.driver),
        ("type config host_driver", config.get("host_driver")),
    )
    for what, candidate in candidates:
        if candidate is None or candidate == "":
            continue
        name = names.driver_name(candidate, f"{device.address}: {what}")
        if name != VFIO:
            return name
    return None


def release_vfio(sysfs: Sysfs, address: str, target: str | None) -> None:
    """Clear the override and let the host driver take the function back."""
    rel = require_present(sysfs, address)
    if target is not None:
        names.driver_name(target, f"{address}: driver to return to")
    if driver_override(sysfs, address) is not None:
        write(sysfs, f"{rel}/driver_override", "\n", f"cannot clear driver_override of {address}")
    if pci_driver(sysfs, address) == VFIO and target != VFIO:
        write(sysfs, f"{driver_dir(VFIO)}/unbind", address, f"cannot unbind {address}")
    if pci_driver(sysfs, address) is None:
        write(sysfs, "bus/pci/drivers_probe", address, f"cannot probe {address}")
    now = pci_driver(sysfs, address)
    if target is None or now == target:
        return
    if now is None and sysfs.is_dir(driver_dir(target)):
        write(sysfs, f"{driver_dir(target)}/bind", address, f"cannot bind {address}")
        now = pci_driver(sysfs, address)
    if now != target:
        raise HandlerError(f"{address} is on {now or 'no driver'}, not back on {target}")


def _mig_off(device: LifecycleDevice, config: TypeConfig, ops: HostOps, driver: str | None) -> None:
    """A GPU of a MIG-capable model (``gpu_model``, from the agent's table) on NVIDIA's driver
    goes out whole and comes back with MIG mode off (:func:`mig.whole_gpu_mig_off`). On
    another driver (vfio-pci) nvidia-smi cannot see it: nothing is asked."""
    if driver == "nvidia" and device.attributes.get("gpu_model"):
        from devassign.lifecycle.handlers.mig import whole_gpu_mig_off

        whole_gpu_mig_off(device.address, config, ops)


class PciHandler:
    """``pci`` (and ``sriov_pf``) devices. Config: ``reset`` (required | bus | none-ok),
    ``host_driver`` (where to return a function whose original driver is unknown)."""

    def setup(self, device: LifecycleDevice, config: TypeConfig, ops: HostOps) -> Facts:
        require_present(ops.sysfs, device.address)
        fallback = original_driver(device, config)  # checked before anything is written
        refusal = reset_refusal(device, config, ops.sysfs)
        if refusal:
            raise HandlerError(refusal)
        carved = mdev_instances(ops.sysfs, device.address)
        if carved:
            # The server never hands out a GPU whole beside a held slot; this holds where it
            # did not know (an mdev made by hand since the last report).
            more = f" and {len(carved) - 1} more" if len(carved) > 1 else ""
            raise HandlerError(
                f"{device.address} runs mdev {carved[0]}{more} (a vGPU in use): it cannot be assigned whole"
            )
        if not ops.sysfs.exists(f"{pci_dir(device.address)}/iommu_group"):  # before anything is written
            raise HandlerError(f"{device.address} cannot be assigned: {NO_IOMMU_GROUP}")
        elsewhere = held_elsewhere(ops, device.address)  # a guest devassign never started: hands off
        if elsewhere:
            raise HandlerError(elsewhere)
        _mig_off(device, config, ops, pci_driver(ops.sysfs, device.address))
        was_on = bind_vfio(ops.sysfs, device.address)
        problems = group_problems(ops.sysfs, device.address, device.companions)
        if problems:
            raise HandlerError(
                f"{device.address} cannot be assigned: {'; '.join(problems)}, "
                "which this consumer does not hold"
            )
        if was_on is not None:
            names.driver_name(was_on, f"{device.address}: current driver")
        return {"original_driver": was_on or fallback}

    def cleanup(self, device: LifecycleDevice, config: TypeConfig, ops: HostOps) -> None:
        require_present(ops.sysfs, device.address)
        target = original_driver(device, config)  # checked before anything is written
        refuse_if_held(ops.sysfs, ops.vfio_users, device.address)
        reset_function(ops.sysfs, device.address, config)
        release_vfio(ops.sysfs, device.address, target)
        # The driver it went to: the one asked for, or the kernel's pick where none was known.
        _mig_off(device, config, ops, pci_driver(ops.sysfs, device.address))

    def health(self, device: LifecycleDevice, config: TypeConfig, ops: HostOps) -> HealthResult:
        if not ops.sysfs.is_dir(pci_dir(device.address)):
            return HealthResult(False, f"PCI device {device.address} is not present")
        dead = config_space_problem(ops.sysfs, device.address)
        if dead:
            return HealthResult(False, dead)
        if device.consumer is None:
            refusal = reset_refusal(device, config, ops.sysfs) or held_elsewhere(ops, device.address)
            return HealthResult(refusal is None, refusal)
        driver = pci_driver(ops.sysfs, device.address)
        if driver != VFIO:
            return HealthResult(False, f"{device.address} is assigned but on {driver}, not {VFIO}")
        problems = group_problems(ops.sysfs, device.address, frozenset())
        return HealthResult(not problems, "; ".join(problems) or None)
