"""Per-project limits per resource type, and the check a claim makes under lock."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from devassign import errors
from devassign.store.db import driver_rows
from devassign.store.events import record
from devassign.store.schema import allocation_items, allocations, devices, quotas, resource_types


def type_ids(conn: sa.Connection, names: Iterable[str]) -> dict[str, int]:
    wanted = sorted(set(names))
    rows = conn.execute(
        sa.select(resource_types.c.name, resource_types.c.id).where(resource_types.c.name.in_(wanted))
    )
    return {r.name: r.id for r in rows}


# The type ids, declared params and the project's limits of a claim's types in one statement
# (built once).
_TYPES_AND_LIMITS = (
    sa.select(resource_types.c.name, resource_types.c.id, resource_types.c.params, quotas.c.limit)
    .select_from(
        resource_types.outerjoin(
            quotas,
            sa.and_(quotas.c.type_id == resource_types.c.id, quotas.c.project == sa.bindparam("project")),
        )
    )
    .where(resource_types.c.name.in_(sa.bindparam("names", expanding=True)))
)
# The same on PostgreSQL, run on the driver (every claim runs it; see db.driver_rows).
_TYPES_AND_LIMITS_PG = """
    SELECT t.name, t.id, t.params, q."limit"
    FROM resource_types AS t
    LEFT JOIN quotas AS q ON q.type_id = t.id AND q.project = %(project)s::varchar
    WHERE t.name = ANY(%(names)s::varchar[])
"""


def types_and_limits(
    conn: sa.Connection, project: str, type_names: Iterable[str], params: dict[str, Any] | None = None
) -> tuple[dict[str, int], dict[str, int]]:
    """(type ids, limits of ``project``) for the given type names, in one round trip; each
    type's declared params (as stored) go into ``params`` when it is given."""
    ids: dict[str, int] = {}
    limits: dict[str, int] = {}
    values = {"project": project, "names": sorted(set(type_names))}
    if conn.dialect.name == "postgresql":
        rows: Iterable[Any] = driver_rows(conn, _TYPES_AND_LIMITS_PG, values)
    else:
        rows = conn.execute(_TYPES_AND_LIMITS, values)
    for r in rows:
        ids[r.name] = r.id
        if params is not None:
            params[r.name] = r.params
        if r.limit is not None:
            limits[r.name] = r.limit
    return ids, limits


def quota_for(
    conn: sa.Connection, project: str, type_names: Iterable[str]
) -> tuple[dict[str, int], dict[str, int]]:
    """(limits, usage) of ``project`` for the given types; usage counts live holdings."""
    _, limits = types_and_limits(conn, project, type_names)
    return limits, usage_of(conn, project, limits)


def usage_of(conn: sa.Connection, project: str, type_names: Iterable[str]) -> dict[str, int]:
    """Devices of these types that ``project`` holds in live allocations."""
    names = sorted(set(type_names))
    if not names:
        return {}
    return {
        r.name: r.n
        for r in conn.execute(
            sa.select(resource_types.c.name, sa.func.count().label("n"))
            .select_from(
                allocation_items.join(devices, devices.c.id == allocation_items.c.device_id)
                .join(allocations, allocations.c.id == allocation_items.c.allocation_id)
                .join(resource_types, resource_types.c.id == devices.c.type_id)
            )
            .where(
                allocations.c.project == project,
                allocation_items.c.released_at.is_(None),
                resource_types.c.name.in_(names),
            )
            .group_by(resource_types.c.name)
        )
    }


def held_by_type(conn: sa.Connection, allocation_id: int) -> dict[str, int]:
    """Devices an allocation holds (its live items, group mates included), per type name."""
    rows = conn.execute(
        sa.select(resource_types.c.name, sa.func.count().label("n"))
        .select_from(
            allocation_items.join(devices, devices.c.id == allocation_items.c.device_id).join(
                resource_types, resource_types.c.id == devices.c.type_id
            )
        )
        .where(allocation_items.c.allocation_id == allocation_id, allocation_items.c.released_at.is_(None))
        .group_by(resource_types.c.name)
    )
    return {r.name: r.n for r in rows}


