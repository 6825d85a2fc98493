"""USB discovery from ``bus/usb/devices`` (Documentation/ABI/stable/sysfs-bus-usb).

Only whole devices are assignable: interfaces (``1-1:1.0``), root hubs (``usb1``) and
other hubs (device class 09, or a device with one behind it) are skipped. A hub is no guest's
device (QEMU's usb-host does not pass one through), and taking it from the host would
disconnect every device behind it, other tenants' included: the devices behind it are offered
each on their own, with ``usb_hub``.
A device is known by its serial where it has one, else by where it is plugged in
(:func:`devassign.domain.usb_address`).
"""

from __future__ import annotations

import logging
import re

from devassign.agent.discovery import drop_odd_values, hex_id
from devassign.agent.hostuse import HostUse, host_use_reasons
from devassign.agent.model import FLAG_HOST_IN_USE, FoundDevice
from devassign.domain import DeviceKind, usb_address
from devassign.hostio import Sysfs

log = logging.getLogger(__name__)

_BUSID_RE = re.compile(r"^[0-9]+-[0-9]+(\.[0-9]+)*$")  # ASCII digits: \d takes any script's
HUB_CLASS = "09"


def scan_usb(sysfs: Sysfs, use: HostUse | None = None) -> list[FoundDevice]:
    """Every USB device (not interface, not hub) the host shows; with ``use`` (what the host's
    ``/proc`` says it uses), one whose disk or network link the host uses is flagged
    ``host_in_use`` as a PCI function is (agent/hostuse.py)."""
    found: list[FoundDevice] = []
    busids = [b for b in sysfs.listdir("bus/usb/devices") if _BUSID_RE.fullmatch(b)]  # not usbN, 1-1:1.0
    # A device with one behind it (1-3 of 1-3.4) is a hub even where its class is unreadable.
    hubs = {b for b in busids if _is_hub(sysfs, b)} | {b.rpartition(".")[0] for b in busids if "." in b}
    for busid in busids:
        if busid in hubs:
            log.info("usb %s: a hub, not offered (the devices behind it are)", busid)
            continue
        dev = _read_usb(sysfs, busid)
        if dev is not None:
            if use is not None:
                # usb-storage or the NIC driver lets go of it when it goes to a guest, as
                # nvme does of a PCI disk: the host's boot stick or backup disk stays.
                dev.host_use = host_use_reasons(sysfs, f"bus/usb/devices/{busid}", use)
                if dev.host_use:
                    dev.flag(FLAG_HOST_IN_USE)
            upstream = busid.rpartition(".")[0]
            if upstream in hubs:
                dev.attributes["usb_hub"] = upstream
            found.append(dev)
    drop_odd_values(found)
    return found


def _is_hub(sysfs: Sysfs, busid: str) -> bool:
    return (sysfs.read(f"bus/usb/devices/{busid}/bDeviceClass") or "").strip().lower() == HUB_CLASS


def _read_usb(sysfs: Sysfs, busid: str) -> FoundDevice | None:
    base = f"bus/usb/devices/{busid}"
    vendor = hex_id(sysfs.read(f"{base}/idVendor"), "idVendor", f"usb {busid}")
    product = hex_id(sysfs.read(f"{base}/idProduct"), "idProduct", f"usb {busid}")
    if vendor is None or product is None:
        log.warning("usb %s: vanished or has no readable ids, skipped", busid)
        return None
    serial = sysfs.read(f"{base}/serial") or None
    attrs: dict[str, object] = {"bus_path": busid}
    for key in ("serial", "manufacturer", "product", "busnum", "devnum", "speed"):
        value = sysfs.read(f"{base}/{key}")
        if value:
            attrs[key] = value
    return FoundDevice(
        address=usb_address(vendor, product, serial, busid),
        kind=DeviceKind.USB,
        vendor_id=vendor,
        product_id=product,
        driver=sysfs.link_name(f"{base}/driver"),
        attributes=attrs,
    )
