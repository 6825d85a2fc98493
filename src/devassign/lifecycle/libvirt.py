"""The libvirt domain XML elements that give a consumer's devices to its guest.

``managed='no'`` everywhere: the agent's handlers, not libvirt, bind drivers and create
mdevs, so libvirt must not undo that work when a guest stops. Every form produced here is
checked against libvirt's own RelaxNG schema in the tests.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lxml import etree

from devassign.domain import PCI_ADDRESS_RE, DeviceKind, ascii_digits
from devassign.lifecycle.base import HandlerError, LifecycleDevice
from devassign.lifecycle.handlers.mdev import mdev_uuid
from devassign.lifecycle.handlers.sriov import wanted_mac, wanted_vlan
from devassign.lifecycle.handlers.usb import usb_identity


class LibvirtXMLError(ValueError):
    """The device cannot be described to libvirt (e.g. an mdev with no consumer)."""


def _pci_address(parent: etree._Element, address: str, *, typed: bool = False) -> None:
    if not PCI_ADDRESS_RE.fullmatch(address):
        raise LibvirtXMLError(f"{address!r} is not a PCI address")
    dom, bus, rest = address.split(":")
    slot, function = rest.split(".")
    attrs = {"domain": f"0x{dom}", "bus": f"0x{bus}", "slot": f"0x{slot}"}
    attrs["function"] = f"0x{function}"
    el = etree.SubElement(parent, "address", {"type": "pci"} if typed else {})
    for key, value in attrs.items():
        el.set(key, value)


def pci_hostdev(address: str) -> etree._Element:
    hostdev = etree.Element("hostdev", mode="subsystem", type="pci", managed="no")
    etree.SubElement(hostdev, "driver", name="vfio")
    _pci_address(etree.SubElement(hostdev, "source"), address)
    return hostdev


def vf_interface(address: str, mac: str | None, vlan: int) -> etree._Element:
    interface = etree.Element("interface", type="hostdev", managed="no")
    if mac:
        etree.SubElement(interface, "mac", address=mac)
    etree.SubElement(interface, "driver", name="vfio")
    _pci_address(etree.SubElement(interface, "source"), address, typed=True)
    if vlan:
        etree.SubElement(etree.SubElement(interface, "vlan"), "tag", id=str(vlan))
    return interface


def mdev_hostdev(uuid: str) -> etree._Element:
    hostdev = etree.Element("hostdev", mode="subsystem", type="mdev", model="vfio-pci")
    etree.SubElement(etree.SubElement(hostdev, "source"), "address", uuid=uuid)
    return hostdev


def _usb_numbers(device: LifecycleDevice) -> tuple[Any, Any]:
    """The bus and device numbers where the device is plugged in now (its host's last report),
    else where its setup found it: a token plugged in again while held has new numbers, and its
    old ones may be another device's by now."""
    now = [device.attributes.get(k) for k in ("busnum", "devnum")]
    if all(isinstance(v, str) and ascii_digits(v) and len(v) <= 3 for v in now):
        return int(str(now[0])), int(str(now[1]))
    return device.facts.get("usb_bus"), device.facts.get("usb_device")


def usb_hostdev(device: LifecycleDevice) -> etree._Element:
    ident = usb_identity(device)
    bus, dev = _usb_numbers(device)
    for name, value in (("usb_bus", bus), ("usb_device", dev)):
        bad = isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1000
        if value is not None and bad:
            raise LibvirtXMLError(f"{device.address}: recorded {name} {value!r} is not a USB number")
    has_ids = ident.vendor_id is not None and ident.product_id is not None
    if not has_ids and (bus is None or dev is None):
        raise LibvirtXMLError(f"{device.address}: need vendor/product ids or the usb_bus/usb_device numbers")
    hostdev = etree.Element("hostdev", mode="subsystem", type="usb", managed="no")
    source = etree.SubElement(hostdev, "source")
    if has_ids:
        etree.SubElement(source, "vendor", id=f"0x{ident.vendor_id}")
        etree.SubElement(source, "product", id=f"0x{ident.product_id}")
    if bus is not None and dev is not None:
        etree.SubElement(source, "address", bus=str(int(bus)), device=str(int(dev)))
    return hostdev


def device_element(device: LifecycleDevice) -> etree._Element | None:
    """The element for one device; ``None`` for declared (static) resources, which the guest
    does not see as hardware.

    Reads: the address; for VFs ``mac`` and ``vlan`` (params, then attributes); for mdevs
    the UUID derived from the consumer, or the ``mdev_uuid`` fact its setup recorded (never a
    param: a request naming another consumer's mdev must not get it); for USB the
    vendor/product ids and, where recorded, ``usb_bus`` / ``usb_device``.
    """
    try:
        if device.kind in (DeviceKind.PCI, DeviceKind.SRIOV_PF):
            return pci_hostdev(device.address)
        if device.kind is DeviceKind.SRIOV_VF:
            mac, vlan = wanted_mac(device), wanted_vlan(device)
            if mac is None and not vlan:
                return pci_hostdev(device.address)
            return vf_interface(device.address, mac, vlan)
        if device.kind is DeviceKind.MDEV_TYPE:
            uuid = mdev_uuid(device)
            if uuid is None:
                raise LibvirtXMLError(f"{device.address}: mdev with no consumer and no mdev_uuid")
            return mdev_hostdev(uuid)
        if device.kind is DeviceKind.USB:
            return usb_hostdev(device)
        if device.kind is DeviceKind.VGPU:
            if device.parent is None:
                raise LibvirtXMLError(f"{device.address}: a vGPU without its VF")
            # The VF, with its vGPU type set, stays on NVIDIA's VFIO driver: passed as it is.
            return pci_hostdev(device.parent)
        if device.kind is DeviceKind.MIG:
            raise LibvirtXMLError(
                f"{device.address}: a MIG GPU instance is not a guest device by itself (a process on "
                "the host uses it); give guests MIG-backed vGPU types instead"
            )
    except HandlerError as exc:
        raise LibvirtXMLError(str(exc)) from exc
    return None


def device_elements(devices: Iterable[LifecycleDevice]) -> list[etree._Element]:
    """The elements for ``devices``, in order, leaving out declared resources."""
    return [el for el in map(device_element, devices) if el is not None]


def devices_xml(devices: Iterable[LifecycleDevice]) -> str:
    """The elements as text, one after another, ready to paste into ``<devices>``."""
    return "".join(
        etree.tostring(el, pretty_print=True, encoding="unicode") for el in device_elements(devices)
    )
