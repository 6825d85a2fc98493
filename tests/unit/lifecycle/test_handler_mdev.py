"""The mdev handler against a SYNTHETIC GPU offering two nvidia-230 slots."""

from __future__ import annotations

import uuid

import pytest

from devassign.domain import DeviceKind, mdev_address
from devassign.lifecycle.base import HandlerError, LifecycleDevice
from devassign.lifecycle.handlers.mdev import MdevHandler, mdev_uuid
from tests.unit.lifecycle.support import GPU, Machine, device

TYPE_DIR = f"bus/pci/devices/{GPU}/mdev_supported_types/nvidia-230"
SLOT0 = mdev_address(GPU, "nvidia-230", 0)
SLOT1 = mdev_address(GPU, "nvidia-230", 1)


def gpu(machine: Machine, available: int = 2) -> None:
    machine.h.mdev_parent(GPU, types={"nvidia-230": {"available": available}}, iommu_group=12)


def slot(address: str = SLOT0, **kw: object) -> LifecycleDevice:
    return device(address, DeviceKind.MDEV_TYPE, parent=GPU, **kw)


def available(machine: Machine) -> str | None:
    return machine.read(f"{TYPE_DIR}/available_instances")


def test_setup_creates_the_mdev_under_a_uuid_derived_from_consumer_and_slot(
    machine: Machine,
) -> None:
    gpu(machine)
    facts = MdevHandler().setup(slot(), {}, machine.ops)
    uid = facts["mdev_uuid"]
    assert uid == mdev_uuid(slot())
    assert machine.read(f"{TYPE_DIR}/create") == uid
    assert machine.sysfs.link_name(f"bus/mdev/devices/{uid}/mdev_type") == "nvidia-230"
    assert available(machine) == "1"
    assert MdevHandler().health(slot(), {}, machine.ops).ok


def test_setup_twice_creates_one_mdev(machine: Machine) -> None:
    gpu(machine)
    first = MdevHandler().setup(slot(), {}, machine.ops)
    second = MdevHandler().setup(slot(), {}, machine.ops)
    assert first == second
    assert machine.writes_to("/create") == [first["mdev_uuid"]]
    assert available(machine) == "1"


def test_slots_and_consumers_get_distinct_uuids() -> None:
    uuids = {
        mdev_uuid(slot(SLOT0)),
        mdev_uuid(slot(SLOT1)),
        mdev_uuid(slot(SLOT0, consumer=str(uuid.UUID(int=7)))),
    }
    assert len(uuids) == 3


def test_a_recorded_uuid_is_used_without_a_consumer(machine: Machine) -> None:
    gpu(machine)
    recorded = str(uuid.UUID(int=42))
    facts = MdevHandler().setup(slot(consumer=None, facts={"mdev_uuid": recorded}), {}, machine.ops)
    assert facts == {"mdev_uuid": recorded}
    assert mdev_uuid(slot(facts={"mdev_uuid": mdev_uuid(slot())})) == mdev_uuid(slot())


def test_a_recorded_uuid_that_is_not_the_consumers_is_never_touched(machine: Machine) -> None:
    """Another consumer's mdev (once smuggled in through params) is neither used nor removed."""
    gpu(machine)
    victim = slot(SLOT1, consumer=str(uuid.UUID(int=7)))
    theirs = MdevHandler().setup(victim, {}, machine.ops)["mdev_uuid"]
    poisoned = slot(facts={"mdev_uuid": theirs})
    with pytest.raises(HandlerError, match="refusing to touch another consumer's mdev"):
        MdevHandler().setup(poisoned, {}, machine.ops)
    with pytest.raises(HandlerError, match="refusing to touch another consumer's mdev"):
        MdevHandler().cleanup(poisoned, {}, machine.ops)
    assert machine.sysfs.exists(f"bus/mdev/devices/{theirs}")
    assert machine.writes_to("/remove") == []


def test_params_never_name_the_mdev(machine: Machine) -> None:
    gpu(machine)
    victim = slot(SLOT1, consumer=str(uuid.UUID(int=7)))
    theirs = MdevHandler().setup(victim, {}, machine.ops)["mdev_uuid"]
    attacker = slot(params={"mdev_uuid": theirs})
    facts = MdevHandler().setup(attacker, {}, machine.ops)
    assert facts["mdev_uuid"] == mdev_uuid(slot()) != theirs
    MdevHandler().cleanup(slot(facts=facts, params={"mdev_uuid": theirs}), {}, machine.ops)
    assert machine.sysfs.exists(f"bus/mdev/devices/{theirs}")


