"""Allocations: which consumer holds which devices on which host (reading them)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import sqlalchemy as sa

from devassign import errors, schemas
from devassign.store.events import aware
from devassign.store.schema import (
    allocation_items,
    allocations,
    devices,
    hosts,
    resource_types,
)


def _models(conn: sa.Connection, rows: list[Any]) -> list[schemas.Allocation]:
    if not rows:
        return []
    ids = [r.id for r in rows]
    released = {r.id for r in rows if r.released_at is not None}
    items: dict[int, list[schemas.AllocatedDevice]] = defaultdict(list)
    q = (
        sa.select(
            allocation_items.c.allocation_id,
            allocation_items.c.request_name,
            devices.c.id,
            devices.c.address,
            devices.c.kind,
            devices.c.state,
            devices.c.allocation_id.label("held_by"),
            resource_types.c.name.label("type_name"),
        )
        .join(devices, devices.c.id == allocation_items.c.device_id)
        .join(resource_types, resource_types.c.id == devices.c.type_id)
        .where(allocation_items.c.allocation_id.in_(ids))
        .order_by(devices.c.address)
    )
    for r in conn.execute(q):
        # A released allocation's device is its business while it is cleaned for it; then
        # the device's state is its next holder's, which the former one must not watch.
        gone = r.allocation_id in released and r.held_by != r.allocation_id
        items[r.allocation_id].append(
            schemas.AllocatedDevice(
                id=r.id,
                address=r.address,
                type=r.type_name,
                kind=r.kind,
                state=None if gone else r.state,
                request=r.request_name,
            )
        )
    return [
        schemas.Allocation(
            consumer=r.consumer,
            project=r.project,
            host=r.host_name,
            state=r.state,
            devices=items.get(r.id, []),
            created_at=aware(r.created_at) or r.created_at,
            expires_at=aware(r.expires_at),
            released_at=aware(r.released_at),
            release_reason=r.release_reason,
            release_detail=r.release_detail,
        )
        for r in rows
    ]


def _query() -> sa.Select[Any]:
    return sa.select(allocations, hosts.c.name.label("host_name")).join(
        hosts, hosts.c.id == allocations.c.host_id
    )


def list_allocations(
    conn: sa.Connection,
    *,
    consumer: str | None = None,
    project: str | None = None,
    host: str | None = None,
    include_released: bool = False,
    limit: int = 1000,
) -> list[schemas.Allocation]:
    q = _query().order_by(allocations.c.id.desc()).limit(limit)
    if not include_released:
        q = q.where(allocations.c.released_at.is_(None))
    if consumer:
        q = q.where(allocations.c.consumer == consumer)
    if project is not None:
        q = q.where(allocations.c.project == project)
    if host:
        q = q.where(hosts.c.name == host)
    return _models(conn, list(conn.execute(q)))


def get_allocation(conn: sa.Connection, consumer: str, *, project: str | None = None) -> schemas.Allocation:
    """The consumer's live allocation, else its latest released one."""
    q = _query().where(allocations.c.consumer == consumer)
    if project is not None:
        q = q.where(allocations.c.project == project)
    q = q.order_by(allocations.c.released_at.is_(None).desc(), allocations.c.id.desc()).limit(1)
    rows = list(conn.execute(q))
    if not rows:
        raise errors.DevassignError(errors.ALLOCATION_NOT_FOUND, f"consumer {consumer!r} holds no allocation")
    return _models(conn, rows)[0]
