"""Small helpers the built-in handlers share: checked sysfs writes and PCI paths."""

from __future__ import annotations

from devassign.hostio import Sysfs
from devassign.lifecycle import names
from devassign.lifecycle.base import HandlerError
from devassign.lifecycle.host import inside_root


def write(sysfs: Sysfs, rel: str, value: str, doing: str) -> None:
    """Write to sysfs, turning an I/O failure into a :class:`HandlerError` that says what for.

    The path is resolved and checked against the root here too, whatever kind of
    :class:`Sysfs` this is: nothing a handler writes may land outside it.
    """
    try:
        inside_root(sysfs, rel)
        sysfs.write(rel, value)
    except OSError as exc:
        raise HandlerError(f"{doing}: {exc}") from exc


def pci_dir(address: str) -> str:
    """The device's folder relative to the sysfs root, checked so no address can escape it."""
    return f"bus/pci/devices/{names.pci_address(address)}"


def driver_dir(driver: str, what: str = "driver name") -> str:
    """``bus/pci/drivers/<driver>``, the name checked first."""
    return f"bus/pci/drivers/{names.driver_name(driver, what)}"


def require_present(sysfs: Sysfs, address: str) -> str:
    rel = pci_dir(address)
    if not sysfs.is_dir(rel):
        raise HandlerError(f"PCI device {address} is not present on this host")
    return rel


def pci_driver(sysfs: Sysfs, address: str) -> str | None:
    """The driver the function is bound to now, as the host shows it."""
    return sysfs.link_name(f"{pci_dir(address)}/driver")


def config_space_problem(sysfs: Sysfs, address: str) -> str | None:
    """Why ``address`` looks dead from its PCI config space, or ``None``.

    A function that fell off the bus (a GPU after a failed reset, a surprise-removed card)
    answers every config read with all ones, and stays that way until the host reboots. The
    whole header must read 0xFF, not just the vendor id: an SR-IOV VF's vendor and device id
    registers read 0xFFFF on a live VF (the PCIe spec's; the kernel shows the PF's ids in
    sysfs instead), as the real kernel showed this check. A tree without a ``config`` file
    (or one that cannot be read) says nothing either way.
    """
    head = sysfs.read_bytes(f"{pci_dir(address)}/config", 64)
    if head is None or len(head) < 16:
        return None
    if head == b"\xff" * len(head):
        return (
            f"{address} reads 0xFF from its PCI config space: it fell off the bus "
            "and stays dead until the host reboots"
        )
    return None


# What a PF's operstate says when its link cannot carry a VF's traffic.
_LINK_DOWN = frozenset({"down", "lowerlayerdown"})


def pf_link_problem(sysfs: Sysfs, pf: str, ifname: str) -> str | None:
    """Why the VFs of ``pf`` cannot pass traffic (its ``ifname``'s link is down), or ``None``.
    ``unknown`` (drivers that do not track it) passes."""
    state = sysfs.read(f"{pci_dir(pf)}/net/{ifname}/operstate")
    if state in _LINK_DOWN:
        return f"the link of PF {pf} ({ifname}) is {state}"
    return None
