"""A quota set while a claim of the project is between its read and its write.

The claim read "no limit", so its plan checked nothing; the limit must still apply to it.
The store looks for the project's limits of the devices it takes inside the claim's
transaction, after it took them, and a quota set waits for the project's claims in flight
(the quota gate, on PostgreSQL): no serial order of the set and the claims lets the project
end over the new limit.
"""

from __future__ import annotations

from typing import Any

import pytest

from devassign import errors, schemas
from devassign.domain import Role
from devassign.scheduler import ClaimBody
from devassign.server.placement import Placer
from devassign.store import Principal, Store
from tests.store.in_flight import waits_for_a_claim_in_flight

ADMIN = Principal(name="admin", role=Role.ADMIN)


def _body(consumer: str) -> ClaimBody:
    return ClaimBody(consumer=consumer, project="p", extra_specs={"hardware_resource:GPU": "1"})


def _fleet(store: Store) -> None:
    store.create_type(schemas.ResourceTypeCreate(name="GPU"), "admin")
    for h in range(2):
        devs = [
            schemas.ReportedDevice(address=f"0000:{0x10 + i:02x}:00.0", kind="pci", type="GPU")
            for i in range(2)
        ]
        store.apply_report(f"h{h}", schemas.InventoryReport(generation=1, devices=devs), "agent")


def test_a_claim_read_before_a_quota_was_set_does_not_push_a_checked_claim_over_it(
    store: Store, monkeypatch: Any
) -> None:
    """User-visible: an admin sets project p's GPU limit to 1 while p's claim A is in flight.
    Then p's claim B is made, checked against the limit (p holds nothing committed) and
    granted; A then commits unchecked. p holds 2 GPUs under a limit of 1 that was set before
    either claim committed; in no serial order of the three can both claims succeed (A first:
    B is refused; the limit first: A is checked and one of them refused)."""
    _fleet(store)
    placer = Placer(store)
    real = store.prepare_claim
    outcome: dict[str, str] = {}

    def prepare_then_quota(**kwargs: Any) -> Any:
        ctx = real(**kwargs)
        if kwargs["consumer"] == "a" and "b" not in outcome:
            outcome["b"] = "pending"
            store.set_quota("p", "GPU", 1, "admin")
            try:
                placer.claim(_body("b"), ADMIN)
                outcome["b"] = "granted"
            except errors.DevassignError as exc:
                outcome["b"] = exc.code
        return ctx

    monkeypatch.setattr(store, "prepare_claim", prepare_then_quota)
    try:
        placer.claim(_body("a"), ADMIN)
        outcome["a"] = "granted"
    except errors.DevassignError as exc:
        outcome["a"] = exc.code
    used = {q["type"]: (q["used"], q["limit"]) for q in store.list_quotas("p")}
    assert used["GPU"][0] <= 1, f"p holds {used['GPU'][0]} GPUs under a limit of 1: {outcome}"


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_quota_set_waits_for_the_projects_claim_in_flight(store: Store, monkeypatch: Any) -> None:
    """The concurrent form: claim A has taken its GPU but not committed when an admin sets p's
    GPU limit to 1. The set waits for A (the project's quota gate), so the next claim B counts
    A's GPU and is refused; without the wait, B counted none of A's (uncommitted) and both held
    a GPU under a limit of 1."""
    _fleet(store)
    placer = Placer(store)
    waited = waits_for_a_claim_in_flight(
        monkeypatch, placer, _body("a"), ADMIN, lambda: store.set_quota("p", "GPU", 1, "admin")
    )
    assert waited, "the quota set did not wait for the claim in flight"
    try:
        placer.claim(_body("b"), ADMIN)
        outcome = "granted"
    except errors.DevassignError as exc:
        outcome = exc.code
    assert outcome == errors.QUOTA_EXCEEDED
    assert {q["type"]: q["used"] for q in store.list_quotas("p")} == {"GPU": 1}
