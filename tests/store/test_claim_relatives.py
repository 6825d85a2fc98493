"""The parent/child rule holds in the claim itself, whatever the scheduler's view said.

A claim's view is read before the host's lock: a VF reported and claimed by someone else in
between must still keep the PF from being claimed (and the reverse).
"""

from __future__ import annotations

import pytest

from devassign import schemas
from devassign.store import Store
from devassign.store.claims import ClaimOrder, LostRace, Pick
from tests.conftest import vf

PF = {"address": "0000:3b:00.0", "kind": "sriov_pf", "type": "NIC_PF"}


def _report(store: Store, generation: int, devices: list[dict[str, object]]) -> dict[str, str]:
    store.apply_report(
        "c1",
        schemas.InventoryReport(generation=generation, devices=devices),
        "test",  # type: ignore[arg-type]
    )
    return {d.address: d.id for d in store.list_devices(host="c1")}


def _claim(store: Store, consumer: str, device_id: str) -> schemas.Allocation:
    allocation, created = store.claim(
        ClaimOrder(
            host="c1",
            chosen=[Pick("r", (device_id,))],
            consumer=consumer,
            project="p1",
            key=None,
            request_doc={},
            actor="test",
        )
    )
    assert created
    return allocation


@pytest.fixture
def with_types(store: Store) -> Store:
    for name in ("NIC_PF", "NIC_VF_1G"):
        store.create_type(schemas.ResourceTypeCreate(name=name), "test")
    return store


def test_a_pf_is_refused_when_a_vf_reported_since_is_held(with_types: Store) -> None:
    store = with_types
    ids = _report(store, 1, [PF])  # what claim A's view would have seen: a PF, no VFs
    ids = _report(store, 2, [PF, vf("0000:3b:02.0", parent=PF["address"])])
    _claim(store, "vm-b", ids["0000:3b:02.0"])  # B takes the new VF first
    with pytest.raises(LostRace):
        _claim(store, "vm-a", ids[PF["address"]])
    states = {d.address: d.state for d in store.list_devices(host="c1")}
    assert states == {PF["address"]: "available", "0000:3b:02.0": "reserved"}
    assert [a.consumer for a in store.list_allocations()] == ["vm-b"]


def test_a_vf_is_refused_while_its_pf_is_held(with_types: Store) -> None:
    store = with_types
    ids = _report(store, 1, [PF, vf("0000:3b:02.0", parent=PF["address"])])
    _claim(store, "vm-a", ids[PF["address"]])
    with pytest.raises(LostRace):
        _claim(store, "vm-b", ids["0000:3b:02.0"])
    free = next(t for t in store.list_types() if t.name == "NIC_VF_1G")
    # Kept from claims by its PF, and not touched by the refused claim.
    assert (free.counts.available, free.counts.partitioned) == (0, 1)


GPF, GVF, SLOT = "0000:3b:00.0", "0000:3b:02.0", "0000:3b:02.0/vgpu/1"


def _three_levels(store: Store) -> dict[str, str]:
    """A PF, its VF, and a vGPU slot on the VF (its pool the VF): device ids by address."""
    for name in ("G_PF", "G_VF", "G_SLOT"):
        store.create_type(schemas.ResourceTypeCreate(name=name), "test")
    return _report(
        store,
        1,
        [
            {"address": GPF, "kind": "sriov_pf", "type": "G_PF"},
            {"address": GVF, "kind": "sriov_vf", "type": "G_VF", "parent": GPF},
            {"address": SLOT, "kind": "mdev_type", "type": "G_SLOT", "parent": GVF},
        ],
    )


def test_the_claim_refuses_a_pf_while_a_slot_on_its_vf_is_held(store: Store) -> None:
    """However deep: the claim under the host's lock refuses the PF while the slot is held."""
    ids = _three_levels(store)
    _claim(store, "vm-a", ids[SLOT])
    with pytest.raises(LostRace, match="is in use"):
        _claim(store, "vm-b", ids[GPF])
    store.release("vm-a", "test")
    states = {d.address: d.state for d in store.list_devices(host="c1")}
    assert states[GPF] == "available" and states[SLOT] == "cleaning", states


def test_the_claim_refuses_a_slot_on_a_vf_of_a_held_pf(store: Store) -> None:
    ids = _three_levels(store)
    _claim(store, "vm-a", ids[GPF])
    with pytest.raises(LostRace, match="is in use"):
        _claim(store, "vm-b", ids[SLOT])
    assert {d.address: d.state for d in store.list_devices(host="c1")}[SLOT] == "available"
