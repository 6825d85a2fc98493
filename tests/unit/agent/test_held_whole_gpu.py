"""A free MIG slot's health check learns whether this agent holds its GPU whole: then the GPU
is on vfio-pci for a consumer, and its slots are not unhealthy for it."""

from __future__ import annotations

from devassign.agent.held import HeldPartitions
from devassign.domain import DeviceKind
from devassign.lifecycle.base import PARENT_HELD_WHOLE, LifecycleDevice

GPU = "0000:3b:00.0"


def _slot(parent: str) -> LifecycleDevice:
    return LifecycleDevice(address=f"{parent}/mig/1g.10gb/0", kind=DeviceKind.MIG, type="MIG", parent=parent)


def test_a_slot_of_a_gpu_held_whole_is_told_so() -> None:
    held = HeldPartitions.of([{"kind": "pci", "address": GPU, "consumer": "vm-1"}], {})
    assert held.facts_for(_slot(GPU))[PARENT_HELD_WHOLE] is True
    assert held.facts_for(_slot("0000:af:00.0"))[PARENT_HELD_WHOLE] is False
    assert HeldPartitions.of([], {}).facts_for(_slot(GPU))[PARENT_HELD_WHOLE] is False
