"""Gangs and single claims at the same time on PostgreSQL: a gang gets all or nothing.

Two threads claim gangs of 4 instances of 8 GPUs while three threads take one GPU at a time
from the same hosts, until nothing fits. Afterwards every gang holds all of its instances or
none, no device is in two live allocations, and the audit finds nothing.
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

import pytest
import sqlalchemy as sa

from devassign import errors, schemas
from devassign.domain import Role
from devassign.scheduler import ClaimBody
from devassign.server.gangs import GangBody, Gangs
from devassign.server.placement import Placer
from devassign.store import Principal, Store
from devassign.store.schema import allocations
from tests.e2e.contention import violations

ADMIN = Principal(name="admin", role=Role.ADMIN)
HOSTS, GPUS, SIZE = 12, 8, 4
DEADLINE = 180.0  # seconds: a hang fails the test instead of blocking the run


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_gang_racing_single_claims_gets_all_or_nothing(store: Store) -> None:
    store.create_type(schemas.ResourceTypeCreate(name="GPU"), "admin")
    for h in range(HOSTS):
        devs = [
            schemas.ReportedDevice(address=f"0000:{i + 0x10:02x}:00.0", kind="pci", type="GPU")
            for i in range(GPUS)
        ]
        store.apply_report(f"gang-{h:02d}", schemas.InventoryReport(generation=1, devices=devs), "agent")
    placer = Placer(store)
    gangs = Gangs(placer)
    failures: list[BaseException] = []
    made: dict[str, list[str]] = {}  # gang -> its instances

    def gang_claimer(k: int) -> None:
        try:
            for n in range(HOSTS):
                body = GangBody(
                    instances=[f"g{k}-{n}-{i}" for i in range(SIZE)],
                    extra_specs={"hardware_resource:GPU": str(GPUS)},
                    gang=f"gang-{k}-{n}",
                )
                try:
                    found, created = gangs.claim(body, ADMIN)
                    assert created and len(found.allocations) == SIZE
                    made[found.gang] = list(body.instances)
                except errors.DevassignError as exc:
                    assert exc.code == errors.NO_VALID_HOST, exc.message
                    return
        except BaseException as exc:
            failures.append(exc)

    def single_claimer(k: int) -> None:
        n = 0
        try:
            while True:
                n += 1
                body = ClaimBody(consumer=f"s{k}-{n}", extra_specs={"hardware_resource:GPU": "1"})
                try:
                    placer.claim(body, ADMIN)
                except errors.DevassignError as exc:
                    assert exc.code == errors.NO_VALID_HOST, exc.message
                    return
                if n >= 2 * HOSTS:  # leave some hosts whole for the gangs
                    return
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=gang_claimer, args=(k,)) for k in range(2)]
    threads += [threading.Thread(target=single_claimer, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE)
    assert not any(t.is_alive() for t in threads), "a claimer did not finish"
    assert not failures, failures

    with store.db.read() as c:
        assert violations(c) == []
        per_gang = Counter(
            r.gang
            for r in c.execute(
                sa.select(allocations.c.request["gang"].as_string().label("gang")).where(
                    allocations.c.released_at.is_(None),
                    allocations.c.request["gang"].as_string().is_not(None),
                )
            )
        )
    assert made, "no gang was placed: the race did not happen"
    assert set(per_gang) == set(made)
    assert set(per_gang.values()) == {SIZE}  # all of each gang, and none of a refused one
    held = {a.consumer: a for a in store.list_allocations()}
    gang_hosts = [held[c].host for instances in made.values() for c in instances]
    assert len(gang_hosts) == len(set(gang_hosts))  # 8 GPUs each: one instance per host
    assert store.audit(down_for=timedelta(seconds=90)).findings == []
    # Each gang can be released at once, and is gone then.
    first = next(iter(made))
    assert store.release_gang(first, None, "admin") == SIZE
    assert not set(made[first]) & {a.consumer for a in store.list_allocations()}


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_one_gang_id_sent_at_once_by_many_is_placed_once_per_project(store: Store) -> None:
    """Several gangs of one new id, with different instances, sent at the same moment: one
    wins and the others get ``consumer_conflict``; another project's gang of the same id is
    placed too (ids are per project), and each project releases only its own."""
    store.create_type(schemas.ResourceTypeCreate(name="GPU"), "admin")
    for h in range(8):
        devs = [
            schemas.ReportedDevice(address=f"0000:{i + 0x10:02x}:00.0", kind="pci", type="GPU")
            for i in range(4)
        ]
        store.apply_report(f"same-{h}", schemas.InventoryReport(generation=1, devices=devs), "agent")
    gangs = Gangs(Placer(store))
    start = threading.Barrier(6)
    outcome: dict[str, str] = {}

    def send(k: int) -> None:
        who = Principal(name=f"m{k}", role=Role.MEMBER, project="blue" if k < 5 else "red")
        body = GangBody(
            instances=[f"i{k}-{i}" for i in range(2)], extra_specs={"hardware_resource:GPU": "1"}, gang="job"
        )
        start.wait(DEADLINE)
        try:
            gangs.claim(body, who)
            outcome[f"m{k}"] = "placed"
        except errors.DevassignError as exc:
            outcome[f"m{k}"] = exc.code
        except BaseException as exc:  # pragma: no cover - reported below
            outcome[f"m{k}"] = repr(exc)

    threads = [threading.Thread(target=send, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE)
    blue = Counter(v for k, v in outcome.items() if k != "m5")
    assert blue == Counter({"placed": 1, errors.CONSUMER_CONFLICT: 4}), outcome
    assert outcome["m5"] == "placed"
    assert store.release_gang("job", "red", "m5") == 2
    live = {a.consumer: a.project for a in store.list_allocations()}
    assert sorted(live.values()) == ["blue", "blue"]
