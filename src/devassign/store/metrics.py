"""The fleet's numbers for ``/metrics``: a few aggregate queries, run at each scrape.

Each query is one ``GROUP BY`` (or a count) over indexed columns; nothing here writes. The
counts agree with the API's: devices per type and state are counted as the catalog counts them
(``store/catalog.py``: free devices of down hosts are ``down``, removed devices are history),
hosts are up by the same rule as ``GET /v1/hosts`` (heard from within ``down_after``, by the
server's clock), quota use as ``GET /v1/quotas`` counts it (live allocation items).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from devassign.domain import AllocationState, DeviceState
from devassign.store.events import aware
from devassign.store.schema import (
    allocation_items,
    allocations,
    devices,
    hosts,
    inventory,
    quotas,
    resource_types,
)

# The states of ``schemas.StateCounts`` a scrape reports, in its order: ``down`` is a free
# device of a down host, ``tainted`` a free device of an up host that a NoSchedule or Drain
# taint keeps from new claims, ``partitioned`` a free untainted one of an up host that its pool
# cannot give now (the host's kept ``inventory.carved``); removed devices are not inventory.
DEVICE_STATES = (
    "available",
    "tainted",
    "partitioned",
    "down",
    "reserved",
    "assigned",
    "cleaning",
    "quarantined",
    "unhealthy",
    "missing",
)


@dataclass
class Fleet:
    """What one scrape read. Keys are names as the API shows them."""

    types: list[str] = field(default_factory=list)
    # (type, state) -> devices; with per-host, (host, type, state) -> devices as well
    devices: dict[tuple[str, str], int] = field(default_factory=dict)
    host_devices: dict[tuple[str, str, str], int] = field(default_factory=dict)
    hosts_up: int = 0
    hosts_down: int = 0
    # seconds since each host was last heard from (per-host only), and the longest of them
    seen_age: dict[str, float] = field(default_factory=dict)
    seen_age_max: float | None = None
    # (project, type) -> (limit, used)
    quotas: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    reservations_unconfirmed: int = 0
    reservations_overdue: int = 0
    next_expiry: float | None = None


def fleet(conn: sa.Connection, *, now: datetime, up_since: datetime, per_host: bool) -> Fleet:
    """Everything a scrape reports, in six statements (seven with ``per_host``)."""
    names = conn.execute(sa.select(resource_types.c.name).order_by(resource_types.c.name)).scalars()
    out = Fleet(types=list(names))
    _device_counts(conn, out, up_since=up_since, per_host=per_host)
    _hosts(conn, out, now=now, up_since=up_since, per_host=per_host)
    _quotas(conn, out)
    _reservations(conn, out, now=now)
    return out


def _device_counts(conn: sa.Connection, out: Fleet, *, up_since: datetime, per_host: bool) -> None:
    up = hosts.c.last_seen_at >= up_since
    keys: list[Any] = [resource_types.c.name, devices.c.state]
    if per_host:
        keys.insert(0, hosts.c.name)
    q = (
        sa.select(
            *keys,
            sa.func.count(),
            sa.func.sum(sa.case((up, 1), else_=0)),
            sa.func.sum(sa.case((sa.and_(up, devices.c.taint.is_not(None)), 1), else_=0)),
        )
        .select_from(
            devices.join(hosts, hosts.c.id == devices.c.host_id).join(
                resource_types, resource_types.c.id == devices.c.type_id
            )
        )
        .where(devices.c.state != DeviceState.REMOVED.value)
        .group_by(*keys)
    )
    for row in conn.execute(q):
        *where, state, n, n_up, n_tainted = row
        counted = [(state, int(n))]
        if state == DeviceState.AVAILABLE.value:
            up_free, tainted = int(n_up or 0), int(n_tainted or 0)
            counted = [("available", up_free - tainted), ("tainted", tainted), ("down", int(n) - up_free)]
        for name, count in counted:
            if per_host:
                host, type_name = where
                out.host_devices[(host, type_name, name)] = count
            else:
                type_name = where[0]
            key = (type_name, name)
            out.devices[key] = out.devices.get(key, 0) + count
    # Free devices of up hosts that their pool cannot give now (another mode runs, too little
    # left, held whole) are not ``available``: the kept per-host counts say how many, as they do
    # for ``GET /v1/resource-types``.
    carved = (
        sa.select(hosts.c.name, resource_types.c.name, inventory.c.carved)
        .select_from(
            inventory.join(hosts, hosts.c.id == inventory.c.host_id).join(
                resource_types, resource_types.c.id == inventory.c.type_id
            )
        )
        .where(inventory.c.carved > 0, up)
    )
    for host, type_name, n in conn.execute(carved):
        for key, change in (((type_name, "available"), -n), ((type_name, "partitioned"), n)):
            out.devices[key] = out.devices.get(key, 0) + change
            if per_host:
                out.host_devices[(host, *key)] = out.host_devices.get((host, *key), 0) + change


def _hosts(conn: sa.Connection, out: Fleet, *, now: datetime, up_since: datetime, per_host: bool) -> None:
    up = hosts.c.last_seen_at >= up_since
    total, n_up, oldest = conn.execute(
        sa.select(sa.func.count(), sa.func.sum(sa.case((up, 1), else_=0)), sa.func.min(hosts.c.last_seen_at))
    ).one()
    out.hosts_up = int(n_up or 0)
    out.hosts_down = int(total or 0) - out.hosts_up
    oldest_at = aware(oldest)
    if oldest_at is not None:
        out.seen_age_max = max(0.0, (now - oldest_at).total_seconds())
    if per_host:
        for name, at in conn.execute(
            sa.select(hosts.c.name, hosts.c.last_seen_at).where(hosts.c.last_seen_at.is_not(None))
        ):
            out.seen_age[name] = max(0.0, (now - (aware(at) or now)).total_seconds())


def _quotas(conn: sa.Connection, out: Fleet) -> None:
    """Each project's limit and use per type, for the types it has a quota on."""
    used = (
        sa.select(sa.func.count())
        .select_from(
            allocation_items.join(devices, devices.c.id == allocation_items.c.device_id).join(
                allocations, allocations.c.id == allocation_items.c.allocation_id
            )
        )
        .where(
            allocations.c.project == quotas.c.project,
            devices.c.type_id == quotas.c.type_id,
            allocation_items.c.released_at.is_(None),
        )
        .scalar_subquery()
    )
    q = sa.select(quotas.c.project, resource_types.c.name, quotas.c.limit, used).join(
        resource_types, resource_types.c.id == quotas.c.type_id
    )
    for project, type_name, limit, n in conn.execute(q):
        out.quotas[(project, type_name)] = (int(limit), int(n or 0))


