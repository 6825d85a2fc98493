"""Moves under concurrency on PostgreSQL: ordinary claims race a move for the target host's
devices, and moves in opposite directions commit at once; no device is ever held twice, no
transaction deadlocks, and the audit finds nothing afterwards. The outcomes one by one (commit,
abort, expiry) on both databases are in tests/api/test_moves.py."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

import pytest

from devassign import errors, schemas
from devassign.domain import Role
from devassign.scheduler import ClaimBody
from devassign.server.access import Scope
from devassign.server.moves import place_move
from devassign.server.placement import Placer
from devassign.store import Database, Principal, Store
from devassign.store.moves import Move
from tests.conftest import vf
from tests.e2e.contention import violations

ADMIN = Principal(name="admin", role=Role.ADMIN)
DEADLINE = 240.0  # seconds: a hang fails the test instead of blocking the run


def _report(store: Store, host: str, n: int) -> None:
    devs = [schemas.ReportedDevice.model_validate(vf(f"0000:3b:{2 + i // 8:02x}.{i % 8}")) for i in range(n)]
    store.apply_report(host, schemas.InventoryReport(generation=1, devices=devs), "agent")


def _claim(placer: Placer, consumer: str, host: str, count: int = 1) -> None:
    body = ClaimBody(consumer=consumer, hosts=[host], extra_specs={"hardware_resource:NIC_VF_1G": str(count)})
    placer.claim(body, ADMIN)


def _set_up(store: Store, move: Move) -> None:
    """What the target host's agent does before a move can be committed."""
    results = [schemas.WorkResult(device_id=p.target_id, action="setup", ok=True) for p in move.device_map]
    outcomes = store.apply_work_results(move.target_host, results, "agent")
    assert all(o.applied for o in outcomes), outcomes


def _run(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE)
    assert not any(t.is_alive() for t in threads), "a client did not finish"


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_claims_racing_moves_for_the_target_never_share_a_device(db_url: str) -> None:
    db = Database(db_url, pool_size=24, max_overflow=8)
    db.upgrade()
    store = Store(db, down_after=timedelta(seconds=600))
    try:
        store.create_type(schemas.ResourceTypeCreate(name="NIC_VF_1G"), "admin")
        _report(store, "src", 16)
        _report(store, "dst", 20)
        placer = Placer(store)
        movers = [f"vm-{i}" for i in range(8)]
        for m in movers:
            _claim(placer, m, "src", 2)
        failures: list[BaseException] = []
        outcomes: Counter[str] = Counter()
        lock = threading.Lock()

        def count(what: str) -> None:
            with lock:
                outcomes[what] += 1

        barrier = threading.Barrier(len(movers) + 6)

        def mover(consumer: str, k: int) -> None:
            try:
                barrier.wait()
                try:
                    move, _ = place_move(store, placer, Scope(ADMIN), consumer, "dst", None)
                except errors.DevassignError as exc:
                    assert exc.code in (errors.NO_VALID_HOST, errors.DATABASE_BUSY), exc.message
                    count("move_refused")
                    return
                count("moved")
                if k % 2:
                    store.abort_move(consumer, "admin")
                else:
                    _set_up(store, move)
                    store.commit_move(consumer, "admin")
            except BaseException as exc:
                failures.append(exc)

        def claimer(k: int) -> None:
            try:
                barrier.wait()
                for n in range(2):
                    try:
                        _claim(placer, f"c{k}-{n}", "dst")
                        count("claimed")
                    except errors.DevassignError as exc:
                        assert exc.code in (errors.NO_VALID_HOST, errors.DATABASE_BUSY), exc.message
                        count("claim_refused")
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=mover, args=(m, k)) for k, m in enumerate(movers)]
        threads += [threading.Thread(target=claimer, args=(k,)) for k in range(6)]
        _run(threads)
        assert not failures, failures
        # 20 devices on dst: 8 moves of 2 and 12 claims of 1 cannot all fit, and the claims leave
        # room for 4 moves at least.
        assert outcomes["moved"] >= 4 and outcomes["claimed"] > 0, outcomes
        assert outcomes["move_refused"] + outcomes["claim_refused"] > 0, outcomes
        with db.read() as c:
            assert violations(c) == []
        assert store.audit(down_for=timedelta(seconds=600)).findings == []
        # Every committed mover is on dst, every other one still on src.
        for k, m in enumerate(movers):
            moves = store.list_moves(m)
            host = store.get_allocation(m).host
            if moves and moves[0].state == "committed":
                assert host == "dst" and k % 2 == 0
            else:
                assert host == "src"
            assert not moves or moves[0].state != "pending"
    finally:
        db.dispose()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_moves_in_opposite_directions_commit_at_once(db_url: str) -> None:
    """Each commit locks both hosts (in name order): crossing moves never deadlock."""
    db = Database(db_url, pool_size=24, max_overflow=8)
    db.upgrade()
    store = Store(db, down_after=timedelta(seconds=600))
    try:
        store.create_type(schemas.ResourceTypeCreate(name="NIC_VF_1G"), "admin")
        _report(store, "h1", 20)
        _report(store, "h2", 20)
        placer = Placer(store)
        pairs = [(f"a{i}", "h1", "h2") for i in range(6)] + [(f"b{i}", "h2", "h1") for i in range(6)]
        for consumer, here, _ in pairs:
            _claim(placer, consumer, here)
        for consumer, _, there in pairs:
            _set_up(store, place_move(store, placer, Scope(ADMIN), consumer, there, None)[0])
        failures: list[BaseException] = []
        barrier = threading.Barrier(len(pairs))

        def commit(consumer: str) -> None:
            try:
                barrier.wait()
                store.commit_move(consumer, "admin")
            except BaseException as exc:
                failures.append(exc)

        _run([threading.Thread(target=commit, args=(c,)) for c, _, _ in pairs])
        assert not failures, failures
        for consumer, _, there in pairs:
            assert store.get_allocation(consumer).host == there
        with db.read() as c:
            assert violations(c) == []
        assert store.audit(down_for=timedelta(seconds=600)).findings == []
    finally:
        db.dispose()
