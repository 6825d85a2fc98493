"""USB devices, authorized only while assigned.

An unauthorized USB device is left unconfigured by the kernel: no host driver talks to it,
so a crypto token is unusable by the host and by anyone but its current consumer.
"""

from __future__ import annotations

from dataclasses import dataclass

from devassign.domain import USB_ADDRESS_RE, ascii_digits
from devassign.hostio import Sysfs
from devassign.lifecycle import names
from devassign.lifecycle.base import Facts, HandlerError, HealthResult, LifecycleDevice, TypeConfig
from devassign.lifecycle.handlers.common import write
from devassign.lifecycle.host import HostOps

USB_DEVICES = "bus/usb/devices"


@dataclass(frozen=True)
class UsbIdentity:
    vendor_id: str | None
    product_id: str | None
    serial: str | None
    bus_path: str | None


def usb_identity(device: LifecycleDevice) -> UsbIdentity:
    """What the address (``usb:V:P:SERIAL`` or ``usb:BUSPATH``) and discovery say identify it."""
    if not USB_ADDRESS_RE.fullmatch(device.address):
        raise HandlerError(f"{device.address!r} is not a USB identity")
    parts = device.address.split(":")
    if len(parts) == 4:
        return UsbIdentity(parts[1], parts[2], parts[3], None)
    return UsbIdentity(device.vendor_id, device.product_id, None, names.usb_bus_path(parts[1]))


def _matches(sysfs: Sysfs, path: str, ident: UsbIdentity) -> bool:
    rel = f"{USB_DEVICES}/{path}"
    return all(
        want is None or sysfs.read(f"{rel}/{name}") == want
        for name, want in (
            ("idVendor", ident.vendor_id),
            ("idProduct", ident.product_id),
            ("serial", ident.serial),
        )
    )


def find_bus_path(sysfs: Sysfs, device: LifecycleDevice) -> str | None:
    """Where the device is plugged in now, or ``None`` when it is not plugged in."""
    ident = usb_identity(device)
    if ident.bus_path is not None:
        if not sysfs.is_dir(f"{USB_DEVICES}/{ident.bus_path}"):
            return None
        if not _matches(sysfs, ident.bus_path, ident):
            raise HandlerError(
                f"the device at USB port {ident.bus_path} is not {ident.vendor_id}:"
                f"{ident.product_id} any more (replugged?)"
            )
        return ident.bus_path
    # Interfaces (1-2:1.0) and root hubs (usb1) are not devices one assigns.
    found = [
        name
        for name in sysfs.listdir(USB_DEVICES)
        if names.USB_BUS_PATH_RE.fullmatch(name) and _matches(sysfs, name, ident)
    ]
    if len(found) > 1:
        raise HandlerError(f"{device.address} matches several USB devices: {', '.join(found)}")
    return found[0] if found else None


class UsbHandler:
    """``usb`` devices. No config keys."""

    def setup(self, device: LifecycleDevice, config: TypeConfig, ops: HostOps) -> Facts:
        path = find_bus_path(ops.sysfs, device)
        if path is None:
            raise HandlerError(f"USB device {device.address} is not plugged in")
        rel = f"{USB_DEVICES}/{path}"
        if ops.sysfs.read(f"{rel}/authorized") != "1":
            write(ops.sysfs, f"{rel}/authorized", "1", f"cannot authorize USB device {path}")
        facts: Facts = {"usb_bus_path": path}
        for key, name in (("usb_bus", "busnum"), ("usb_device", "devnum")):
            value = ops.sysfs.read(f"{rel}/{name}")
            if value and ascii_digits(value):
                facts[key] = int(value)
        return facts

    def cleanup(self, device: LifecycleDevice, config: TypeConfig, ops: HostOps) -> None:
        path = find_bus_path(ops.sysfs, device)
        if path is None:
            return  # unplugged: nothing is authorized
        rel = f"{USB_DEVICES}/{path}"
        if ops.sysfs.read(f"{rel}/authorized") != "0":
            write(ops.sysfs, f"{rel}/authorized", "0", f"cannot deauthorize USB device {path}")

    def health(self, device: LifecycleDevice, config: TypeConfig, ops: HostOps) -> HealthResult:
        try:
            path = find_bus_path(ops.sysfs, device)
        except HandlerError as exc:
            return HealthResult(False, str(exc))
        if path is None:
            return HealthResult(False, f"USB device {device.address} is not plugged in")
        authorized = ops.sysfs.read(f"{USB_DEVICES}/{path}/authorized")
        if device.consumer is not None and authorized != "1":
            return HealthResult(False, f"USB device {path} is assigned but not authorized")
        return HealthResult(True)
