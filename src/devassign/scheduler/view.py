"""Read-only views of hosts and devices that the store fills and the scheduler reads.

Plain frozen dataclasses, not ORM rows or Pydantic models: the scheduler runs in the hot
path of every claim, so a view is built once per request and its indexes (free devices per
type, IOMMU group members) are computed once per host, not once per question.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from devassign.domain import IN_USE_STATES, DeviceKind, DeviceState
from devassign.scheduler.shares import Pools, Relatives, ancestors, parent_map

# A device in one of these states belongs to someone (or was lost while it did), so its parent
# or children cannot be handed out either: a PF whose VF is assigned is not free, nor the reverse.
HOLDING_STATES: frozenset[DeviceState] = IN_USE_STATES | {
    DeviceState.MISSING,
    DeviceState.QUARANTINED,
}

# Kinds that never join an IOMMU group claim: mdev slots, USB devices, MIG instances and the
# vGPU types of a VF (one device per type: the VF's group is its own, held through its parent).
UNGROUPED_KINDS: frozenset[str] = frozenset(
    {DeviceKind.MDEV_TYPE, DeviceKind.USB, DeviceKind.MIG, DeviceKind.VGPU}
)


class JsonAttributes(Mapping[str, Any]):
    """A device's attributes kept as the JSON text the store read, decoded when first looked at:
    most claims have no selector and never look (decoding every candidate's was 5 % of a claim
    under cProfile).
    """

    __slots__ = ("_text", "_value")

    def __init__(self, text: str | None) -> None:
        self._text = text
        self._value: dict[str, Any] | None = None

    def _decoded(self) -> dict[str, Any]:
        if self._value is None:
            self._value = (json.loads(self._text) if self._text else None) or {}
        return self._value

    def __getitem__(self, key: str) -> Any:
        return self._decoded()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._decoded())

    def __len__(self) -> int:
        return len(self._decoded())

    def __repr__(self) -> str:
        return repr(self._decoded())


# The fields every device has beside its free-form attributes; a selector reads them as
# ``device.NAME`` and, where no attribute has the name, as ``device.attributes.NAME``.
STANDARD_FIELDS = (
    "address",
    "kind",
    "type",
    "vendor_id",
    "product_id",
    "numa_node",
    "iommu_group",
    "driver",
    "parent",
)


@dataclass(frozen=True, slots=True)
class DeviceView:
    """One device as the scheduler sees it: identity, topology, attributes and state."""

    id: str
    address: str
    kind: str
    type: str
    numa_node: int | None = None
    iommu_group: int | None = None
    parent: str | None = None
    vendor_id: str | None = None
    product_id: str | None = None
    driver: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    state: str = DeviceState.AVAILABLE
    healthy: bool = True
    # The taint that keeps it from new claims, as a phrase ("NoSchedule (maintenance, by admin)").
    taint: str | None = None
    # A partition: the device it is carved from, that pool's counters, what it takes of them,
    # and the mode it runs the pool in (scheduler/shares.py).
    pool: str | None = None
    pool_counters: Mapping[str, int] | None = None
    consumes: Mapping[str, int] | None = None
    mode: str | None = None
    # What it takes of its pool while held, as its claim recorded it (its consumes plus what
    # the request's params take: a VF's guaranteed rate); ``None`` when free.
    consumed: Mapping[str, int] | None = None

    @property
    def holding(self) -> bool:
        """Whether someone holds it (or held it when it vanished)."""
        return self.state in HOLDING_STATES

    def selector_attributes(self) -> dict[str, Any]:
        """``device.attributes`` as a selector sees it: the reported attributes, and under the
        same names the standard fields that have a value (``device.attributes.numa_node`` is
        ``device.numa_node``), since users count those among a device's attributes. A reported
        attribute of the same name wins."""
        out = {name: value for name in STANDARD_FIELDS if (value := getattr(self, name)) is not None}
        out["kind"] = str(self.kind)
        out.update(self.attributes)
        return out

    def cel_value(self) -> dict[str, Any]:
        """The ``device`` variable a CEL selector sees (docs/requests.md, "Selectors")."""
        return {
            "address": self.address,
            "kind": str(self.kind),
            "type": self.type,
            "vendor_id": self.vendor_id,
            "product_id": self.product_id,
            "numa_node": self.numa_node,
            "iommu_group": self.iommu_group,
            "driver": self.driver,
            "parent": self.parent,
            "attributes": self.selector_attributes(),
        }


@dataclass(frozen=True, slots=True)
class HostView:
    """One host and its devices, with the indexes every filter and the fit share."""

    name: str
    devices: tuple[DeviceView, ...]
    up: bool = True
    by_id: Mapping[str, DeviceView] = field(init=False, repr=False, compare=False)
    by_address: Mapping[str, DeviceView] = field(init=False, repr=False, compare=False)
    free_by_type: Mapping[str, tuple[DeviceView, ...]] = field(init=False, repr=False, compare=False)
    free_ids: frozenset[str] = field(init=False, repr=False, compare=False)
    # Free in state, but a parent or child device is held: counted apart for explanations.
    blocked_by_type: Mapping[str, int] = field(init=False, repr=False, compare=False)
    # The same, per type, per phrase naming the device that is in use, how many.
    blocked_why_by_type: Mapping[str, Mapping[str, int]] = field(init=False, repr=False, compare=False)
    # Free in state, but tainted (NoSchedule, Drain): per type, per taint phrase, how many.
    tainted_by_type: Mapping[str, Mapping[str, int]] = field(init=False, repr=False, compare=False)
    # Free in state, but its pool cannot give it now: per type, per reason, how many.
    partitioned_by_type: Mapping[str, Mapping[str, int]] = field(init=False, repr=False, compare=False)
    # The pools' counters, use and modes (scheduler/shares.py), for the fit.
    pools: Pools = field(init=False, repr=False, compare=False)
    # Addresses of devices with at least one child device held (partitioned GPUs, used PFs).
    used_parents: frozenset[str] = field(init=False, repr=False, compare=False)
    # Addresses that are some reported device's parent (a PF with VFs, a GPU with slots).
    parents: frozenset[str] = field(init=False, repr=False, compare=False)
    # IOMMU group -> its assignable members (no mdev slots or USB devices).
    group_members: Mapping[int, tuple[DeviceView, ...]] = field(init=False, repr=False, compare=False)
    # Address -> its parent, the parent's parent, ... (nearest first), where some parent has a
    # parent itself (a vGPU slot on a VF); else empty, and a device's parent is all there is
    # above it (:meth:`above`): most hosts, whose views are built at every claim.
    lineage: Mapping[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)
    # What the scheduler derives from this view alone (scheduler/candidates.py), kept with it:
    # the store reuses a view while its rows are unchanged, so later claims find it computed.
    memo: dict[Any, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_address = {d.address: d for d in self.devices}
        holding = [d for d in self.devices if d.holding]
        links = parent_map(self.devices)
        relatives = Relatives.of(holding, links)
        pools = Pools.of(self.devices, holding)
        partitioned: dict[str, dict[str, int]] = {}
        groups: dict[int, list[DeviceView]] = {}
        for d in self.devices:
            if d.iommu_group is not None and d.kind not in UNGROUPED_KINDS:
                groups.setdefault(d.iommu_group, []).append(d)
        free: dict[str, list[DeviceView]] = {}
        blocked: dict[str, int] = {}
        blocked_why: dict[str, dict[str, int]] = {}
        tainted: dict[str, dict[str, int]] = {}
        for d in self.devices:
            if d.state != DeviceState.AVAILABLE or not d.healthy:
                continue
            if d.taint is not None:
                per = tainted.setdefault(d.type, {})
                per[d.taint] = per.get(d.taint, 0) + 1
                continue
            held = relatives.holding_back(d)
            if held is not None:
                blocked[d.type] = blocked.get(d.type, 0) + 1
                per = blocked_why.setdefault(d.type, {})
                per[held] = per.get(held, 0) + 1
                continue
            why = pools.refusal(d) if pools else None
            if why is not None:
                per = partitioned.setdefault(d.type, {})
                per[why] = per.get(why, 0) + 1
                continue
            free.setdefault(d.type, []).append(d)
        s = object.__setattr__
        s(self, "by_id", {d.id: d for d in self.devices})
        s(self, "by_address", by_address)
        s(self, "free_by_type", {t: tuple(v) for t, v in free.items()})
        s(self, "free_ids", frozenset(d.id for v in free.values() for d in v))
        s(self, "blocked_by_type", blocked)
        s(self, "blocked_why_by_type", blocked_why)
        s(self, "tainted_by_type", tainted)
        s(self, "partitioned_by_type", partitioned)
        s(self, "pools", pools)
        s(self, "used_parents", relatives.used)
        s(self, "parents", frozenset(links.values()))
        s(self, "group_members", {g: tuple(v) for g, v in groups.items()})
        deep = any(p in links for p in links.values())
        s(self, "lineage", {a: ancestors(a, links) for a in links} if deep else {})
        s(self, "memo", {})

    def above(self, d: DeviceView) -> tuple[str, ...]:
        """The devices above ``d`` on this host, nearest first (its parent, the parent's, ...)."""
        return self.lineage.get(d.address) or ((d.parent,) if d.parent else ())

    def free_count(self) -> int:
        """How many devices of any type could be handed out now."""
        return len(self.free_ids)

    def group_of(self, device: DeviceView) -> tuple[DeviceView, ...]:
        """Every device a claim of ``device`` takes with it: its whole IOMMU group, or itself."""
        if device.iommu_group is None or device.kind in UNGROUPED_KINDS:
            return (device,)
        return self.group_members.get(device.iommu_group, (device,))

    def with_held(
        self, device_ids: Iterable[str], extra: Mapping[str, Mapping[str, int]] | None = None
    ) -> HostView:
        """This host as it would be once ``device_ids`` are reserved (for capacity counts and
        a gang's next instance), each taking of its pool what a claim would record: its own
        ``consumes`` plus ``extra[device id]`` (what its request's params take, a VF's rate)."""
        ids = set(device_ids)
        more = extra or {}

        def held(d: DeviceView) -> DeviceView:
            if d.id not in more:
                return replace(d, state=DeviceState.RESERVED)
            taking = dict(d.consumes or {})
            for k, amount in more[d.id].items():
                taking[k] = taking.get(k, 0) + amount
            return replace(d, state=DeviceState.RESERVED, consumed=taking)

        devices = tuple(held(d) if d.id in ids else d for d in self.devices)
        return HostView(self.name, devices, self.up)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The candidate hosts of one scheduling decision, in the order the store found them."""

    hosts: tuple[HostView, ...]
    by_name: Mapping[str, HostView] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {h.name: h for h in self.hosts})
