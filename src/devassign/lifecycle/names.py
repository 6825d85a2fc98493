"""The kernel's name rules for every value that becomes part of a sysfs path.

The agent runs as root: a driver name of ``../../../../tmp/x`` once made it write ``bind``
outside sysfs. So each value a handler puts into a path (whether it came from the server,
the journal or the host itself) is checked here first, in one place; a refusal is a
:class:`HandlerError` that names the value and the rule, and nothing is written.
"""

from __future__ import annotations

import re

from devassign.lifecycle.base import HandlerError

# Driver names (``bus/pci/drivers/<name>``): module names and the like.
DRIVER_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# domain:bus:slot.function; VMD domains have five hex digits.
PCI_ADDRESS_RE = re.compile(r"^[0-9a-f]{4,5}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
# What the kernel writes back for an mdev: lowercase, hyphenated.
MDEV_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# ``mdev_supported_types/<name>``: nvidia-35, i915-GVTg_V5_4, vfio_ap-passthrough.
MDEV_TYPE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
# ``bus/usb/devices/<bus>-<port>[.<port>...]``: at most 7 tiers below the root hub.
USB_BUS_PATH_RE = re.compile(r"^[0-9]{1,3}-[0-9]{1,3}(\.[0-9]{1,3}){0,6}$")
# IFNAMSIZ is 16 with the NUL; the kernel's dev_valid_name refuses / : and whitespace.
IFNAME_MAX = 15
_IFNAME_BAD = re.compile(r"[/:\s\x00]")


def _dots(value: str) -> bool:
    return value in (".", "..")


def _refuse(what: str, value: object, rule: str) -> HandlerError:
    return HandlerError(f"{what} {value!r} is not {rule}: refused, nothing written")


def driver_name(value: object, what: str = "driver name") -> str:
    """A driver name (``original_driver``, the type's ``host_driver``, the host's own)."""
    if not isinstance(value, str) or not DRIVER_RE.fullmatch(value) or _dots(value):
        raise _refuse(what, value, "a driver name (1-64 letters, digits, _ . -; no /)")
    return value


def pci_address(value: object, what: str = "PCI address") -> str:
    if not isinstance(value, str) or not PCI_ADDRESS_RE.fullmatch(value):
        raise _refuse(what, value, "a PCI address (e.g. 0000:3b:02.1)")
    return value


def mdev_uuid(value: object, what: str = "mdev UUID") -> str:
    if not isinstance(value, str) or not MDEV_UUID_RE.fullmatch(value):
        raise _refuse(what, value, "a canonical UUID (lowercase, hyphenated)")
    return value


def mdev_type(value: object, what: str = "mdev type") -> str:
    if not isinstance(value, str) or not MDEV_TYPE_RE.fullmatch(value) or _dots(value):
        raise _refuse(what, value, "an mdev type name (letters, digits, _ . : -; no /)")
    return value


def ifname(value: object, what: str = "interface name") -> str:
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= IFNAME_MAX
        or _IFNAME_BAD.search(value)
        or _dots(value)
    ):
        raise _refuse(what, value, f"an interface name (1-{IFNAME_MAX} characters, no / : or spaces)")
    return value


def usb_bus_path(value: object, what: str = "USB bus path") -> str:
    if not isinstance(value, str) or not USB_BUS_PATH_RE.fullmatch(value):
        raise _refuse(what, value, "a USB bus path (e.g. 1-2.3)")
    return value
