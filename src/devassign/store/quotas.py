"""Per-project limits per resource type, and the check a claim makes under lock."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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


# The type ids and declared params of a claim's types, and every limit of the project (the
# IOMMU group mates a claim takes along count against their own type's limit, whatever the
# request's types), in one statement (built once). Rows of types not asked for carry their
# limit only; a project has a few quota rows, the catalog tens of types.
_NAMES: sa.BindParameter[list[str]] = sa.bindparam("names", expanding=True)
_TYPES_AND_LIMITS = (
    sa.select(
        resource_types.c.name,
        resource_types.c.id,
        resource_types.c.params,
        quotas.c.limit,
        resource_types.c.name.in_(_NAMES).label("asked"),
    )
    .select_from(
        resource_types.outerjoin(
            quotas,
            sa.and_(quotas.c.type_id == resource_types.c.id, quotas.c.project == sa.bindparam("project")),
        )
    )
    .where(sa.or_(resource_types.c.name.in_(_NAMES), quotas.c.limit.is_not(None)))
)
# The same on PostgreSQL, run on the driver (every claim runs it; see db.driver_rows).
_TYPES_AND_LIMITS_PG = """
    SELECT t.name, t.id, t.params, q."limit", t.name = ANY(%(names)s::varchar[]) AS asked
    FROM resource_types AS t
    LEFT JOIN quotas AS q ON q.type_id = t.id AND q.project = %(project)s::varchar
    WHERE t.name = ANY(%(names)s::varchar[]) OR q."limit" IS NOT NULL
"""


def types_and_limits(
    conn: sa.Connection, project: str, type_names: Iterable[str], params: dict[str, Any] | None = None
) -> tuple[dict[str, int], dict[str, int]]:
    """(type ids of the given type names, every limit of ``project``), in one round trip; each
    given type's declared params (as stored) go into ``params`` when it is given."""
    ids: dict[str, int] = {}
    limits: dict[str, int] = {}
    values = {"project": project, "names": sorted(set(type_names))}
    if conn.dialect.name == "postgresql":
        rows: Iterable[Any] = driver_rows(conn, _TYPES_AND_LIMITS_PG, values)
    else:
        rows = conn.execute(_TYPES_AND_LIMITS, values)
    for r in rows:
        if r.asked:
            ids[r.name] = r.id
            if params is not None:
                params[r.name] = r.params
        if r.limit is not None:
            limits[r.name] = r.limit
    return ids, limits


def project_quota(conn: sa.Connection, project: str) -> tuple[dict[str, int], dict[str, int]]:
    """(limits, usage) of ``project`` for every type it has a limit for."""
    _, limits = types_and_limits(conn, project, [])
    return limits, usage_of(conn, project, limits)


def quota_for(
    conn: sa.Connection, project: str, type_names: Iterable[str]
) -> tuple[dict[str, int], dict[str, int]]:
    """(limits, usage) of ``project`` for the given types; usage counts live holdings."""
    wanted = set(type_names)
    _, limits = types_and_limits(conn, project, [])
    limits = {t: n for t, n in limits.items() if t in wanted}
    return limits, usage_of(conn, project, limits)


def over_quota(
    project: str,
    limits: Mapping[str, int],
    usage: Mapping[str, int],
    requested: Mapping[str, int],
    *,
    whose: str = "this claim",
) -> errors.DevassignError:
    """The ``403 quota_exceeded``: its message names the types the request passes (else every
    limited type it asks for, else every limit: group mates or a mix of alternatives passed
    them), e.g. ``GPU: limit 4, in use 3, this claim 2``."""
    over = [t for t in sorted(requested) if t in limits and usage.get(t, 0) + requested[t] > limits[t]]
    shown = over or [t for t in sorted(requested) if t in limits] or sorted(limits)
    lines = [
        f"{t}: limit {limits[t]}, in use {usage.get(t, 0)}"
        + (f", {whose} {requested[t]}" if t in requested else "")
        for t in shown
    ]
    message = f"project {project} is over quota: " + "; ".join(lines)
    if not over:
        message += " (no choice of devices, with the IOMMU group mates that come along, fits the limits)"
    return errors.DevassignError(
        errors.QUOTA_EXCEEDED,
        message,
        project=project,
        limits=dict(limits),
        usage=dict(usage),
        requested=dict(requested),
    )


def lock_quota_gate(conn: sa.Connection, project: str) -> None:
    """PostgreSQL: hold the project's quota gate exclusively until this transaction ends.

    Every claim holds the gate shared from its first statement on (``claims._OPEN_PG``); a quota
    set holds it exclusively, so it waits for the project's claims in flight, and a claim that
    starts meanwhile waits for the set to commit. At READ COMMITTED each of a claim's later
    statements reads what committed before it: the claim's look for a quota of the types it
    takes (after it took them) sees every limit set before it could go on, and a limit set
    later is set after the claim committed. SQLite: ``BEGIN IMMEDIATE`` already makes every
    writer the only one."""
    if conn.dialect.name == "postgresql":
        conn.execute(
            sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 7))"), {"k": quota_gate(project)}
        )


