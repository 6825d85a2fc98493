"""A resource type deleted while a claim that names it is between its read and its write.

A claim reads the catalog before its transaction and writes the allocation naming the types
of its request, ``first_available`` alternatives included (a move places that request again,
on every type it names). A deletion that looked for such allocations in between found none
and removed the type: a live allocation then named a type that was gone, and its move was a
404 for good. Either the deletion waits for the claim and is refused (``type_in_use``), or
the claim finds the type gone (``type_not_found``); never both through.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa

from devassign import errors, schemas
from devassign.domain import Role
from devassign.scheduler import ClaimBody
from devassign.server.placement import Placer
from devassign.store import Principal, Store
from devassign.store.schema import allocations
from tests.store.in_flight import waits_for_a_claim_in_flight

ADMIN = Principal(name="admin", role=Role.ADMIN)


def _body(consumer: str) -> ClaimBody:
    request = {"name": "gpu", "type": "GPU_T4", "first_available": [{"type": "GPU_A100"}]}
    return ClaimBody.model_validate({"consumer": consumer, "project": "p", "requests": [request]})


def _fleet(store: Store) -> None:
    for name in ("GPU_T4", "GPU_A100"):  # no A100 anywhere: only named as an alternative
        store.create_type(schemas.ResourceTypeCreate(name=name), "admin")
    devs = [
        schemas.ReportedDevice(address=f"0000:{0x10 + i:02x}:00.0", kind="pci", type="GPU_T4")
        for i in range(2)
    ]
    store.apply_report("h0", schemas.InventoryReport(generation=1, devices=devs), "agent")


def _live_naming(store: Store, type_name: str) -> list[str]:
    """Live allocations whose request (as it was made) names ``type_name``."""
    live = sa.select(allocations.c.consumer, allocations.c.request).where(allocations.c.released_at.is_(None))
    rows = store.db.reading(lambda c: c.execute(live).all())
    return sorted(r.consumer for r in rows if type_name in json.dumps(r.request))


def test_a_type_deleted_after_the_claims_read_is_not_named_by_the_claim(
    store: Store, monkeypatch: Any
) -> None:
    _fleet(store)
    placer = Placer(store)
    real = store.prepare_claim

    def prepare_then_delete(**kwargs: Any) -> Any:
        ctx = real(**kwargs)
        store.delete_type("GPU_A100", "admin")  # nothing names it yet: deleted
        return ctx

    monkeypatch.setattr(store, "prepare_claim", prepare_then_delete)
    with pytest.raises(errors.DevassignError) as refused:
        placer.claim(_body("a"), ADMIN)
    assert refused.value.code == errors.TYPE_NOT_FOUND and "GPU_A100" in refused.value.message
    assert _live_naming(store, "GPU_A100") == []
    assert [d.state for d in store.list_devices()] == ["available", "available"]


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_type_deletion_waits_for_a_claim_in_flight_that_names_it(store: Store, monkeypatch: Any) -> None:
    """The concurrent form: claim A has written its allocation but not committed when an admin
    deletes GPU_A100. The deletion waits for A and then finds A's allocation: 409."""
    _fleet(store)
    outcome: list[str] = []

    def delete() -> None:
        try:
            store.delete_type("GPU_A100", "admin")
            outcome.append("deleted")
        except errors.DevassignError as exc:
            outcome.append(exc.code)

    waited = waits_for_a_claim_in_flight(monkeypatch, Placer(store), _body("a"), ADMIN, delete)
    assert waited, "the deletion did not wait for the claim in flight"
    assert outcome == [errors.TYPE_IN_USE]
    assert _live_naming(store, "GPU_A100") == ["a"]
