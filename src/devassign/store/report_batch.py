"""Many hosts' first reports in one transaction: loading a whole region's inventory at once.

An agent reports its own host, one transaction per report (``inventory.apply_report``). A
fleet loader (an import from another inventory, a relay speaking for a rack, a test region)
sends hundreds of hosts in one request instead. The hosts never seen before, whose reports
hold only devices the catalog takes as they are (known types, a reset where the type asks for
one, no partition pools), are written here with one statement per table for the whole batch;
the rest are left to ``apply_report``, one by one. Either way the rows, the per-host counts and
the events are those the single report would write: a new host has no taints, no allocations
and no partitions, so its counts are its devices by type and state, with nothing carved.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from devassign import schemas
from devassign.store.events import record_many
from devassign.store.inventory import (
    added_event,
    catalog_rows,
    checks_for,
    digest,
    iommu_refusal,
    new_device,
    owed_cleanups,
    parent_loops,
    reset_refusal,
    schema_refusal,
)
from devassign.store.schema import devices, hosts, inventory


def apply_new_hosts(
    conn: sa.Connection, batch: Sequence[schemas.HostReport], *, now: datetime, actor: str
) -> dict[str, schemas.InventoryResult]:
    """Register and fill, in this transaction, the batch's hosts that are new and plain; their
    results by host name. The others are not touched (the caller applies them one by one)."""
    names = [b.host for b in batch]
    known = set(conn.execute(sa.select(hosts.c.name).where(hosts.c.name.in_(names))).scalars())
    ids = [b.report.host_id for b in batch if b.report.host_id]
    owned = (
        set(conn.execute(sa.select(hosts.c.host_id).where(hosts.c.host_id.in_(ids))).scalars())
        if ids
        else set()
    )
    type_rows = catalog_rows(conn)
    # A name whose last deletion left devices uncleaned takes the one-report path, which
    # cleans them first if they are back (inventory.owed_cleanups).
    owing = owed_cleanups(conn, [b.host for b in batch if b.host not in known])
    # A host id named by two reports of the batch goes to whichever comes first: such reports
    # all take the one-report path, in the batch's order (this transaction runs before it).
    named = Counter(b.report.host_id for b in batch if b.report.host_id)
    chosen: list[schemas.HostReport] = []
    for b in batch:
        if b.host in known or b.host in owing or not _plain(b.report, type_rows):
            continue
        if b.report.host_id is not None and (b.report.host_id in owned or named[b.report.host_id] > 1):
            continue  # another host's id: the one-report path says why
        known.add(b.host)  # a name twice in a batch: the second goes the one-report path
        chosen.append(b)
    if not chosen:
        return {}

    # In name order (two batches lock the names they insert in one order: no deadlock), and a
    # name or host id another transaction registered meanwhile is skipped rather than failing
    # the batch: that host takes the one-report path, which gives its own answer.
    chosen.sort(key=lambda b: b.host)
    insert = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(hosts)
    made = conn.execute(
        insert.on_conflict_do_nothing().returning(hosts.c.name, hosts.c.id),
        [
            {
                "name": b.host,
                "host_id": b.report.host_id,
                "generation": b.report.generation,
                "last_report_at": now,
                "last_seen_at": now,
                "marked_down": False,
                "report_digest": digest(b.report),
                "agent_instance": b.report.agent_instance,
                "agent_seen_at": now if b.report.agent_instance is not None else None,
                "created_at": now,
            }
            for b in chosen
        ],
    ).all()
    host_ids: dict[str, int] = {r.name: r.id for r in made}
    chosen = [b for b in chosen if b.host in host_ids]
    rows: list[dict[str, Any]] = []
    counts: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for b in chosen:
        host_id = host_ids[b.host]
        base_event = {"at": now, "actor": actor, "host": b.host}
        events.append({**base_event, "action": "host_registered", "message": f"host {b.host} registered"})
        total: Counter[int] = Counter()
        free: Counter[int] = Counter()
        for dev in b.report.devices:
            row = new_device(dev, host_id, type_rows[dev.type].id, now)
            rows.append(row)
            total[row["type_id"]] += 1
            free[row["type_id"]] += dev.healthy
            events.append(added_event(base_event, b.host, dev, row["id"]))
        counts += [
            {"host_id": host_id, "type_id": t, "total": n, "available": free[t], "carved": 0}
            for t, n in total.items()
        ]
    if rows:
        conn.execute(devices.insert(), rows)
        conn.execute(inventory.insert(), counts)
    record_many(conn, events)
    return {b.host: _result(b, type_rows) for b in chosen}


def _plain(report: schemas.InventoryReport, type_rows: dict[str, Any]) -> bool:
    """Whether every device is taken as reported: a known type, the reset its type needs, no
    partition pool, each address once, no loop of parent links (anything else is refused or
    judged per device)."""
    seen: set[str] = set()
    for dev in report.devices:
        row = type_rows.get(dev.type)
        if row is None or dev.pool is not None or dev.address in seen:
            return False
        if reset_refusal(dev, row) or iommu_refusal(dev, row) or schema_refusal(dev, row):
            return False
        seen.add(dev.address)
    return not parent_loops(report.devices)


def _result(b: schemas.HostReport, type_rows: dict[str, Any]) -> schemas.InventoryResult:
    return schemas.InventoryResult(
        host=b.host,
        generation=b.report.generation,
        accepted=len(b.report.devices),
        added=[d.address for d in b.report.devices],
        updated=[],
        removed=[],
        missing=[],
        refused=[],
        warnings=[],
        checks=checks_for(type_rows, {d.type for d in b.report.devices}),
    )
