"""USB discovery from ``bus/usb/devices`` (Documentation/ABI/stable/sysfs-bus-usb).

Only whole devices are assignable: interfaces (``1-1:1.0``), root hubs (``usb1``) and
other hubs (device class 09, or a device with one behind it) are skipped. A hub is no guest's
device (QEMU's usb-host does not pass one through), and taking it from the host would
disconnect every device behind it, other tenants' included: the devices behind it are offered
each on their own, with ``usb_hub``.
A device is known by its serial where it has one, else by where it is plugged in
(:func:`devassign.domain.usb_address`); :func:`name_usb` keeps the name a token was given
while it stays at its port, so plugging in or pulling out another token never renames it.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Collection
from typing import Any

from devassign.agent.discovery import drop_odd_values, hex_id
from devassign.agent.hostuse import HostUse, host_use_reasons
from devassign.agent.model import FLAG_HOST_IN_USE, FoundDevice, first_time
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


def name_usb(
    devices: list[FoundDevice],
    names: dict[str, dict[str, Any]],
    held: Collection[str] = (),
    warned: set[str] | None = None,
) -> None:
    """Give each USB device its address, the same one as before while it stays where it is.

    ``names``: bus path -> ``{"address", "vendor_id", "product_id", "serial"}``, the names
    given by the scan before (the agent keeps it in its state file); updated in place. A
    device still at its bus path with the same vendor, product and serial keeps its name. A
    newcomer gets ``usb:VENDOR:PRODUCT:SERIAL`` when no other device present has that
    identity, else ``usb:BUSPATH``: a serial name is given to one device only, and two tokens
    sharing a serial no longer rename each other as either one comes or goes. ``held``: the
    addresses the agent holds for a consumer; their names are remembered while they are away
    (a token pulled out and put back at the same port gets its name back). The warning for a
    shared serial is logged once per device for each ``warned`` set.
    """
    usb = [d for d in devices if d.kind is DeviceKind.USB and isinstance(d.attributes.get("bus_path"), str)]
    usb.sort(key=lambda d: str(d.attributes["bus_path"]))
    serial_names = {id(d): _serial_name(d) for d in usb}
    sharing = Counter(n for n in serial_names.values() if n is not None)
    present = {str(d.attributes["bus_path"]) for d in usb}
    # A held device away (pulled out) keeps its name for its return: no newcomer takes it.
    away = {
        bus_path: entry
        for bus_path, entry in names.items()
        if bus_path not in present and entry.get("address") in held
    }
    taken: set[str] = {str(entry["address"]) for entry in away.values()}
    newcomers: list[FoundDevice] = []
    for dev in usb:
        bus_path = str(dev.attributes["bus_path"])
        before = names.get(bus_path) or {}
        kept = before.get("address")
        if _same(before, dev) and kept in (serial_names[id(dev)], f"usb:{bus_path}") and kept not in taken:
            dev.address = str(kept)
            taken.add(dev.address)
        else:
            newcomers.append(dev)
    for dev in newcomers:
        bus_path = str(dev.attributes["bus_path"])
        serial_name = serial_names[id(dev)]
        if serial_name is not None and sharing[serial_name] == 1 and serial_name not in taken:
            dev.address = serial_name
        else:
            dev.address = f"usb:{bus_path}"
            if serial_name is not None:
                _warn_shared(serial_name, bus_path, warned)
        taken.add(dev.address)
    names.clear()
    names.update(away)
    for dev in usb:
        names[str(dev.attributes["bus_path"])] = {
            "address": dev.address,
            "vendor_id": dev.vendor_id,
            "product_id": dev.product_id,
            "serial": dev.attributes.get("serial"),
        }


def _serial_name(dev: FoundDevice) -> str | None:
    """``usb:VENDOR:PRODUCT:SERIAL`` where the device has a usable serial, else ``None``."""
    bus_path = str(dev.attributes["bus_path"])
    serial = dev.attributes.get("serial")
    serial = serial if isinstance(serial, str) else None
    name = usb_address(dev.vendor_id or "", dev.product_id or "", serial, bus_path)
    return None if name == f"usb:{bus_path}" else name


def _same(before: dict[str, Any], dev: FoundDevice) -> bool:
    return (before.get("vendor_id"), before.get("product_id"), before.get("serial")) == (
        dev.vendor_id,
        dev.product_id,
        dev.attributes.get("serial"),
    )


def _warn_shared(serial_name: str, bus_path: str, warned: set[str] | None) -> None:
    if not first_time(warned, f"usb {bus_path}: shares {serial_name}"):
        return
    log.warning(
        "%s: identity shared by several devices (or held by another), so the one at %s is usb:%s",
        serial_name,
        bus_path,
        bus_path,
    )