def _reservations(conn: sa.Connection, out: Fleet, *, now: datetime) -> None:
    """Live allocations still waiting for their setup: they expire at ``expires_at``."""
    count, overdue, first = conn.execute(
        sa.select(
            sa.func.count(),
            sa.func.sum(sa.case((allocations.c.expires_at < now, 1), else_=0)),
            sa.func.min(allocations.c.expires_at),
        ).where(
            allocations.c.released_at.is_(None),
            allocations.c.state == AllocationState.RESERVED.value,
            allocations.c.expires_at.is_not(None),
        )
    ).one()
    out.reservations_unconfirmed = int(count or 0)
    out.reservations_overdue = int(overdue or 0)
    first_at = aware(first)
    out.next_expiry = None if first_at is None else (first_at - now).total_seconds()


@dataclass(frozen=True)
class PendingWork:
    """A device's state before an agent's result is applied: what the result finishes."""

    state: str
    since: datetime
    kind: str
    handler: str | None


def pending_work(conn: sa.Connection, host: str, device_ids: Sequence[str]) -> dict[str, PendingWork]:
    """The state, the time it was entered, the kind and the type's handler of these devices of
    ``host``, read before their setup or cleanup results are applied (chunks of 500 ids)."""
    out: dict[str, PendingWork] = {}
    ids = sorted(set(device_ids))
    for start in range(0, len(ids), 500):
        q = (
            sa.select(
                devices.c.id,
                devices.c.state,
                devices.c.state_changed_at,
                devices.c.kind,
                resource_types.c.handler,
            )
            .select_from(
                devices.join(hosts, hosts.c.id == devices.c.host_id).join(
                    resource_types, resource_types.c.id == devices.c.type_id
                )
            )
            .where(hosts.c.name == host, devices.c.id.in_(ids[start : start + 500]))
        )
        for r in conn.execute(q):
            out[r.id] = PendingWork(
                state=r.state,
                since=aware(r.state_changed_at) or r.state_changed_at,
                kind=r.kind,
                handler=r.handler,
            )
    return out
