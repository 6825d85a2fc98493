"""After every claim of partitions the host's counts are what a full recount would write.

A claim of pool partitions moves ``available`` by the devices it took and counts only what
the pools can no longer give again (``inventory.recarve``). Three GPUs on one host, each a pool
of four vGPU types (one mode at a time), some partitions unhealthy or tainted; random claims of
one or two partitions (mode changes, pools drawn dry) and releases. After each claim the kept
counts must equal a recount's, read in a transaction that is then rolled back.
"""

from __future__ import annotations

import contextlib
import random

import pytest
import sqlalchemy as sa

from devassign import errors, schemas
from devassign.domain import mdev_address
from devassign.store import Store
from devassign.store.claims import ClaimOrder, LostRace, Pick
from devassign.store.inventory import recount
from devassign.store.schema import devices, hosts, inventory

# type: (framebuffer MB each, slots of one 16 GB GPU)
VGPUS = {"VGPU_1B": (1024, 16), "VGPU_4Q": (4096, 4), "VGPU_8Q": (8192, 2), "VGPU_16Q": (16384, 1)}


def _gpu(address: str, unhealthy_every: int = 0) -> list[schemas.ReportedDevice]:
    out = [schemas.ReportedDevice(address=address, kind="pci", type="GPU_T4")]
    k = 0
    for name, (fb, n) in VGPUS.items():
        for i in range(n):
            k += 1
            out.append(
                schemas.ReportedDevice(
                    address=mdev_address(address, f"nvidia-{fb}", i),
                    kind="mdev_type",
                    type=name,
                    parent=address,
                    pool_counters={"framebuffer_mb": 16384},
                    consumes={"framebuffer_mb": fb},
                    mode=name,
                    healthy=not (unhealthy_every and k % unhealthy_every == 0),
                )
            )
    return out


def _counts(conn: sa.Connection, host_id: int) -> list[tuple[int, int, int, int]]:
    q = sa.select(inventory.c.type_id, inventory.c.total, inventory.c.available, inventory.c.carved)
    return sorted((r[0], r[1], r[2], r[3]) for r in conn.execute(q.where(inventory.c.host_id == host_id)))


@pytest.mark.parametrize("seed", range(4))
def test_the_counts_after_a_claim_of_partitions_are_a_recounts(store: Store, seed: int) -> None:
    rng = random.Random(seed)
    for name in ("GPU_T4", *VGPUS):
        store.create_type(schemas.ResourceTypeCreate(name=name), "admin")
    devs = _gpu("0000:3b:00.0", unhealthy_every=5) + _gpu("0000:3c:00.0") + _gpu("0000:3d:00.0")
    store.apply_report("h1", schemas.InventoryReport(generation=1, devices=devs), "agent")
    with store.db.engine.begin() as conn:
        host_id = conn.execute(sa.select(hosts.c.id)).scalar_one()
        ids = conn.execute(sa.select(devices.c.id).order_by(devices.c.address)).scalars().all()
        conn.execute(devices.update().where(devices.c.id.in_(rng.sample(ids, 6))).values(taint="test"))
        recount(conn, host_id)
    claimed = 0
    for i in range(40):
        with store.db.engine.connect() as conn:
            free = (
                conn.execute(
                    sa.select(devices.c.id).where(
                        devices.c.state == "available", devices.c.taint.is_(None), devices.c.healthy.is_(True)
                    )
                )
                .scalars()
                .all()
            )
        if not free:
            break
        pick = rng.sample(free, min(len(free), rng.choice([1, 1, 2])))
        order = ClaimOrder(
            host="h1", chosen=[Pick("r", tuple(pick))], consumer=f"vm-{i}", project="p", key=None,
            request_doc={}, actor="admin",
        )  # fmt: skip
        try:
            store.claim(order)
        except LostRace:
            continue  # the pools refused the pick: nothing changed
        claimed += 1
        with store.db.engine.connect() as conn:
            kept = _counts(conn, host_id)
            recount(conn, host_id)
            assert kept == _counts(conn, host_id), (i, pick)
            conn.rollback()
        if rng.random() < 0.3:
            # A consumer whose claim was refused holds nothing to release (404).
            with contextlib.suppress(errors.DevassignError):
                store.release(f"vm-{rng.randrange(i + 1)}", "admin")
    assert claimed > 3
