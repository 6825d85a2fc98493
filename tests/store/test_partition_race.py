"""32 clients claim and release partitions of the same 4 GPUs on PostgreSQL at once: no pool
ever gives more than its counters hold, no GPU ever runs two vGPU types, no GPU is held whole
while a partition of it is held, and the counts equal the devices.

Two hosts with two T4s each, every T4 offered whole and as 1B, 4Q, 8Q and 16Q vGPUs; each
client claims a random one of those five, and releases some of what it got. Every snapshot
taken during the run, and the end state, is checked.
"""

from __future__ import annotations

import random
import threading
from collections import Counter, defaultdict
from datetime import timedelta

import pytest
import sqlalchemy as sa

from devassign import errors, schemas
from devassign.domain import Role, mdev_address
from devassign.scheduler import ClaimBody
from devassign.server.placement import Placer
from devassign.store import Database, Principal, Store
from devassign.store.schema import devices
from tests.e2e.contention import violations

ADMIN = Principal(name="admin", role=Role.ADMIN)
CLIENTS = 32
ROUNDS = 12
DEADLINE = 240.0  # seconds: a hang fails the test instead of blocking the run
FB = 16384
VGPUS = {"VGPU_1B": (1024, 16), "VGPU_4Q": (4096, 4), "VGPU_8Q": (8192, 2), "VGPU_16Q": (16384, 1)}
HOLDING = ("reserved", "assigned", "cleaning", "quarantined", "missing")


def _gpu(address: str) -> list[schemas.ReportedDevice]:
    out = [schemas.ReportedDevice(address=address, kind="pci", type="GPU_T4")]
    for type_name, (fb, n) in VGPUS.items():
        for i in range(n):
            out.append(
                schemas.ReportedDevice(
                    address=mdev_address(address, f"nvidia-{fb}", i),
                    kind="mdev_type",
                    type=type_name,
                    parent=address,
                    pool_counters={"framebuffer_mb": FB},
                    consumes={"framebuffer_mb": fb},
                    mode=type_name,
                )
            )
    return out


def _broken(conn: sa.Connection) -> list[str]:
    """Every pool rule a snapshot breaks."""
    rows = conn.execute(
        sa.select(
            devices.c.host_id,
            devices.c.address,
            devices.c.state,
            devices.c.pool,
            devices.c.consumes,
            devices.c.mode,
        )
    ).all()
    held = [r for r in rows if r.state in HOLDING]
    used: dict[tuple[int, str], int] = defaultdict(int)
    modes: dict[tuple[int, str], set[str]] = defaultdict(set)
    for r in held:
        if r.pool:
            used[r.host_id, r.pool] += (r.consumes or {}).get("framebuffer_mb", 0)
            modes[r.host_id, r.pool].add(r.mode)
    found = [f"{p} gives {n} MB of {FB}" for p, n in used.items() if n > FB]
    found += [f"{p} runs {sorted(m)}" for p, m in modes.items() if len(m) > 1]
    whole = {(r.host_id, r.address) for r in held if r.pool is None}
    found += [f"{p} held whole and in partitions" for p in whole if used.get(p)]
    return found


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_concurrent_claims_never_overdraw_a_gpu(db_url: str) -> None:
    db = Database(db_url, pool_size=CLIENTS, max_overflow=8)
    db.upgrade()
    store = Store(db, down_after=timedelta(seconds=600))
    try:
        for name in ("GPU_T4", *VGPUS):
            store.create_type(schemas.ResourceTypeCreate(name=name), "admin")
        for h in range(2):
            devs = _gpu("0000:3b:00.0") + _gpu("0000:af:00.0")
            store.apply_report(f"gpu-{h}", schemas.InventoryReport(generation=1, devices=devs), "agent")
        placer = Placer(store)
        failures: list[BaseException] = []
        outcomes: Counter[str] = Counter()
        broken: list[str] = []
        lock = threading.Lock()

        def client(k: int) -> None:
            rng = random.Random(k)
            try:
                for n in range(ROUNDS):
                    type_name = rng.choice(["GPU_T4", *VGPUS])
                    consumer = f"c{k}-{n}"
                    body = ClaimBody(consumer=consumer, extra_specs={f"hardware_resource:{type_name}": "1"})
                    try:
                        placer.claim(body, ADMIN)
                        with lock:
                            outcomes["claimed"] += 1
                    except errors.DevassignError as exc:
                        assert exc.code in (errors.NO_VALID_HOST, errors.DATABASE_BUSY), exc.message
                        with lock:
                            outcomes[exc.code] += 1
                        continue
                    if rng.random() < 0.4:
                        store.release(consumer, "admin")
                    with db.read() as c:
                        found = _broken(c)
                    if found:
                        with lock:
                            broken.extend(found)
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(DEADLINE)
        assert not any(t.is_alive() for t in threads), "a client did not finish"
        assert not failures, failures
        assert not broken, broken[:5]
        assert outcomes["claimed"] > 0 and outcomes[errors.NO_VALID_HOST] > 0, outcomes
        with db.read() as c:
            assert _broken(c) == []
            assert violations(c) == []
        assert store.audit(down_for=timedelta(seconds=600)).findings == []
    finally:
        db.dispose()
