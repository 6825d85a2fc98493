"""Random sequences of actions, with agents killed mid-way, converge (SYNTHETIC trees)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devassign.domain import DeviceKind, mdev_address
from devassign.lifecycle.executor import run_action
from tests.unit.lifecycle.support import GPU, new_machine
from tests.unit.lifecycle.support import device as make_device

TYPE_DIR = f"bus/pci/devices/{GPU}/mdev_supported_types/nvidia-230"
TOTAL = 2

steps = st.lists(
    st.tuples(st.sampled_from(["setup", "cleanup"]), st.integers(0, TOTAL - 1), st.booleans()),
    max_size=12,
)


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(steps)
def test_mdev_slot_counts_stay_right(plan: list[tuple[str, int, bool]]) -> None:
    """Whatever runs, free + created == total, and after every cleanup nothing is left."""
    with tempfile.TemporaryDirectory() as tmp:
        machine = new_machine(Path(tmp))
        machine.h.mdev_parent(GPU, types={"nvidia-230": {"available": TOTAL}}, iommu_group=12)
        slots = [make_device(mdev_address(GPU, "nvidia-230", i), DeviceKind.MDEV_TYPE) for i in range(TOTAL)]
        for action, index, fail in plan:
            if fail:
                machine.sysfs.fail(f"{TYPE_DIR}/create")
            run_action(action, slots[index], {}, None, machine.ops)  # type: ignore[arg-type]
            machine.sysfs.failures.clear()
            created = len(machine.sysfs.listdir("bus/mdev/devices"))
            free = int(machine.read(f"{TYPE_DIR}/available_instances") or "-1")
            assert free + created == TOTAL
        for slot in slots:
            assert run_action("cleanup", slot, {}, None, machine.ops).ok
        assert machine.sysfs.listdir("bus/mdev/devices") == []
        assert machine.read(f"{TYPE_DIR}/available_instances") == str(TOTAL)
