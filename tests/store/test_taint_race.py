"""Claims and taints at the same time on PostgreSQL: no claim takes a device tainted before it
committed.

Claimers take one GPU at a time while a tainter marks the host's GPUs NoSchedule one by one.
Both take the host's lock first, so each device's ``allocation_created`` and
``device_tainted`` events are written in commit order: a device held by a claim must have
been claimed before it was tainted.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa

from devassign import errors, schemas
from devassign.domain import Role
from devassign.scheduler import ClaimBody
from devassign.server.placement import Placer
from devassign.store import Principal, Store
from devassign.store.schema import allocation_items, allocations, events
from tests.e2e.contention import violations

ADMIN = Principal(name="admin", role=Role.ADMIN)
GPUS = 24
CLAIMERS = 4
DEADLINE = 120.0  # seconds: a hang fails the test instead of blocking the run


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_no_claim_gets_a_device_tainted_before_it_committed(store: Store) -> None:
    store.create_type(schemas.ResourceTypeCreate(name="GPU"), "admin")
    devs = [schemas.ReportedDevice(address=f"0000:{i:02x}:00.0", kind="pci", type="GPU") for i in range(GPUS)]
    store.apply_report("race-1", schemas.InventoryReport(generation=1, devices=devs), "agent")
    ids = [d.id for d in store.list_devices(host="race-1")]
    placer = Placer(store)
    failures: list[BaseException] = []
    done = threading.Event()

    def claimer(k: int) -> None:
        n = 0
        try:
            while not done.is_set():
                n += 1
                body = ClaimBody(consumer=f"c{k}-{n}", extra_specs={"hardware_resource:GPU": "1"})
                try:
                    placer.claim(body, ADMIN)
                except errors.DevassignError as exc:
                    assert exc.code == errors.NO_VALID_HOST, exc.message
                    return  # every free device is taken or tainted
        except BaseException as exc:
            failures.append(exc)

    def tainter() -> None:
        try:
            for device_id in ids[::2]:
                store.add_taint(
                    schemas.TaintCreate(effect="NoSchedule", reason="race"), "admin", device_id=device_id
                )
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=claimer, args=(k,)) for k in range(CLAIMERS)]
    threads.append(threading.Thread(target=tainter))
    for t in threads:
        t.start()
    threads[-1].join(DEADLINE)
    for t in threads[:-1]:
        t.join(DEADLINE)
    done.set()
    assert not any(t.is_alive() for t in threads), "a claimer or the tainter did not finish"
    assert not failures, failures

    with store.db.read() as c:
        tainted_at = {
            r.device_id: r.id
            for r in c.execute(
                sa.select(events.c.device_id, events.c.id).where(events.c.action == "device_tainted")
            )
        }
        claimed_at = {
            r.consumer: r.id
            for r in c.execute(
                sa.select(events.c.consumer, events.c.id).where(events.c.action == "allocation_created")
            )
        }
        held = c.execute(
            sa.select(allocation_items.c.device_id, allocations.c.consumer).join(
                allocations, allocations.c.id == allocation_items.c.allocation_id
            )
        ).all()
        assert violations(c) == []
    assert len(tainted_at) == len(ids[::2])
    assert held, "no claim succeeded: the race was not exercised"
    for device_id, consumer in held:
        if device_id in tainted_at:
            assert claimed_at[consumer] < tainted_at[device_id], (
                f"{consumer} got {device_id} after it was tainted"
            )
    # No device is both tainted and held by a claim made after the taint (checked above), and
    # the counts agree with the devices (the audit).
    assert store.audit(down_for=timedelta(days=3650)).findings == []
