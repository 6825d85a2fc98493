"""What discovery finds on a host, before and after the matching rules give it a type.

A :class:`FoundDevice` is every device the agent sees, assignable or not, so that
``agent discover`` can show the operator the whole machine; only devices with a type and
no blocking flag become :class:`~devassign.schemas.ReportedDevice` on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from devassign.domain import DeviceKind
from devassign.schemas import DEVICE_FACTS, ReportedDevice

# Why a device with a type is still not offered. Stable strings: operators grep for them.
FLAG_VFS_ENABLED = "vfs_enabled"  # a PF whose VFs are enabled: the VFs are the assignable units
FLAG_MDEV_IN_USE = "mdev_in_use"  # a GPU carved into mdev instances cannot be given whole
FLAG_IOMMU_SHARED = "iommu_group_not_isolated"  # its group holds endpoints nobody may assign
FLAG_DUPLICATE = "duplicate_address"  # two devices claimed the same identity
FLAG_NOT_ENDPOINT = "not_an_endpoint"  # a bridge: it routes, it is no guest's device
# The host's own disk (held, mounted, swap) or network (default route, bridge or bond port)
# sits on it: taking it would pull the host's storage or link (agent/hostuse.py).
FLAG_HOST_IN_USE = "host_in_use"
# Its vendor or device id cannot be read (empty, not text, an I/O error): a dying or half-removed
# function, whose identity the agent cannot vouch for.
FLAG_ID_UNREADABLE = "id_unreadable"
BLOCKING_FLAGS = frozenset(
    {
        FLAG_ID_UNREADABLE,
        FLAG_VFS_ENABLED,
        FLAG_MDEV_IN_USE,
        FLAG_IOMMU_SHARED,
        FLAG_DUPLICATE,
        FLAG_NOT_ENDPOINT,
        FLAG_HOST_IN_USE,
    }
)

# Host, PCI-PCI, CardBus and semi-transparent PCI-PCI bridges (PCI class codes 06xx).
HOST_BRIDGE_CLASS = "0600"
BRIDGE_CLASSES = (HOST_BRIDGE_CLASS, "0604", "0607", "0609")


@dataclass
class FoundDevice:
    """One device as discovered; ``attributes`` holds everything beyond the core fields."""

    address: str
    kind: DeviceKind
    vendor_id: str | None = None
    product_id: str | None = None
    numa_node: int | None = None
    iommu_group: int | None = None
    driver: str | None = None
    parent: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    # A VF's PF's driver: a rule naming a driver that is the VF's own (iavf of an i40e or
    # ice PF) takes VFs (DeviceRule.takes_vfs).
    pf_driver: str | None = None
    type: str | None = None
    flags: list[str] = field(default_factory=list)
    allow_shared_iommu_group: bool = False
    # Why the host uses it (``nvme0n1p3 is held by dm-0``), and whether its rule offers it anyway.
    host_use: list[str] = field(default_factory=list)
    allow_host_in_use: bool = False
    # A partition (scheduler/shares.py): the device it is carved from, that pool's counters,
    # what it takes of them while held, and the mode it runs its pool in.
    pool: str | None = None
    pool_counters: dict[str, int] = field(default_factory=dict)
    consumes: dict[str, int] = field(default_factory=dict)
    mode: str | None = None

    @property
    def class_code(self) -> str | None:
        """Six lowercase hex digits (``020000``), or ``None`` for non-PCI devices."""
        value = self.attributes.get("class")
        return value if isinstance(value, str) else None

    @property
    def is_bridge(self) -> bool:
        """A bridge of any kind: never offered (vfio-pci refuses a bridge's header, and a host
        bridge is the machine's own)."""
        return (self.class_code or "").startswith(BRIDGE_CLASSES)

    @property
    def keeps_group(self) -> bool:
        """False for a group mate that does not keep its IOMMU group from a guest: a PCI-PCI
        bridge (pcieport manages no DMA, and VFIO accepts it), or a host bridge that no driver
        holds (AMD's dummy host bridges share a group with the GPU behind them)."""
        if not self.is_bridge:
            return True
        return (self.class_code or "").startswith(HOST_BRIDGE_CLASS) and self.driver is not None

    @property
    def offered(self) -> bool:
        """Has a type and nothing that forbids handing it out (host use only where its rule
        says ``allow_host_in_use``)."""
        blocking = set(BLOCKING_FLAGS.intersection(self.flags))
        if self.allow_host_in_use:
            blocking.discard(FLAG_HOST_IN_USE)
        return self.type is not None and not blocking

    def flag(self, name: str) -> None:
        if name not in self.flags:
            self.flags.append(name)

    def facts(self) -> dict[str, Any]:
        """The device's facts (:data:`~devassign.schemas.DEVICE_FACTS`), as the server takes them."""
        out = {name: getattr(self, name) for name in DEVICE_FACTS}
        out["attributes"] = dict(self.attributes)
        return out

    def to_json(self) -> dict[str, Any]:
        """The ``agent discover -f json`` shape (docs/agent.md): its facts (the partition
        fields only for a partition), its type, whether it is offered, its flags, and for one
        the host uses, why (``host_use``)."""
        out = self.facts()
        out["kind"] = self.kind.value
        if self.pool is None:
            for name in ("pool", "pool_counters", "consumes", "mode"):
                out.pop(name)
        shown = {**out, "type": self.type, "offered": self.offered, "flags": list(self.flags)}
        if self.host_use:
            shown["host_use"] = list(self.host_use)
        return shown

    def to_reported(self) -> ReportedDevice:
        """The wire form; only call for devices that are :attr:`offered`."""
        if self.type is None:
            raise ValueError(f"{self.address} has no type and is not reported")
        return ReportedDevice(type=self.type, **self.facts())


def first_time(warned: set[str] | None, key: str) -> bool:
    """Whether a warning keyed ``key`` is new to ``warned`` (and mark it said): the agent
    rescans every report, so a lasting condition is logged once, not at every scan. No set:
    always (a one-shot command)."""
    if warned is None:
        return True
    if key in warned:
        return False
    warned.add(key)
    return True