def enforce_move_quota(conn: sa.Connection, project: str, source_id: int, target_id: int) -> None:
    """A move's quota check, inside its start, after the target devices are taken.

    Once committed the move gives back the source's devices, so only the types of which the
    target holds more than the source are checked, on the project's use as it will be after
    the commit (a move within the same types is never refused, even for a project whose limit
    was lowered below its use since: it holds no more than before)."""
    source = held_by_type(conn, source_id)
    target = held_by_type(conn, target_id)
    more = sorted(t for t, n in target.items() if n > source.get(t, 0))
    if not more:
        return
    locked = conn.execute(
        sa.select(quotas.c.type_id)
        .join(resource_types, resource_types.c.id == quotas.c.type_id)
        .where(quotas.c.project == project, resource_types.c.name.in_(more))
        .with_for_update(of=quotas)
    ).all()
    if not locked:
        return
    limits, usage = quota_for(conn, project, more)  # usage counts source and target: both live
    after = {t: usage.get(t, 0) - source.get(t, 0) for t in more}
    over = [
        f"{t}: limit {limits[t]}, {after[t]} in use once moved "
        f"({source.get(t, 0)} held now, {target[t]} on the target)"
        for t in more
        if t in limits and after[t] > limits[t]
    ]
    if over:
        raise errors.DevassignError(
            errors.QUOTA_EXCEEDED,
            f"project {project} would be over quota after this move: " + "; ".join(over),
            project=project,
            limits=limits,
            usage=after,
        )


def set_quota(
    conn: sa.Connection, project: str, type_name: str, limit: int | None, *, now: datetime, actor: str
) -> None:
    tid = type_ids(conn, [type_name]).get(type_name)
    if tid is None:
        raise errors.DevassignError(errors.TYPE_NOT_FOUND, f"no resource type {type_name!r}")
    row = (quotas.c.project == project) & (quotas.c.type_id == tid)
    if limit is None:
        conn.execute(quotas.delete().where(row))
    # Updated in place, not deleted and inserted: a claim waiting on this row's lock must find
    # it again (a deleted row would let it skip the check).
    elif conn.execute(quotas.update().where(row).values(limit=limit)).rowcount == 0:
        conn.execute(quotas.insert().values(project=project, type_id=tid, limit=limit))
    record(
        conn,
        at=now,
        actor=actor,
        action="quota_set",
        type=type_name,
        message=f"quota of project {project} for {type_name}: {limit if limit is not None else 'unlimited'}",
        detail={"project": project, "limit": limit},
    )


def list_quotas(conn: sa.Connection, project: str | None = None) -> list[dict[str, Any]]:
    q = sa.select(quotas.c.project, resource_types.c.name, quotas.c.limit).join(
        resource_types, resource_types.c.id == quotas.c.type_id
    )
    if project is not None:
        q = q.where(quotas.c.project == project)
    rows = list(conn.execute(q.order_by(quotas.c.project, resource_types.c.name)))
    out = []
    for r in rows:
        _, usage = quota_for(conn, r.project, [r.name])
        out.append({"project": r.project, "type": r.name, "limit": r.limit, "used": usage.get(r.name, 0)})
    return out


def enforce_quota(conn: sa.Connection, project: str, ids: Sequence[str]) -> None:
    """The quota check that counts: inside the claim, with the project's quota rows locked."""
    # One statement in the common case (no quota for these types): lock the project's quota
    # rows of the chosen devices' types, if any.
    locked = conn.execute(
        sa.select(quotas.c.type_id)
        .where(
            quotas.c.project == project,
            quotas.c.type_id.in_(sa.select(devices.c.type_id).where(devices.c.id.in_(list(ids)))),
        )
        .with_for_update()
    ).all()
    if not locked:
        return
    wanted: dict[str, int] = defaultdict(int)
    for r in conn.execute(
        sa.select(resource_types.c.name)
        .join(devices, devices.c.type_id == resource_types.c.id)
        .where(devices.c.id.in_(list(ids)))
    ):
        wanted[r.name] += 1
    limits, usage = quota_for(conn, project, wanted)
    over = [
        f"{t}: limit {limits[t]}, {usage.get(t, 0)} in use, {n} requested"
        for t, n in sorted(wanted.items())
        if t in limits and usage.get(t, 0) + n > limits[t]
    ]
    if over:
        raise errors.DevassignError(
            errors.QUOTA_EXCEEDED,
            f"project {project} is over quota: " + "; ".join(over),
            project=project,
            limits=limits,
            usage=usage,
            requested=dict(wanted),
        )
