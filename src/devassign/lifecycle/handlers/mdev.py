"""Mediated devices (vGPU slots): created for a consumer, removed after.

The mdev's UUID is derived from the consumer and the slot, so a setup re-run after a
restart finds the device it already created instead of making a second one, and the server
can write the guest's XML without asking the agent. A UUID the agent recorded
(``mdev_uuid``, a fact of this slot's setup) is used where there is no consumer; where there
is one it must be the derived UUID: a recorded UUID that is not names another consumer's
mdev (a request once smuggled one in), and the handler refuses to touch it.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from devassign.domain import MDEV_ADDRESS_RE, ascii_digits
from devassign.hostio import Sysfs
from devassign.lifecycle import names
from devassign.lifecycle.base import (
    MDEV_HELD,
    Facts,
    HandlerError,
    HealthResult,
    LifecycleDevice,
    TypeConfig,
)
from devassign.lifecycle.handlers.common import config_space_problem, pci_dir, write
from devassign.lifecycle.host import HostOps

# Fixed forever: changing it would orphan every mdev created before.
MDEV_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "devassign:mdev")


def parse_slot(address: str) -> tuple[str, str, int]:
    """``PARENT/MDEV_TYPE/INDEX`` -> its three parts."""
    m = MDEV_ADDRESS_RE.fullmatch(address)
    if not m:
        raise HandlerError(f"{address!r} is not an mdev slot (PARENT/MDEV_TYPE/INDEX)")
    parent = names.pci_address(m.group(1), f"the parent of mdev slot {address}")
    mtype = names.mdev_type(m.group(2), f"the type of mdev slot {address}")
    return parent, mtype, int(m.group(3))


def mdev_uuid(device: LifecycleDevice) -> str | None:
    """The mdev's UUID: derived from consumer + slot, else the recorded fact; ``None`` if neither.

    A recorded UUID that is not the derived one is refused (:class:`HandlerError`).
    """
    fact = device.known("mdev_uuid")
    recorded = None if fact is None else names.mdev_uuid(fact, f"{device.address}: recorded mdev_uuid")
    if device.consumer is None:
        return recorded
    derived = str(uuid.uuid5(MDEV_NAMESPACE, f"{device.consumer}/{device.address}"))
    if recorded is not None and recorded != derived:
        raise HandlerError(
            f"{device.address}: the recorded mdev_uuid {recorded} is not this slot's ({derived}, "
            f"from its consumer): refusing to touch another consumer's mdev; clearing the device "
            "cleans it from what the host shows"
        )
    return derived


def check_owner(sysfs: Sysfs, uid: str, parent: str, mtype: str) -> None:
    """Refuse an existing mdev that is not on this slot's parent with this slot's type."""
    rel = f"bus/mdev/devices/{uid}"
    have = sysfs.link_name(f"{rel}/mdev_type")
    target = sysfs.readlink(rel)
    on = os.path.basename(os.path.dirname(target.rstrip("/"))) if target else None
    if have != mtype or on != parent:
        raise HandlerError(
            f"mdev {uid} exists as {have or 'an unknown type'} on {on or 'an unknown parent'}, "
            f"not {mtype} on {parent}: not this slot's, left alone"
        )


class MdevHandler:
    """``mdev_type`` slots. No config keys."""

    def _uuid(self, device: LifecycleDevice) -> str:
        found = mdev_uuid(device)
        if found is None:
            raise HandlerError(
                f"{device.address}: no consumer and no recorded mdev_uuid, so the mdev is unknown"
            )
        return found

    def setup(self, device: LifecycleDevice, config: TypeConfig, ops: HostOps) -> Facts:
        parent, mtype, _ = parse_slot(device.address)
        uid = self._uuid(device)
        if ops.sysfs.exists(f"bus/mdev/devices/{uid}"):
            check_owner(ops.sysfs, uid, parent, mtype)
            return {"mdev_uuid": uid}
        type_dir = f"{pci_dir(parent)}/mdev_supported_types/{mtype}"
        if not ops.sysfs.is_dir(type_dir):
            raise HandlerError(f"{parent} offers no mdev type {mtype}")
        available = ops.sysfs.read(f"{type_dir}/available_instances")
        if available is not None and ascii_digits(available) and int(available) == 0:
            raise HandlerError(f"no {mtype} instance left on {parent}")
        write(ops.sysfs, f"{type_dir}/create", uid, f"cannot create {mtype} mdev on {parent}")
        if not ops.sysfs.exists(f"bus/mdev/devices/{uid}"):
            raise HandlerError(f"mdev {uid} did not appear after creating it on {parent}")
        return {"mdev_uuid": uid}

    def cleanup(self, device: LifecycleDevice, config: TypeConfig, ops: HostOps) -> None:
        parent, mtype, _ = parse_slot(device.address)
        uid = self._uuid(device)
        rel = f"bus/mdev/devices/{uid}"
        if not ops.sysfs.exists(rel):
            return
        check_owner(ops.sysfs, uid, parent, mtype)
        write(ops.sysfs, f"{rel}/remove", "1", f"cannot remove mdev {uid}")
        if ops.sysfs.exists(rel):
            raise HandlerError(f"mdev {uid} is still there after removing it (still in use?)")

    def health(self, device: LifecycleDevice, config: TypeConfig, ops: HostOps) -> HealthResult:
        parent, mtype, _ = parse_slot(device.address)
        if not ops.sysfs.is_dir(pci_dir(parent)):
            return HealthResult(False, f"the parent device {parent} of {device.address} is gone")
        dead = config_space_problem(ops.sysfs, parent)
        if dead:
            return HealthResult(False, f"parent {dead}")
        if not ops.sysfs.is_dir(f"{pci_dir(parent)}/mdev_supported_types/{mtype}"):
            return HealthResult(False, f"{parent} no longer offers mdev type {mtype}")
        uid = mdev_uuid(device)
        if device.consumer is not None and uid and not ops.sysfs.exists(f"bus/mdev/devices/{uid}"):
            return HealthResult(False, f"the assigned mdev {uid} is gone")
        if device.consumer is None:
            taken = _taken_by_others(device, ops.sysfs, parent, mtype)
            if taken:
                return HealthResult(False, taken)
        return HealthResult(True)


def _taken_by_others(device: LifecycleDevice, sysfs: Sysfs, parent: str, mtype: str) -> str | None:
    """Why this free slot cannot be created now because of mdevs this agent does not hold on
    its parent (made by hand), or ``None``.

    The parent says how many more of the type it can create (``available_instances``: on an
    NVIDIA time-sliced GPU 0 for every type but the one running). Without such mdevs the
    scheduler's own counts agree with it; with them, the free slots of the type beyond what is
    available cannot be created, so they are kept out of service, the highest indices first.
    """
    held: Any = device.facts.get(MDEV_HELD) or {}
    uuids = {str(u) for u in held.get("uuids", [])} if isinstance(held, dict) else set()
    slots = {str(a) for a in held.get("slots", [])} if isinstance(held, dict) else set()
    types = f"{pci_dir(parent)}/mdev_supported_types"
    others = sorted(
        (uid, t)
        for t in sysfs.listdir(types)
        for uid in sysfs.listdir(f"{types}/{t}/devices")
        if uid not in uuids
    )
    if not others:
        return None
    text = sysfs.read(f"{types}/{mtype}/available_instances")
    if text is None or not ascii_digits(text):
        return None
    available = int(text)
    _, _, index = parse_slot(device.address)
    held_below = 0
    for address in slots:
        try:
            p, t, i = parse_slot(address)
        except HandlerError:
            continue
        held_below += p == parent and t == mtype and i < index
    if index - held_below < available:
        return None
    uid, t = others[0]
    more = f" and {len(others) - 1} more" if len(others) > 1 else ""
    return (
        f"mdev {uid} ({t}){more} on {parent} is none of this agent's (made by hand?), and {parent} "
        f"can create only {available} more {mtype}: destroy it, or this slot stays out of service"
    )
