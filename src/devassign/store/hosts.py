"""Hosts and devices as clients see them, and host liveness by the server's own clock.

Reading lives here; applying agents' reports lives in ``inventory.py``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from devassign import errors, schemas
from devassign.domain import IN_USE_STATES, DeviceState
from devassign.store.events import aware, record
from devassign.store.schema import (
    allocation_items,
    allocations,
    devices,
    hosts,
    inventory,
    resource_types,
)

_HELD = IN_USE_STATES | {DeviceState.QUARANTINED}


# ---------------------------------------------------------------- liveness


_HEARTBEAT = (
    hosts.update()
    .where(hosts.c.name == sa.bindparam("host_name"), hosts.c.marked_down.is_(False))
    .values(last_seen_at=sa.bindparam("now"))
)


def heartbeat(conn: sa.Connection, name: str, *, now: datetime, actor: str) -> None:
    """One statement in the common case (the host is up): heartbeats are the busiest call."""
    if conn.execute(_HEARTBEAT, {"host_name": name, "now": now}).rowcount == 1:
        return
    row = conn.execute(sa.select(hosts.c.id, hosts.c.marked_down).where(hosts.c.name == name)).first()
    if row is None:
        raise errors.DevassignError(
            errors.HOST_NOT_FOUND, f"host {name!r} has never reported: send a full inventory first"
        )
    conn.execute(hosts.update().where(hosts.c.id == row.id).values(last_seen_at=now, marked_down=False))
    if row.marked_down:
        record(conn, at=now, actor=actor, action="host_up", host=name, message=f"host {name} is up")


def mark_down(conn: sa.Connection, *, now: datetime, down_after: timedelta) -> list[str]:
    """Record hosts whose reports stopped (by the server's clock) as down; returns their names."""
    cutoff = now - down_after
    rows = conn.execute(
        sa.select(hosts.c.id, hosts.c.name).where(
            hosts.c.marked_down.is_(False), hosts.c.last_seen_at < cutoff
        )
    ).all()
    down = []
    for r in rows:
        # Conditional, so replicas sweeping at once record each host going down once.
        moved = conn.execute(
            hosts.update().where(hosts.c.id == r.id, hosts.c.marked_down.is_(False)).values(marked_down=True)
        ).rowcount
        if moved != 1:
            continue
        down.append(r.name)
        record(
            conn,
            at=now,
            actor="server",
            action="host_down",
            host=r.name,
            message=f"host {r.name} is down: no report or heartbeat for {down_after.total_seconds():.0f}s",
        )
    return down


# ---------------------------------------------------------------- reading


def _host_model(r: Any, now: datetime, down_after: timedelta, count: int) -> schemas.Host:
    seen = aware(r.last_seen_at)
    up = seen is not None and seen >= now - down_after
    return schemas.Host(
        name=r.name,
        host_id=r.host_id,
        status="up" if up else "down",
        generation=r.generation,
        last_report_at=aware(r.last_report_at),
        last_seen_at=seen,
        device_count=count,
        created_at=aware(r.created_at) or r.created_at,
    )


def list_hosts(conn: sa.Connection, *, now: datetime, down_after: timedelta) -> list[schemas.Host]:
    counts: dict[int, int] = dict(
        conn.execute(
            sa.select(devices.c.host_id, sa.func.count())
            .where(devices.c.state != DeviceState.REMOVED.value)
            .group_by(devices.c.host_id)
        ).all()
    )
    rows = conn.execute(sa.select(hosts).order_by(hosts.c.name))
    return [_host_model(r, now, down_after, counts.get(r.id, 0)) for r in rows]


def get_host(conn: sa.Connection, name: str, *, now: datetime, down_after: timedelta) -> schemas.Host:
    r = conn.execute(sa.select(hosts).where(hosts.c.name == name)).first()
    if r is None:
        raise errors.DevassignError(errors.HOST_NOT_FOUND, f"no host {name!r}")
    count = conn.execute(
        sa.select(sa.func.count()).where(
            devices.c.host_id == r.id, devices.c.state != DeviceState.REMOVED.value
        )
    ).scalar_one()
    return _host_model(r, now, down_after, count)


def delete_host(conn: sa.Connection, name: str, *, now: datetime, actor: str) -> None:
    r = conn.execute(sa.select(hosts.c.id).where(hosts.c.name == name)).first()
    if r is None:
        raise errors.DevassignError(errors.HOST_NOT_FOUND, f"no host {name!r}")
    busy = conn.execute(
        sa.select(sa.func.count()).where(
            devices.c.host_id == r.id,
            devices.c.state.in_([s.value for s in (*_HELD, DeviceState.MISSING)]),
        )
    ).scalar_one()
    if busy:
        raise errors.DevassignError(
            errors.INVALID_STATE,
            f"host {name!r} has {busy} devices in use, cleaning, quarantined or missing; "
            "release and clear them first",
        )
    live = conn.execute(
        sa.select(sa.func.count()).where(allocations.c.host_id == r.id, allocations.c.released_at.is_(None))
    ).scalar_one()
    if live:
        raise errors.DevassignError(errors.INVALID_STATE, f"host {name!r} has live allocations")
    dev_ids = sa.select(devices.c.id).where(devices.c.host_id == r.id)
    conn.execute(allocation_items.delete().where(allocation_items.c.device_id.in_(dev_ids)))
    conn.execute(allocations.delete().where(allocations.c.host_id == r.id))
    conn.execute(devices.delete().where(devices.c.host_id == r.id))
    conn.execute(inventory.delete().where(inventory.c.host_id == r.id))
    conn.execute(hosts.delete().where(hosts.c.id == r.id))
    record(conn, at=now, actor=actor, action="host_deleted", host=name, message=f"host {name} deleted")


def device_query() -> sa.Select[Any]:
    return (
        sa.select(
            devices,
            hosts.c.name.label("host_name"),
            resource_types.c.name.label("type_name"),
            allocations.c.consumer.label("consumer"),
        )
        .join(hosts, hosts.c.id == devices.c.host_id)
        .join(resource_types, resource_types.c.id == devices.c.type_id)
        .outerjoin(allocations, allocations.c.id == devices.c.allocation_id)
    )


def device_model(r: Any) -> schemas.Device:
    return schemas.Device(
        id=r.id,
        host=r.host_name,
        address=r.address,
        kind=r.kind,
        type=r.type_name,
        state=r.state,
        healthy=r.healthy,
        vendor_id=r.vendor_id,
        product_id=r.product_id,
        numa_node=r.numa_node,
        iommu_group=r.iommu_group,
        driver=r.driver,
        parent=r.parent,
        attributes=r.attributes or {},
        consumer=r.consumer,
        quarantine_reason=r.quarantine_reason,
        state_changed_at=aware(r.state_changed_at) or r.state_changed_at,
        created_at=aware(r.created_at) or r.created_at,
    )


def list_devices(
    conn: sa.Connection,
    *,
    host: str | None = None,
    type: str | None = None,
    state: str | None = None,
    address: str | None = None,
    limit: int = 1000,
    offset: int = 0,
) -> list[schemas.Device]:
    q = device_query().order_by(hosts.c.name, devices.c.address).limit(limit).offset(offset)
    if host:
        q = q.where(hosts.c.name == host)
    if type:
        q = q.where(resource_types.c.name == type)
    if state:
        q = q.where(devices.c.state == state)
    if address:
        q = q.where(devices.c.address == address)
    return [device_model(r) for r in conn.execute(q)]


def get_device(conn: sa.Connection, device_id: str) -> schemas.Device:
    r = conn.execute(device_query().where(devices.c.id == device_id)).first()
    if r is None:
        raise errors.DevassignError(errors.DEVICE_NOT_FOUND, f"no device with id {device_id!r}")
    return device_model(r)