# The key space (the first of PostgreSQL's two-int advisory keys) of the types' gates: a claim
# holds the gate of every type its request names shared, a type's deletion holds it exclusively.
TYPE_GATE = 0x7479


def lock_type_gate(conn: sa.Connection, type_id: int) -> None:
    """PostgreSQL: hold the type's gate exclusively until this transaction ends, before the
    deletion of the type looks for live allocations that name it.

    A claim reads the catalog before its transaction and names the types of its request (its
    ``first_available`` alternatives too) in the allocation it writes: a deletion that looked
    in between found none and removed a type that a live allocation then named (its move
    placed that request again on a type that was gone). Every claim holds the gates of its
    types shared from its first statement on (``claims._OPEN_PG``) and, in a later statement,
    finds its types still there or gives up: the deletion waits for the claims in flight and
    sees their allocations, and a claim that starts meanwhile finds the type gone. SQLite:
    one writer at a time, the claim looks in its own transaction."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:g, :t)"), {"g": TYPE_GATE, "t": type_id})


def quota_gate(project: str) -> str:
    """The key of the project's quota gate (:func:`lock_quota_gate`)."""
    return f"quota\x1f{project}"


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


def move_quota_refusal(
    conn: sa.Connection, project: str, source_id: int, target_id: int
) -> errors.DevassignError | None:
    """A move's quota check, inside its start, after the target devices are taken: the
    ``403 quota_exceeded`` it would be, or None.

    Once committed the move gives back the source's devices, so only the types of which the
    target holds more than the source are checked, on the project's use as it will be after
    the commit (a move within the same types is never refused, even for a project whose limit
    was lowered below its use since: it holds no more than before)."""
    source = held_by_type(conn, source_id)
    target = held_by_type(conn, target_id)
    more = sorted(t for t, n in target.items() if n > source.get(t, 0))
    if not more:
        return None
    locked = conn.execute(
        sa.select(quotas.c.type_id)
        .join(resource_types, resource_types.c.id == quotas.c.type_id)
        .where(quotas.c.project == project, resource_types.c.name.in_(more))
        .with_for_update(of=quotas)
    ).all()
    if not locked:
        return None
    limits, usage = quota_for(conn, project, more)  # usage counts source and target: both live
    after = {t: usage.get(t, 0) - source.get(t, 0) for t in more}
    over = [
        f"{t}: limit {limits[t]}, {after[t]} in use once moved "
        f"({source.get(t, 0)} held now, {target[t]} on the target)"
        for t in more
        if t in limits and after[t] > limits[t]
    ]
    if not over:
        return None
    return errors.DevassignError(
        errors.QUOTA_EXCEEDED,
        f"project {project} would be over quota after this move: " + "; ".join(over),
        project=project,
        limits=limits,
        usage=after,
        requested={t: target[t] for t in more},
    )


def set_quota(
    conn: sa.Connection, project: str, type_name: str, limit: int | None, *, now: datetime, actor: str
) -> None:
    tid = type_ids(conn, [type_name]).get(type_name)
    if tid is None:
        raise errors.DevassignError(errors.TYPE_NOT_FOUND, f"no resource type {type_name!r}")
    # After the project's claims in flight, before any that starts now (lock_quota_gate).
    lock_quota_gate(conn, project)
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


# The project's limits of some types, their rows locked (in one order: two claims that lock
# the same rows never deadlock).
_LOCK_LIMITS = (
    sa.select(quotas.c.type_id, resource_types.c.name, quotas.c.limit)
    .join(resource_types, resource_types.c.id == quotas.c.type_id)
    .where(
        quotas.c.project == sa.bindparam("project"), quotas.c.type_id.in_(sa.bindparam("ids", expanding=True))
    )
    .order_by(quotas.c.type_id)
    .with_for_update(of=quotas)
)


def quota_refusal(
    conn: sa.Connection, project: str, taken: Mapping[int, int]
) -> errors.DevassignError | None:
    """The quota check that counts, inside the claim after it took its devices (``taken``:
    how many of each type id, IOMMU group mates included): the 403 to answer when the project
    is now over a limit of those types, else None.

    The project's rows of those types are locked first (one statement, and all there is when
    it has none): two checked claims of the project take turns, and the second counts the
    first's devices once committed. The usage counts this claim's devices too (taken in this
    transaction)."""
    rows = conn.execute(_LOCK_LIMITS, {"project": project, "ids": sorted(taken)}).all()
    if not rows:
        return None
    limits = {r.name: r.limit for r in rows}
    requested = {r.name: taken[r.type_id] for r in rows}
    usage = usage_of(conn, project, limits)
    if all(usage.get(t, 0) <= n for t, n in limits.items()):
        return None
    before = {t: usage.get(t, 0) - requested[t] for t in limits}
    return over_quota(project, limits, before, requested)
