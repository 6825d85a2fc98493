"""The audit: every inconsistency the database can show, found by set queries, not row walks.

The claim path keeps the invariants by construction (one transaction, host lock, unique
indexes); the audit is how an operator checks that they held after crashes, restores, manual
SQL or a bug. Each check is one query over the whole fleet (seconds at 10,000 hosts) and names
what it found. ``fix`` repairs only what is safe to repair without a person's judgement:
inventory counts (recomputed from the devices) and reservations past their time (released
as the sweeper would); every repair is an event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from devassign.domain import AllocationState, DeviceState
from devassign.scheduler.shares import Pools, overdrawn
from devassign.scheduler.view import HOLDING_STATES
from devassign.store.claims import release
from devassign.store.events import record
from devassign.store.inventory import SCHEDULABLE, SHARE_COLUMNS, recount
from devassign.store.schema import (
    allocation_items,
    allocations,
    devices,
    hosts,
    inventory,
    moves,
    resource_types,
)

# What each finding means and whether ``fix`` repairs it.
CHECKS: dict[str, tuple[str, bool]] = {
    "device_in_two_allocations": ("a device is an item of more than one live allocation", False),
    "held_without_allocation": ("a reserved or assigned device belongs to no live allocation", False),
    "item_device_mismatch": (
        "a live allocation's device is not held by it (another allocation, or a free state)",
        False,
    ),
    "free_device_with_allocation": (
        "an available, unhealthy or removed device still names an allocation",
        False,
    ),
    "confirmed_with_pending_device": (
        "an assigned allocation has a device still waiting for its setup",
        False,
    ),
    "counts_mismatch": ("a host's inventory counts differ from its devices", True),
    "reservation_overdue": ("an unconfirmed reservation is past its expiry and was not given up", True),
    "held_on_down_host": ("devices are held on a host that has been down longer than the threshold", False),
    "stranded_work": ("setup or cleanup waits on a host that has been down longer than the threshold", False),
    "move_stale": (
        "a move has been pending longer than the threshold: commit or abort it (its consumer holds "
        "two sets of devices until then)",
        False,
    ),
    "pool_overdrawn": (
        "the partitions held from one device give more than its counters, run two modes, or it is "
        "held whole too",
        False,
    ),
}
HELD = (DeviceState.RESERVED.value, DeviceState.ASSIGNED.value)
LIVE_ITEM_STATES = (DeviceState.RESERVED.value, DeviceState.ASSIGNED.value, DeviceState.MISSING.value)
FREE = (DeviceState.AVAILABLE.value, DeviceState.UNHEALTHY.value, DeviceState.REMOVED.value)
HOLDING_VALUES = frozenset(s.value for s in HOLDING_STATES)
# A reservation a little past its time is the sweeper's next job, not a finding.
OVERDUE_GRACE = timedelta(seconds=60)
MAX_FINDINGS_PER_CHECK = 1000


@dataclass
class Finding:
    check: str
    message: str
    host: str | None = None
    device: str | None = None
    consumer: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def fixable(self) -> bool:
        return CHECKS[self.check][1]


def run(conn: sa.Connection, *, now: datetime, down_for: timedelta) -> list[Finding]:
    """Every finding, check by check (at most ``MAX_FINDINGS_PER_CHECK`` each)."""
    found: list[Finding] = []
    for check in (
        _two_allocations,
        _held_without_allocation,
        _item_mismatch,
        _free_with_allocation,
        _confirmed_pending,
        _counts,
        _pools,
    ):
        found += check(conn)
    found += _overdue(conn, now - OVERDUE_GRACE)
    found += _down_hosts(conn, now - down_for)
    found += _stale_moves(conn, now - down_for)
    return found


def fix(conn: sa.Connection, findings: list[Finding], *, now: datetime, actor: str) -> list[Finding]:
    """Repair the fixable findings; returns those repaired. Each repair is an event."""
    repaired: list[Finding] = []
    host_ids = {
        f.detail["host_id"] for f in findings if f.check == "counts_mismatch" and "host_id" in f.detail
    }
    for host_id in sorted(host_ids):
        recount(conn, host_id)
    for f in findings:
        if f.check == "counts_mismatch":
            repaired.append(f)
        elif f.check == "reservation_overdue" and f.consumer:
            if not release(conn, f.consumer, now=now, actor=actor, why="expired", expired_before=now):
                continue
            repaired.append(f)
        else:
            continue
        record(
            conn,
            at=now,
            actor=actor,
            action="audit_repaired",
            host=f.host,
            consumer=f.consumer,
            message=f"audit repaired {f.check}: {f.message}",
            detail={"check": f.check, **{k: v for k, v in f.detail.items() if k != "host_id"}},
        )
    return repaired


def _limited(q: sa.Select[Any]) -> sa.Select[Any]:
    return q.limit(MAX_FINDINGS_PER_CHECK)


def _two_allocations(conn: sa.Connection) -> list[Finding]:
    q = (
        sa.select(allocation_items.c.device_id, sa.func.count().label("n"))
        .where(allocation_items.c.released_at.is_(None))
        .group_by(allocation_items.c.device_id)
        .having(sa.func.count() > 1)
    )
    return [
        Finding(
            "device_in_two_allocations",
            f"device {r.device_id} is in {r.n} live allocations",
            device=r.device_id,
        )
        for r in conn.execute(_limited(q))
    ]


def _device_rows() -> sa.Select[Any]:
    """A device's id, address and state with its host's name: what a device finding names."""
    return sa.select(devices.c.id, devices.c.address, devices.c.state, hosts.c.name.label("host")).join_from(
        devices, hosts, hosts.c.id == devices.c.host_id
    )


def _held_without_allocation(conn: sa.Connection) -> list[Finding]:
    live = sa.select(allocations.c.id).where(
        allocations.c.id == devices.c.allocation_id, allocations.c.released_at.is_(None)
    )
    q = _device_rows().where(devices.c.state.in_(HELD), ~live.exists())
    return [
        Finding(
            "held_without_allocation",
            f"{r.host} {r.address} is {r.state} but no live allocation holds it",
            host=r.host,
            device=r.id,
        )
        for r in conn.execute(_limited(q))
    ]


def _item_mismatch(conn: sa.Connection) -> list[Finding]:
    q = (
        sa.select(
            devices.c.id,
            devices.c.address,
            devices.c.state,
            hosts.c.name.label("host"),
            allocations.c.consumer,
        )
        .select_from(allocation_items)
        .join(allocations, allocations.c.id == allocation_items.c.allocation_id)
        .join(devices, devices.c.id == allocation_items.c.device_id)
        .join(hosts, hosts.c.id == devices.c.host_id)
        .where(
            allocation_items.c.released_at.is_(None),
            allocations.c.released_at.is_(None),
            sa.or_(
                devices.c.allocation_id.is_(None),
                devices.c.allocation_id != allocations.c.id,
                devices.c.state.not_in(LIVE_ITEM_STATES),
            ),
        )
    )
    return [
        Finding(
            "item_device_mismatch",
            f"{r.consumer}'s device {r.host} {r.address} is {r.state} and not held by its allocation",
            host=r.host,
            device=r.id,
            consumer=r.consumer,
        )
        for r in conn.execute(_limited(q))
    ]


def _free_with_allocation(conn: sa.Connection) -> list[Finding]:
    q = _device_rows().where(devices.c.state.in_(FREE), devices.c.allocation_id.is_not(None))
    return [
        Finding(
            "free_device_with_allocation",
            f"{r.host} {r.address} is {r.state} but still names an allocation",
            host=r.host,
            device=r.id,
        )
        for r in conn.execute(_limited(q))
    ]


def _confirmed_pending(conn: sa.Connection) -> list[Finding]:
    q = (
        sa.select(allocations.c.consumer, hosts.c.name.label("host"), sa.func.count().label("n"))
        .select_from(allocations)
        .join(devices, devices.c.allocation_id == allocations.c.id)
        .join(hosts, hosts.c.id == allocations.c.host_id)
        .where(
            allocations.c.released_at.is_(None),
            allocations.c.state == AllocationState.ASSIGNED.value,
            devices.c.state == DeviceState.RESERVED.value,
        )
        .group_by(allocations.c.consumer, hosts.c.name)
    )
    return [
        Finding(
            "confirmed_with_pending_device",
            f"{r.consumer} on {r.host} is assigned but {r.n} device(s) wait for setup",
            host=r.host,
            consumer=r.consumer,
        )
        for r in conn.execute(_limited(q))
    ]


def _pools(conn: sa.Connection) -> list[Finding]:
    """Per host with partitions, the held ones against their pools (scheduler/shares.py)."""
    cols = (devices.c.host_id, *SHARE_COLUMNS)
    present = devices.c.state != DeviceState.REMOVED.value
    rows = list(conn.execute(sa.select(*cols).where(present, devices.c.pool.is_not(None))))
    keys = {(r.host_id, r.pool) for r in rows}
    if keys:  # the pools themselves, which may be held whole
        q = sa.select(*cols).where(
            present,
            devices.c.host_id.in_({h for h, _ in keys}),
            devices.c.address.in_({a for _, a in keys}),
        )
        rows += [r for r in conn.execute(q) if (r.host_id, r.address) in keys]
    per_host: dict[int, list[Any]] = {}
    for r in rows:
        per_host.setdefault(r.host_id, []).append(r)
    found = []
    for host_id, members in sorted(per_host.items()):
        why = overdrawn(Pools.of(members, (m for m in members if m.state in HOLDING_VALUES)))
        if why is not None:
            name = conn.execute(sa.select(hosts.c.name).where(hosts.c.id == host_id)).scalar_one()
            found.append(Finding("pool_overdrawn", f"{name}: {why}", host=name))
    return found[:MAX_FINDINGS_PER_CHECK]


def _counts(conn: sa.Connection) -> list[Finding]:
    """Inventory rows against the devices they count, both ways (a full outer join by hand)."""
    actual = (
        sa.select(
            devices.c.host_id,
            devices.c.type_id,
            sa.func.count().label("total"),
            sa.func.sum(sa.case((SCHEDULABLE, 1), else_=0)).label("available"),
        )
        .where(devices.c.state != DeviceState.REMOVED.value)
        .group_by(devices.c.host_id, devices.c.type_id)
        .subquery("actual")
    )
    wrong = (
        sa.select(
            actual.c.host_id,
            actual.c.type_id,
            actual.c.total,
            actual.c.available,
            inventory.c.total.label("had_total"),
            # Free devices their pool cannot give now are kept apart (``carved``): together
            # they are what the devices say is free.
            (inventory.c.available + inventory.c.carved).label("had_available"),
        )
        .select_from(
            actual.outerjoin(
                inventory,
                sa.and_(inventory.c.host_id == actual.c.host_id, inventory.c.type_id == actual.c.type_id),
            )
        )
        .where(
            sa.or_(
                inventory.c.total.is_(None),
                inventory.c.total != actual.c.total,
                inventory.c.available + inventory.c.carved != actual.c.available,
            )
        )
    )
    extra = (
        sa.select(inventory.c.host_id, inventory.c.type_id, inventory.c.total, inventory.c.available)
        .select_from(
            inventory.outerjoin(
                actual,
                sa.and_(inventory.c.host_id == actual.c.host_id, inventory.c.type_id == actual.c.type_id),
            )
        )
        .where(actual.c.host_id.is_(None), inventory.c.total != 0)
    )
    rows = [
        (
            r.host_id,
            r.type_id,
            f"{r.total} devices ({r.available} available)",
            _counted(r.had_total, r.had_available),
        )
        for r in conn.execute(_limited(wrong))
    ]
    rows += [
        (r.host_id, r.type_id, "no devices", _counted(r.total, r.available))
        for r in conn.execute(_limited(extra))
    ]
    if not rows:
        return []
    host_names = dict(
        conn.execute(sa.select(hosts.c.id, hosts.c.name).where(hosts.c.id.in_({r[0] for r in rows}))).all()
    )
    type_names = dict(conn.execute(sa.select(resource_types.c.id, resource_types.c.name)).all())
    return [
        Finding(
            "counts_mismatch",
            f"{host_names.get(h, h)} {type_names.get(t, t)}: inventory says {said}, the devices are {real}",
            host=host_names.get(h),
            detail={"host_id": h, "type": type_names.get(t)},
        )
        for h, t, real, said in rows
    ]


def _counted(total: int | None, available: int | None) -> str:
    return "nothing" if total is None else f"{total} ({available} available)"


def _overdue(conn: sa.Connection, before: datetime) -> list[Finding]:
    q = (
        sa.select(allocations.c.consumer, allocations.c.expires_at, hosts.c.name.label("host"))
        .join(hosts, hosts.c.id == allocations.c.host_id)
        .where(
            allocations.c.released_at.is_(None),
            allocations.c.state == AllocationState.RESERVED.value,
            allocations.c.expires_at < before,
        )
    )
    return [
        Finding(
            "reservation_overdue",
            f"{r.consumer}'s reservation on {r.host} expired at {r.expires_at:%Y-%m-%d %H:%M:%S} "
            "and is still held",
            host=r.host,
            consumer=r.consumer,
        )
        for r in conn.execute(_limited(q))
    ]


def _down_hosts(conn: sa.Connection, silent_since: datetime) -> list[Finding]:
    """Hosts silent since ``silent_since`` that still hold devices or owe setups and cleanups."""
    waiting = (DeviceState.RESERVED.value, DeviceState.CLEANING.value)
    q = (
        sa.select(
            hosts.c.name,
            hosts.c.last_seen_at,
            sa.func.sum(sa.case((devices.c.state == DeviceState.ASSIGNED.value, 1), else_=0)).label("held"),
            sa.func.sum(sa.case((devices.c.state.in_(waiting), 1), else_=0)).label("work"),
        )
        .join(devices, devices.c.host_id == hosts.c.id)
        .where(
            sa.or_(hosts.c.last_seen_at.is_(None), hosts.c.last_seen_at < silent_since),
            devices.c.state.in_((DeviceState.ASSIGNED.value, *waiting)),
        )
        .group_by(hosts.c.name, hosts.c.last_seen_at)
    )
    found = []
    for r in conn.execute(_limited(q)):
        since = f"not heard from since {r.last_seen_at:%Y-%m-%d %H:%M:%S}" if r.last_seen_at else "never seen"
        if r.held:
            found.append(
                Finding(
                    "held_on_down_host",
                    f"{r.name} is silent ({since}, longer than the audit's --down-for) with "
                    f"{r.held} assigned device(s)",
                    host=r.name,
                )
            )
        if r.work:
            found.append(
                Finding(
                    "stranded_work",
                    f"{r.name} is silent ({since}, longer than the audit's --down-for) with "
                    f"{r.work} device(s) waiting for setup or cleanup",
                    host=r.name,
                )
            )
    return found


def _stale_moves(conn: sa.Connection, started_before: datetime) -> list[Finding]:
    """Moves pending since before ``started_before``: a migration that neither committed nor
    aborted (its orchestrator died in between, or forgot). Not repaired here: aborting a move
    whose guest already runs on the target would clean devices in use; a person decides."""
    source, target = hosts.alias("source"), hosts.alias("target")
    q = (
        sa.select(
            moves.c.consumer,
            moves.c.created_at,
            source.c.name.label("source"),
            target.c.name.label("target"),
        )
        .join(source, source.c.id == moves.c.source_host_id)
        .join(target, target.c.id == moves.c.target_host_id)
        .where(moves.c.finished_at.is_(None), moves.c.created_at < started_before)
        .order_by(moves.c.created_at)
    )
    return [
        Finding(
            "move_stale",
            f"{r.consumer} has been moving from {r.source} to {r.target} since "
            f"{r.created_at:%Y-%m-%d %H:%M:%S}: commit or abort the move",
            host=r.target,
            consumer=r.consumer,
            detail={"source_host": r.source},
        )
        for r in conn.execute(_limited(q))
    ]
