"""Candidate hosts, scheduler snapshots, and the atomic claim and release of devices.

The claim is a compare-and-swap in one transaction (STYLE.md lesson 5): the chosen devices go
``available -> reserved`` with a conditional UPDATE whose row count must match; a partial
unique index over live allocation items makes one device in two live allocations impossible
even if this code were wrong. A lost race rolls the whole transaction back and the caller
tries the next candidate in a *fresh* transaction (LESSONS.md, Placement 16.0.0).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from devassign import errors, schemas
from devassign.domain import IN_USE_STATES, AllocationState, DeviceState
from devassign.scheduler.view import DeviceView, HostView, Snapshot
from devassign.store.allocations import get_allocation
from devassign.store.events import record
from devassign.store.inventory import lock_host, recount
from devassign.store.quotas import enforce_quota, type_ids
from devassign.store.schema import (
    allocation_items,
    allocations,
    consumers,
    devices,
    hosts,
    inventory,
    resource_types,
)

_HOLDING = [s.value for s in (*IN_USE_STATES, DeviceState.MISSING, DeviceState.QUARANTINED)]


class LostRace(Exception):
    """Another claim took a chosen device first; try the next candidate host."""


# ---------------------------------------------------------------- finding candidates


# Aliases built once: a new alias per call costs SQLAlchemy a column collection and a fresh
# cache key every claim (seen in py-spy), and named ones keep the compiled-SQL cache warm.
_INV = inventory.alias("i")
_INV_ALIASES: dict[int, Any] = {}


def _inv_alias(k: int) -> Any:
    alias = _INV_ALIASES.get(k)
    if alias is None:
        alias = _INV_ALIASES.setdefault(k, inventory.alias(f"j{k}"))
    return alias


def candidate_host_ids(
    conn: sa.Connection,
    needs: Mapping[int, int],
    *,
    any_of: Sequence[int] = (),
    up_since: datetime,
    names: Sequence[str] = (),
    spread: bool = False,
    limit: int = 32,
) -> list[int]:
    """Up hosts holding at least ``needs[type_id]`` available devices of every needed type.

    Driven by the ``(type_id, available)`` index of the first type, so it stops after
    ``limit`` hosts instead of building every candidate (LESSONS.md, Placement's ``limit``).
    ``any_of`` (types of ``first_available`` alternatives) only asks for one free device.
    """
    i = _INV
    if needs:
        first, *rest = sorted(needs.items(), key=lambda kv: -kv[1])
        q = sa.select(i.c.host_id).where(i.c.type_id == first[0], i.c.available >= first[1])
        for k, (tid, n) in enumerate(rest):
            j = _inv_alias(k)
            q = q.where(sa.exists().where(j.c.host_id == i.c.host_id, j.c.type_id == tid, j.c.available >= n))
    else:
        q = sa.select(i.c.host_id).where(i.c.type_id.in_(list(any_of)), i.c.available >= 1)
    q = q.join(hosts, hosts.c.id == i.c.host_id).where(hosts.c.last_seen_at >= up_since)
    if names:
        q = q.where(hosts.c.name.in_(list(names)))
    # The tie-break follows the direction so the (type_id, available, host_id) index yields the
    # rows in order and the query stops after ``limit`` of them (no sort of every host).
    if spread:
        q = q.order_by(i.c.available.desc(), i.c.host_id.desc())
    else:
        q = q.order_by(i.c.available.asc(), i.c.host_id.asc())
    q = q.limit(limit)
    seen: dict[int, None] = {}
    for (hid,) in conn.execute(q):
        seen.setdefault(hid, None)
    return list(seen)


def host_ids_by_name(conn: sa.Connection, names: Sequence[str]) -> list[int]:
    rows = conn.execute(sa.select(hosts.c.id).where(hosts.c.name.in_(list(names))))
    return [r.id for r in rows]


def load_snapshot(conn: sa.Connection, host_ids: Sequence[int], *, up_since: datetime) -> Snapshot:
    """Read-only views of ``host_ids`` (in that order) with every present device."""
    if not host_ids:
        return Snapshot(())
    q = (
        sa.select(
            devices.c.id,
            devices.c.host_id,
            devices.c.address,
            devices.c.kind,
            devices.c.numa_node,
            devices.c.iommu_group,
            devices.c.parent,
            devices.c.vendor_id,
            devices.c.product_id,
            devices.c.driver,
            devices.c.attributes,
            devices.c.state,
            devices.c.healthy,
            resource_types.c.name.label("type_name"),
        )
        .add_columns(hosts.c.name.label("host_name"), hosts.c.last_seen_at)
        .join(resource_types, resource_types.c.id == devices.c.type_id)
        .join(hosts, hosts.c.id == devices.c.host_id)
        .where(devices.c.host_id.in_(list(host_ids)), devices.c.state != DeviceState.REMOVED.value)
    )
    meta: dict[int, Any] = {}
    per_host: dict[int, list[DeviceView]] = defaultdict(list)
    for r in conn.execute(q):
        meta.setdefault(r.host_id, (r.host_name, r.last_seen_at))
        per_host[r.host_id].append(
            DeviceView(
                id=r.id,
                address=r.address,
                kind=r.kind,
                type=r.type_name,
                numa_node=r.numa_node,
                iommu_group=r.iommu_group,
                parent=r.parent,
                vendor_id=r.vendor_id,
                product_id=r.product_id,
                driver=r.driver,
                attributes=r.attributes or {},
                state=r.state,
                healthy=r.healthy,
            )
        )
    missing = [h for h in host_ids if h not in meta]  # hosts without devices (explain by name)
    if missing:
        for r in conn.execute(
            sa.select(hosts.c.id, hosts.c.name, hosts.c.last_seen_at).where(hosts.c.id.in_(missing))
        ):
            meta[r.id] = (r.name, r.last_seen_at)
    views = []
    for hid in host_ids:
        if hid not in meta:
            continue
        name, seen = meta[hid]
        if seen is not None and seen.tzinfo is None:
            seen = seen.replace(tzinfo=up_since.tzinfo)
        up = seen is not None and seen >= up_since
        views.append(HostView(name, tuple(sorted(per_host.get(hid, []), key=lambda d: d.address)), up))
    return Snapshot(tuple(views))


def funnel(conn: sa.Connection, needs: Mapping[str, int], *, up_since: datetime) -> dict[str, int]:
    """For an explanation: hosts in all, down, and up but without enough of each needed type."""
    total = conn.execute(sa.select(sa.func.count()).select_from(hosts)).scalar_one()
    up = conn.execute(
        sa.select(sa.func.count()).select_from(hosts).where(hosts.c.last_seen_at >= up_since)
    ).scalar_one()
    out = {"hosts": total, "down": total - up}
    ids = type_ids(conn, needs)
    for name, n in needs.items():
        tid = ids.get(name)
        enough = (
            0
            if tid is None
            else conn.execute(
                sa.select(sa.func.count())
                .select_from(inventory.join(hosts, hosts.c.id == inventory.c.host_id))
                .where(
                    inventory.c.type_id == tid,
                    inventory.c.available >= n,
                    hosts.c.last_seen_at >= up_since,
                )
            ).scalar_one()
        )
        out[f"lacking_{name}"] = up - enough
    return out


# ---------------------------------------------------------------- claim


def existing_claim(conn: sa.Connection, consumer: str, key: str | None) -> schemas.Allocation | None:
    """The consumer's live allocation if this is a replay of the claim that made it.

    A consumer holds at most one live allocation: a second claim with another (or no)
    idempotency key is a conflict, not a second allocation.
    """
    row = conn.execute(
        sa.select(allocations.c.idempotency_key).where(
            allocations.c.consumer == consumer, allocations.c.released_at.is_(None)
        )
    ).first()
    if row is None:
        return None
    if key is not None and row.idempotency_key == key:
        return get_allocation(conn, consumer)
    raise errors.DevassignError(
        errors.CONSUMER_CONFLICT,
        f"consumer {consumer!r} already holds an allocation; release it first, or resend "
        "the same claim with its idempotency_key",
    )


def claim(
    conn: sa.Connection,
    *,
    host: str,
    chosen: Sequence[tuple[str, Sequence[str]]],
    consumer: str,
    project: str,
    key: str | None,
    request_doc: dict[str, Any],
    now: datetime,
    ttl: timedelta,
    actor: str,
    type_names: Mapping[int, str] | None = None,
) -> tuple[schemas.Allocation, bool]:
    """Reserve the chosen devices for ``consumer``, or raise :class:`LostRace` (roll back).

    Returns the allocation and whether this call made it (False: a replay of the same claim
    that committed meanwhile).
    """
    replay = existing_claim(conn, consumer, key)
    if replay is not None:
        return replay, False
    known = conn.execute(sa.select(consumers.c.project).where(consumers.c.uuid == consumer)).first()
    if known is None:
        conn.execute(consumers.insert().values(uuid=consumer, project=project, created_at=now))
    elif known.project != project:
        raise errors.DevassignError(
            errors.CONSUMER_CONFLICT, f"consumer {consumer!r} belongs to project {known.project!r}"
        )
    # Find and lock the host in one statement (the lock order of lock_host: host first).
    host_id = conn.execute(
        sa.select(hosts.c.id).where(hosts.c.name == host).with_for_update(key_share=True)
    ).scalar_one_or_none()
    if host_id is None:
        raise LostRace(f"host {host} was deleted meanwhile")
    ids = [i for _, group in chosen for i in group]
    enforce_quota(conn, project, ids)
    alloc_id = conn.execute(
        allocations.insert()
        .values(
            consumer=consumer,
            project=project,
            host_id=host_id,
            state=AllocationState.RESERVED.value,
            idempotency_key=key,
            request=request_doc,
            created_at=now,
            expires_at=now + ttl,
        )
        .returning(allocations.c.id)
    ).scalar_one()
    taken = conn.execute(
        devices.update()
        .where(
            devices.c.id.in_(ids),
            devices.c.host_id == host_id,
            devices.c.state == DeviceState.AVAILABLE.value,
            devices.c.healthy.is_(True),
        )
        .values(
            state=DeviceState.RESERVED.value, allocation_id=alloc_id, state_changed_at=now, updated_at=now
        )
        .returning(devices.c.id, devices.c.address, devices.c.kind, devices.c.type_id, devices.c.parent)
    ).all()
    if len(taken) != len(set(ids)):
        raise LostRace(f"{len(set(ids)) - len(taken)} of the chosen devices on {host} were taken meanwhile")
    _check_relatives(conn, host_id, ids, taken)
    conn.execute(
        allocation_items.insert(),
        [
            {"allocation_id": alloc_id, "device_id": i, "request_name": name}
            for name, group in chosen
            for i in group
        ],
    )
    # Exactly these devices went available -> reserved, under the host's lock: decrement the
    # counts instead of recounting the host.
    per_type: dict[int, int] = defaultdict(int)
    for r in taken:
        per_type[r.type_id] += 1
    conn.execute(
        inventory.update()
        .where(inventory.c.host_id == host_id, inventory.c.type_id == sa.bindparam("t"))
        .values(available=inventory.c.available - sa.bindparam("n")),
        [{"t": t, "n": n} for t, n in per_type.items()],
    )
    record(
        conn,
        at=now,
        actor=actor,
        action="allocation_created",
        host=host,
        consumer=consumer,
        message=f"{consumer} reserved {len(ids)} devices on {host}",
        detail={"project": project, "devices": ids},
    )
    # The answer is built from what the UPDATE returned: no second read of the allocation.
    names = dict(type_names or {})
    if not {r.type_id for r in taken} <= set(names):
        names = dict(
            conn.execute(
                sa.select(resource_types.c.id, resource_types.c.name).where(
                    resource_types.c.id.in_({r.type_id for r in taken})
                )
            ).all()
        )
    request_of = {i: name for name, group in chosen for i in group}
    allocation = schemas.Allocation(
        consumer=consumer,
        project=project,
        host=host,
        state=AllocationState.RESERVED.value,
        devices=[
            schemas.AllocatedDevice(
                id=r.id,
                address=r.address,
                type=names[r.type_id],
                kind=r.kind,
                state=DeviceState.RESERVED,
                request=request_of.get(r.id),
            )
            for r in sorted(taken, key=lambda r: r.address)
        ],
        created_at=now,
        expires_at=now + ttl,
        released_at=None,
    )
    return allocation, True


def _check_relatives(conn: sa.Connection, host_id: int, ids: Sequence[str], rows: Sequence[Any]) -> None:
    """A PF and its VFs (a GPU and its vGPU slots) exclude each other, even under races.

    The parent row is locked before it is checked, and the claimer of a parent locked it by
    updating it: two claims of a parent and a child serialize on the parent's row. ``rows``
    are the claimed devices (address, parent) as the claim's UPDATE returned them.
    """
    parents = sorted({r.parent for r in rows if r.parent})
    if parents:
        # Lock every parent row whatever its state: a concurrent claim of the parent then
        # waits for this transaction, and sees this child held when it checks its children.
        locked = conn.execute(
            sa.select(devices.c.address, devices.c.state)
            .where(
                devices.c.host_id == host_id, devices.c.address.in_(parents), devices.c.id.not_in(list(ids))
            )
            .with_for_update()
        ).all()
        for r in locked:
            if r.state in _HOLDING:
                raise LostRace(f"parent device {r.address} is in use")
    addresses = [r.address for r in rows]
    child = conn.execute(
        sa.select(devices.c.address).where(
            devices.c.host_id == host_id,
            devices.c.parent.in_(addresses),
            devices.c.state.in_(_HOLDING),
            devices.c.id.not_in(list(ids)),
        )
    ).first()
    if child is not None:
        raise LostRace(f"child device {child.address} is in use")


# ---------------------------------------------------------------- release and expiry


def release(
    conn: sa.Connection,
    consumer: str,
    *,
    now: datetime,
    actor: str,
    why: str = "released",
    expired_before: datetime | None = None,
) -> bool:
    """Release the consumer's live allocation: its devices go to ``cleaning``.

    Returns False when there was nothing live (a second release is harmless); raises 404 for a
    consumer that never held anything. With ``expired_before``, only a reservation that is
    still unconfirmed and expired is released (the sweeper's case).
    """
    q = sa.select(allocations.c.id, allocations.c.host_id).where(
        allocations.c.consumer == consumer, allocations.c.released_at.is_(None)
    )
    if expired_before is not None:
        q = q.where(
            allocations.c.state == AllocationState.RESERVED.value, allocations.c.expires_at < expired_before
        )
    row = conn.execute(q).first()
    if row is not None:
        # Host first, then the allocation: the one lock order of every writer (lock_host).
        lock_host(conn, row.host_id)
        row = conn.execute(q.with_for_update()).first()
    if row is None and expired_before is not None:
        return False
    if row is None:
        ever = conn.execute(
            sa.select(allocations.c.id).where(allocations.c.consumer == consumer).limit(1)
        ).first()
        if ever is None:
            raise errors.DevassignError(
                errors.ALLOCATION_NOT_FOUND, f"consumer {consumer!r} holds no allocation"
            )
        return False
    conn.execute(
        allocations.update()
        .where(allocations.c.id == row.id)
        .values(state=AllocationState.RELEASED.value, released_at=now)
    )
    conn.execute(
        allocation_items.update().where(allocation_items.c.allocation_id == row.id).values(released_at=now)
    )
    in_use = [DeviceState.RESERVED.value, DeviceState.ASSIGNED.value]
    conn.execute(
        devices.update()
        .where(devices.c.allocation_id == row.id, devices.c.state.in_(in_use))
        .values(state=DeviceState.CLEANING.value, state_changed_at=now, updated_at=now)
    )
    # A device that went missing while held must be cleaned when it comes back.
    conn.execute(
        devices.update()
        .where(devices.c.allocation_id == row.id, devices.c.state == DeviceState.MISSING.value)
        .values(prior_state=DeviceState.CLEANING.value, updated_at=now)
    )
    recount(conn, row.host_id)
    host = conn.execute(sa.select(hosts.c.name).where(hosts.c.id == row.host_id)).scalar_one()
    record(
        conn,
        at=now,
        actor=actor,
        action=f"allocation_{why}",
        host=host,
        consumer=consumer,
        message=f"{consumer} {why} its devices on {host}; they go to cleaning",
    )
    return True


def expired_consumers(conn: sa.Connection, now: datetime) -> list[str]:
    rows = conn.execute(
        sa.select(allocations.c.consumer).where(
            allocations.c.released_at.is_(None),
            allocations.c.state == AllocationState.RESERVED.value,
            allocations.c.expires_at < now,
        )
    )
    return [r.consumer for r in rows]
