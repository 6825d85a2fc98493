"""Small helpers the built-in handlers share: checked sysfs writes and PCI paths."""

from __future__ import annotations

from devassign.domain import PCI_ADDRESS_RE
from devassign.hostio import Sysfs
from devassign.lifecycle.base import HandlerError


def write(sysfs: Sysfs, rel: str, value: str, doing: str) -> None:
    """Write to sysfs, turning an I/O failure into a :class:`HandlerError` that says what for."""
    try:
        sysfs.write(rel, value)
    except OSError as exc:
        raise HandlerError(f"{doing}: {exc}") from exc


def pci_dir(address: str) -> str:
    """The device's folder relative to the sysfs root, checked so no address can escape it."""
    if not PCI_ADDRESS_RE.fullmatch(address):
        raise HandlerError(f"{address!r} is not a PCI address (e.g. 0000:3b:02.1)")
    return f"bus/pci/devices/{address}"


def require_present(sysfs: Sysfs, address: str) -> str:
    rel = pci_dir(address)
    if not sysfs.is_dir(rel):
        raise HandlerError(f"PCI device {address} is not present on this host")
    return rel


def pci_driver(sysfs: Sysfs, address: str) -> str | None:
    return sysfs.link_name(f"{pci_dir(address)}/driver")
