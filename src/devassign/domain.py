"""Domain vocabulary shared by every layer: states, kinds, roles and device identities.

Kept free of I/O and of any framework so the agent, the scheduler, the store and the
server all speak the same words without importing one another.
"""

from __future__ import annotations

import re
from enum import StrEnum


class DeviceState(StrEnum):
    """Where a device is in its life (SPEC.md, "Concepts").

    ``available -> reserved -> assigned -> cleaning -> available``; ``quarantined`` after a
    failed cleanup; ``unhealthy`` for a free device whose health check failed; ``missing`` for a
    device that vanished from its host's report while in use; ``removed`` for a free device that
    vanished (kept, never handed out, revived if it comes back).
    """

    AVAILABLE = "available"
    RESERVED = "reserved"
    ASSIGNED = "assigned"
    CLEANING = "cleaning"
    QUARANTINED = "quarantined"
    UNHEALTHY = "unhealthy"
    MISSING = "missing"
    REMOVED = "removed"


# States in which a device belongs to somebody and must never be handed to anyone else.
IN_USE_STATES: frozenset[DeviceState] = frozenset(
    {DeviceState.RESERVED, DeviceState.ASSIGNED, DeviceState.CLEANING}
)


class DeviceKind(StrEnum):
    """How a device was found (SPEC.md, ``agent discover``)."""

    PCI = "pci"
    SRIOV_PF = "sriov_pf"
    SRIOV_VF = "sriov_vf"
    MDEV_TYPE = "mdev_type"
    USB = "usb"
    STATIC = "static"


class Role(StrEnum):
    """Token roles: an admin runs the cloud, an agent speaks for one host, a member for a project."""

    ADMIN = "admin"
    AGENT = "agent"
    MEMBER = "member"


class AllocationState(StrEnum):
    """An allocation is live while reserved or assigned; released ones stay for history."""

    RESERVED = "reserved"
    ASSIGNED = "assigned"
    RELEASED = "released"


NAME_RE = re.compile(r"^[A-Za-z0-9_]{1,64}$")
HOST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$")
PCI_ADDRESS_RE = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
# An mdev slot: the parent's PCI address, the mdev type, the slot index.
MDEV_ADDRESS_RE = re.compile(r"^([0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7])/([A-Za-z0-9_.-]+)/(\d+)$")
# A USB device: vendor:product:serial, or its bus path (1-2.3) when it has no serial.
USB_ADDRESS_RE = re.compile(r"^(usb:[0-9a-f]{4}:[0-9a-f]{4}:[A-Za-z0-9_.-]{1,128}|usb:\d+-\d+(\.\d+)*)$")
STATIC_ADDRESS_RE = re.compile(r"^[A-Za-z0-9_.:/-]{1,200}$")
HEX4_RE = re.compile(r"^[0-9a-f]{4}$")


def address_error(kind: DeviceKind, address: str) -> str | None:
    """Say what is wrong with ``address`` for a device of ``kind``, or ``None`` if it is well formed."""
    if kind in (DeviceKind.PCI, DeviceKind.SRIOV_PF, DeviceKind.SRIOV_VF):
        if not PCI_ADDRESS_RE.fullmatch(address):
            return (
                f"{address!r} is not a PCI address: expected domain:bus:slot.function "
                "in lowercase hex, e.g. 0000:3b:02.1"
            )
    elif kind is DeviceKind.MDEV_TYPE:
        if not MDEV_ADDRESS_RE.fullmatch(address):
            return (
                f"{address!r} is not an mdev slot: expected PARENT_PCI_ADDRESS/MDEV_TYPE/INDEX, "
                "e.g. 0000:3b:00.0/nvidia-230/0"
            )
    elif kind is DeviceKind.USB:
        if not USB_ADDRESS_RE.fullmatch(address):
            return (
                f"{address!r} is not a USB identity: expected usb:VENDOR:PRODUCT:SERIAL "
                "or usb:BUSPATH, e.g. usb:0529:0620:12345 or usb:1-2.3"
            )
    elif not STATIC_ADDRESS_RE.fullmatch(address):
        return f"{address!r} is not a declared id: use letters, digits and _ . : / -"
    return None


def mdev_address(parent: str, mdev_type: str, index: int) -> str:
    """The identity of slot ``index`` of ``mdev_type`` on the GPU at ``parent``."""
    return f"{parent}/{mdev_type}/{index}"


def usb_address(vendor_id: str, product_id: str, serial: str | None, bus_path: str) -> str:
    """The identity of a USB device: its serial when it has one, else where it is plugged in."""
    if serial and re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", serial):
        return f"usb:{vendor_id}:{product_id}:{serial}"
    return f"usb:{bus_path}"
