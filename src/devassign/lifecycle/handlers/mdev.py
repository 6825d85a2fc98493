"""Mediated devices (vGPU slots): created for a consumer, removed after.

The mdev's UUID is derived from the consumer and the slot, so a setup re-run after a
restart finds the device it already created instead of making a second one, and the server
can write the guest's XML without asking the agent. A UUID the agent recorded
(``mdev_uuid``) wins over the derived one.
"""

from __future__ import annotations

import uuid

from devassign.domain import MDEV_ADDRESS_RE
from devassign.lifecycle.base import Facts, HandlerError, HealthResult, LifecycleDevice, TypeConfig
from devassign.lifecycle.handlers.common import pci_dir, write
from devassign.lifecycle.host import HostOps

# Fixed forever: changing it would orphan every mdev created before.
MDEV_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "devassign:mdev")


def parse_slot(address: str) -> tuple[str, str, int]:
    """``PARENT/MDEV_TYPE/INDEX`` -> its three parts."""
    m = MDEV_ADDRESS_RE.fullmatch(address)
    if not m:
        raise HandlerError(f"{address!r} is not an mdev slot (PARENT/MDEV_TYPE/INDEX)")
    return m.group(1), m.group(2), int(m.group(3))


def mdev_uuid(device: LifecycleDevice) -> str | None:
    """The mdev's UUID: the recorded one, else derived from consumer + slot; ``None`` if neither."""
    recorded = device.get("mdev_uuid")
    if recorded:
        return str(uuid.UUID(str(recorded)))
    if device.consumer is None:
        return None
    return str(uuid.uuid5(MDEV_NAMESPACE, f"{device.consumer}/{device.address}"))


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
            have = ops.sysfs.link_name(f"bus/mdev/devices/{uid}/mdev_type")
            if have != mtype:
                raise HandlerError(f"mdev {uid} exists with type {have}, not {mtype}")
            return {"mdev_uuid": uid}
        type_dir = f"{pci_dir(parent)}/mdev_supported_types/{mtype}"
        if not ops.sysfs.is_dir(type_dir):
            raise HandlerError(f"{parent} offers no mdev type {mtype}")
        available = ops.sysfs.read(f"{type_dir}/available_instances")
        if available is not None and available.isdigit() and int(available) == 0:
            raise HandlerError(f"no {mtype} instance left on {parent}")
        write(ops.sysfs, f"{type_dir}/create", uid, f"cannot create {mtype} mdev on {parent}")
        if not ops.sysfs.exists(f"bus/mdev/devices/{uid}"):
            raise HandlerError(f"mdev {uid} did not appear after creating it on {parent}")
        return {"mdev_uuid": uid}

    def cleanup(self, device: LifecycleDevice, config: TypeConfig, ops: HostOps) -> None:
        parse_slot(device.address)
        uid = self._uuid(device)
        rel = f"bus/mdev/devices/{uid}"
        if not ops.sysfs.exists(rel):
            return
        write(ops.sysfs, f"{rel}/remove", "1", f"cannot remove mdev {uid}")
        if ops.sysfs.exists(rel):
            raise HandlerError(f"mdev {uid} is still there after removing it (still in use?)")

    def health(self, device: LifecycleDevice, config: TypeConfig, ops: HostOps) -> HealthResult:
        parent, mtype, _ = parse_slot(device.address)
        if not ops.sysfs.is_dir(f"{pci_dir(parent)}/mdev_supported_types/{mtype}"):
            return HealthResult(False, f"{parent} no longer offers mdev type {mtype}")
        uid = mdev_uuid(device)
        if device.consumer is not None and uid and not ops.sysfs.exists(f"bus/mdev/devices/{uid}"):
            return HealthResult(False, f"the assigned mdev {uid} is gone")
        return HealthResult(True)