def test_an_existing_mdev_of_another_parent_or_type_is_left_alone(machine: Machine) -> None:
    gpu(machine)
    recorded = MdevHandler().setup(slot(), {}, machine.ops)["mdev_uuid"]
    other = mdev_address(GPU, "nvidia-231", 0)
    with pytest.raises(HandlerError, match="not this slot's, left alone"):
        MdevHandler().cleanup(slot(other, consumer=None, facts={"mdev_uuid": recorded}), {}, machine.ops)
    assert machine.sysfs.exists(f"bus/mdev/devices/{recorded}")


@pytest.mark.parametrize(
    ("address", "facts", "message"),
    [
        (SLOT0, {"mdev_uuid": "../../../../tmp/x"}, "not a canonical UUID"),
        (SLOT0, {"mdev_uuid": str(uuid.UUID(int=0xABCDEF)).upper()}, "not a canonical UUID"),
        (f"{GPU}/../0", {}, "not an mdev type name"),
    ],
)
def test_names_that_would_make_a_path_are_checked(
    machine: Machine, address: str, facts: dict[str, object], message: str
) -> None:
    gpu(machine)
    with pytest.raises(HandlerError, match=message):
        MdevHandler().cleanup(slot(address, consumer=None, facts=facts), {}, machine.ops)
    assert machine.sysfs.writes == []


def test_cleanup_removes_it_and_gives_the_slot_back(machine: Machine) -> None:
    gpu(machine)
    uid = MdevHandler().setup(slot(), {}, machine.ops)["mdev_uuid"]
    MdevHandler().cleanup(slot(), {}, machine.ops)
    assert not machine.sysfs.exists(f"bus/mdev/devices/{uid}")
    assert available(machine) == "2"
    MdevHandler().cleanup(slot(), {}, machine.ops)  # nothing left to do
    assert machine.writes_to("/remove") == ["1"]


def test_cleanup_of_a_setup_that_never_created_anything(machine: Machine) -> None:
    gpu(machine)
    MdevHandler().cleanup(slot(), {}, machine.ops)
    assert machine.sysfs.writes == []


def test_no_slot_left_is_a_clear_error(machine: Machine) -> None:
    gpu(machine, available=0)
    with pytest.raises(HandlerError, match="no nvidia-230 instance left"):
        MdevHandler().setup(slot(), {}, machine.ops)


def test_an_odd_count_of_free_instances_does_not_crash_the_setup(machine: Machine) -> None:
    """``'²'.isdigit()`` is true but ``int('²')`` fails: the count is unknown, so the handler
    asks the kernel (whose refusal, here injected, is a clear error rather than a ValueError)."""
    gpu(machine)
    machine.h.write(f"{TYPE_DIR}/available_instances", "\u00b2")
    machine.sysfs.fail("*/create")
    with pytest.raises(HandlerError, match="cannot create nvidia-230 mdev"):
        MdevHandler().setup(slot(), {}, machine.ops)


def test_a_failed_remove_fails_the_cleanup(machine: Machine) -> None:
    gpu(machine)
    uid = MdevHandler().setup(slot(), {}, machine.ops)["mdev_uuid"]
    machine.sysfs.fail(f"bus/mdev/devices/{uid}/remove")
    with pytest.raises(HandlerError, match=f"cannot remove mdev {uid}"):
        MdevHandler().cleanup(slot(), {}, machine.ops)


def test_without_consumer_or_uuid_the_mdev_is_unknown(machine: Machine) -> None:
    gpu(machine)
    with pytest.raises(HandlerError, match="no consumer and no recorded mdev_uuid"):
        MdevHandler().cleanup(slot(consumer=None), {}, machine.ops)


def test_an_unknown_type_or_bad_slot_is_refused(machine: Machine) -> None:
    gpu(machine)
    with pytest.raises(HandlerError, match="offers no mdev type nvidia-999"):
        MdevHandler().setup(slot(mdev_address(GPU, "nvidia-999", 0)), {}, machine.ops)
    with pytest.raises(HandlerError, match="not an mdev slot"):
        MdevHandler().setup(slot("0000:3b:00.0/../../x/0"), {}, machine.ops)


def test_health_notices_a_vanished_mdev(machine: Machine) -> None:
    gpu(machine)
    assert MdevHandler().health(slot(consumer=None), {}, machine.ops).ok
    assert not MdevHandler().health(slot(), {}, machine.ops).ok
