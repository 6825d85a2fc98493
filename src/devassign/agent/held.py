"""The GPU partitions an agent holds, as its free slots' health checks need them.

A MIG instance, an mdev or a vGPU type on a GPU is either one of this agent's (set up for a
tenant, with an action in flight, or set up and not cleaned yet: a slot released during its
setup, a cleanup that failed) or was made by hand beside them. Only the agent's journal tells
the two apart, so each free slot's check gets the held ones as facts.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from devassign.agent.state import AgentState
from devassign.domain import DeviceKind
from devassign.lifecycle.base import MDEV_HELD, MIG_HELD, PARENT_HELD_WHOLE, VGPU_HELD, LifecycleDevice
from devassign.lifecycle.handlers.mdev import MDEV_NAMESPACE
from devassign.schemas import ReportedDevice


@dataclass(frozen=True)
class HeldPartitions:
    """The GPU partitions this agent holds (or has an action in flight for, or set up and has
    not cleaned yet), as a free slot's health check needs them (as facts) to tell an instance,
    mdev or vGPU type of its own from one made by hand beside it."""

    mig: dict[str, list[list[int]]]  # parent GPU -> [start, memory slices] of each slot
    mdev: dict[str, list[str]]  # {"uuids": [...], "slots": [addresses]}
    vgpu_vfs: list[str]
    whole: frozenset[str] = frozenset()  # PCI functions held whole (a GPU on vfio-pci)

    @classmethod
    def of(cls, devices: list[dict[str, Any]], facts: dict[str, dict[str, Any]]) -> HeldPartitions:
        mig: dict[str, list[list[int]]] = {}
        uuids, slots, vfs, whole = [], [], set(), set()
        for d in devices:
            kind, address, attrs = d.get("kind"), str(d.get("address")), d.get("attributes") or {}
            if kind in (DeviceKind.PCI.value, DeviceKind.SRIOV_PF.value):
                whole.add(address)
            if kind == DeviceKind.MIG.value:
                start, memory = attrs.get("mig_start"), attrs.get("mig_slices")
                if isinstance(start, int) and isinstance(memory, list):
                    mig.setdefault(str(d.get("parent") or ""), []).append([start, len(memory)])
            elif kind == DeviceKind.MDEV_TYPE.value:
                slots.append(address)
                recorded = (facts.get(str(d.get("id"))) or {}).get("mdev_uuid")
                if isinstance(recorded, str):
                    uuids.append(recorded)
                if d.get("consumer"):  # a setup that made the mdev but died before journaling it
                    uuids.append(str(uuid.uuid5(MDEV_NAMESPACE, f"{d['consumer']}/{address}")))
            elif kind == DeviceKind.VGPU.value:
                vfs.add(str(d.get("parent")))
        return cls(mig, {"uuids": uuids, "slots": slots}, sorted(vfs), frozenset(whole))

    @classmethod
    def of_state(cls, state: AgentState, server_held: Iterable[dict[str, Any]] = ()) -> HeldPartitions:
        """What the agent's state says it holds: assigned, with an action in flight (its
        journal), or set up and not cleaned yet (a partition a released slot's setup made, or
        a failed cleanup left, is this agent's own, kept from claims while its slot is
        cleaning or quarantined, not one made by hand); and ``server_held``, the devices the
        server says are held on this host (its records, where the state file was lost)."""
        in_flight = [(e.get("item") or {}).get("device") or {} for e in state.journal.values()]
        mine = [*state.assigned.values(), *state.set_up_by.values()]
        devices = [*in_flight, *((e.get("device") or {}) for e in mine), *server_held]
        return cls.of(devices, state.facts)

    @property
    def mdev_uuids(self) -> frozenset[str]:
        """The mdevs this agent made (or is making) for the slots it holds."""
        return frozenset(self.mdev.get("uuids", []))

    def facts_for(self, dev: ReportedDevice | LifecycleDevice) -> dict[str, Any]:
        if dev.kind is DeviceKind.MIG:
            return {MIG_HELD: self.mig.get(dev.parent or "", []), PARENT_HELD_WHOLE: dev.parent in self.whole}
        if dev.kind is DeviceKind.MDEV_TYPE:
            return {MDEV_HELD: self.mdev}
        if dev.kind is DeviceKind.VGPU:
            return {VGPU_HELD: self.vgpu_vfs}
        return {}
