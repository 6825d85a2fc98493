"""The atomic claim and release of devices (candidates are found in ``store.candidates``).

The claim is a compare-and-swap in one transaction: the chosen devices go
``available -> reserved`` with a conditional UPDATE whose row count must match; a partial
unique index over live allocation items makes one device in two live allocations impossible
even if this code were wrong. A lost race rolls the whole transaction back and the caller
tries the next candidate in a *fresh* transaction (retrying inside the same one is how
Placement 16.0.0 over-allocated; docs/architecture.md, "The claim").
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from devassign import errors, schemas
from devassign.domain import IN_USE_STATES, SPEC_PREFIX, AllocationState, ArqState, DeviceState
from devassign.failpoints import failpoint
from devassign.scheduler.shares import Pools, ancestors, copy_pools, overdrawn, parent_map
from devassign.scheduler.view import HostView
from devassign.store.allocations import get_allocation
from devassign.store.candidates import load_snapshot
from devassign.store.db import ConcurrentChange, driver_rows
from devassign.store.events import record
from devassign.store.inventory import lock_host, partitions, recarve, recount
from devassign.store.quotas import TYPE_GATE, quota_gate, quota_refusal
from devassign.store.schema import (
    allocation_items,
    allocations,
    consumers,
    cyborg_arqs,
    devices,
    hosts,
    inventory,
    resource_types,
)

_HOLDING = [s.value for s in (*IN_USE_STATES, DeviceState.MISSING, DeviceState.QUARANTINED)]


class LostRace(Exception):
    """Another claim took a chosen device first; try the next candidate host."""


class HostBusy(LostRace):
    """Another transaction holds the host's lock and the claim chose not to wait for it."""


class OverQuota(LostRace):
    """The devices taken put the project over a limit, counted under the quota's lock: the
    usage the claim was planned with is stale (another claim of the project committed since,
    or the claim took other devices than planned). Plan again on a fresh read of the quota;
    ``error`` is the ``403 quota_exceeded`` to answer when no plan is left."""

    def __init__(self, error: errors.DevassignError) -> None:
        super().__init__(error.message)
        self.error = error


class Pick(NamedTuple):
    """One named request's devices in a claim, and the IOMMU group mates that come along
    (taken and quota-counted too, but they carry none of the request's params)."""

    name: str
    device_ids: Sequence[str]
    mates: Sequence[str] = ()


# Given the host as it is under its lock, the devices to claim (per named request), or None.
Refit = Callable[[HostView], Sequence[Pick] | None]


# ---------------------------------------------------------------- claim


def existing_claim(
    conn: sa.Connection, consumer: str, key: str | None, project: str, doc: Mapping[str, Any] | None = None
) -> schemas.Allocation | None:
    """The consumer's live allocation if this is a replay of the claim that made it.

    A consumer holds at most one live allocation: a second claim with another (or no)
    idempotency key is a conflict, not a second allocation. Only a claim for the project
    that holds it can be its replay: another project's claim learns nothing but the conflict.
    The same key with another request (``doc``, the claim as stored) is a client's bug, not
    a retry: answering the old allocation would hide it, so it is refused.
    """
    row = conn.execute(
        sa.select(allocations.c.idempotency_key, allocations.c.project, allocations.c.request).where(
            allocations.c.consumer == consumer, allocations.c.released_at.is_(None)
        )
    ).first()
    if row is None:
        return None
    if row.project != project:
        raise consumer_in_use(consumer)
    if key is not None and row.idempotency_key == key:
        check_same_request(consumer, key, row.request, doc)
        return get_allocation(conn, consumer)
    raise errors.DevassignError(
        errors.CONSUMER_CONFLICT,
        f"consumer {consumer!r} already holds an allocation; release it first, or resend "
        "the same claim with its idempotency_key",
    )


def check_same_request(consumer: str, key: str, stored: Any, doc: Mapping[str, Any] | None) -> None:
    """Refuse a replay whose request differs from the one its idempotency key made (``stored``:
    the allocation's request column, read back as a dict)."""
    if doc is not None and _replay_form(stored) != _replay_form(doc):
        raise errors.DevassignError(
            errors.IDEMPOTENCY_KEY_REUSED,
            f"idempotency_key {key!r} made the allocation of {consumer!r} for another request; "
            "resend that same request to get its allocation, or use a new key for a new request",
        )


def _replay_form(doc: Any) -> Any:
    """A claim as a retry must repeat it: what it asks for, not how it was written. The
    project is left out (a replay is only looked for in the allocation's own project, so a
    member's retry may name it or not); extra specs keep their device specs only (a flavor's
    other keys are not requests), each count as a number (``2`` and ``"2"`` ask the same)."""
    if not isinstance(doc, Mapping):
        return doc
    out = {k: v for k, v in doc.items() if k != "project"}
    specs = out.get("extra_specs")
    if isinstance(specs, Mapping):
        out["extra_specs"] = {
            k: (int(v) if isinstance(v, str) and v.strip().isascii() and v.strip().isdigit() else v)
            for k, v in specs.items()
            if isinstance(k, str) and k.startswith(SPEC_PREFIX)
        }
    return out


def consumer_in_use(consumer: str) -> errors.DevassignError:
    """Another project's consumer: said without naming that project or what it holds."""
    return errors.DevassignError(
        errors.CONSUMER_CONFLICT,
        f"consumer id {consumer!r} is used by another project; consumer ids are unique across "
        "the cloud: choose another (an instance UUID)",
    )


# The claim's statements, built once: a claim runs them thousands of times a minute, and
# building a statement costs more Python than sending it (py-spy and cProfile, docs/benchmarks.md).
_NEW_CONSUMER = (
    sqlite_insert(consumers)
    .on_conflict_do_nothing(index_elements=[consumers.c.uuid])
    .returning(consumers.c.project)
)
_CONSUMER_PROJECT = sa.select(consumers.c.project).where(consumers.c.uuid == sa.bindparam("uuid"))
_LOCK_HOST = sa.select(hosts.c.id).where(hosts.c.name == sa.bindparam("name")).with_for_update(key_share=True)
# The same, skipping a host another claim (or report) holds: concurrent claims spread over the
# candidates instead of queueing on one host's lock and then finding its devices taken.
_LOCK_HOST_IF_FREE = (
    sa.select(hosts.c.id)
    .where(hosts.c.name == sa.bindparam("name"))
    .with_for_update(key_share=True, skip_locked=True)
)
# One live allocation per consumer (the partial unique index): a second claim of the same
# consumer inserts nothing, and the claim answers the replay or the conflict. (SQLite's; the
# PostgreSQL claim does the same in :data:`_OPEN_PG`.)
_NEW_ALLOCATION = (
    sqlite_insert(allocations)
    .on_conflict_do_nothing(
        index_elements=[allocations.c.consumer], index_where=allocations.c.released_at.is_(None)
    )
    .returning(allocations.c.id)
)


def _open_pg_statement(lock: str) -> str:
    """PostgreSQL: the host's lock, the consumer and the allocation row in one round trip.

    The allocation is inserted only for a consumer this statement recorded or one its
    snapshot knows in the same project (``known``: its project as the snapshot saw it). A
    consumer recorded by a transaction that committed during the statement is in neither:
    no allocation, ``known`` NULL, and the claim starts again. (psycopg's parameters, each
    cast: see :func:`~devassign.store.db.driver_rows`.)

    It also takes the project's quota gate shared (``quotas.lock_quota_gate``): a quota set
    waits for this claim, or this claim for the set, and the take's look for a limit then
    sees every limit set before. And the gates of the request's types
    (``quotas.lock_type_gate``): a type's deletion waits for this claim, and the take finds
    the types still there."""
    return f"""
        WITH gate AS (
            SELECT pg_advisory_xact_lock_shared(hashtextextended(%(gate)s::text, 7))
            UNION ALL
            SELECT pg_advisory_xact_lock_shared({TYPE_GATE}, t) FROM unnest(%(types)s::int[]) AS t
        ), h AS (
            SELECT id FROM hosts WHERE name = %(name)s::varchar {lock}
        ), c AS (
            INSERT INTO consumers (uuid, project, created_at)
            SELECT %(consumer)s::varchar, %(project)s::varchar, %(created_at)s::timestamptz FROM h
            ON CONFLICT (uuid) DO NOTHING
            RETURNING uuid
        ), known AS (
            SELECT project FROM consumers WHERE uuid = %(consumer)s::varchar
        ), a AS (
            INSERT INTO allocations
                (consumer, project, host_id, state, idempotency_key, request, created_at, expires_at)
            SELECT %(consumer)s::varchar, %(project)s::varchar, h.id, %(state)s::varchar,
                %(idempotency_key)s::varchar, %(request)s::jsonb, %(created_at)s::timestamptz,
                %(expires_at)s::timestamptz
            FROM h
            WHERE EXISTS (SELECT 1 FROM c) OR (SELECT project FROM known) = %(project)s::varchar
            ON CONFLICT (consumer) WHERE released_at IS NULL DO NOTHING
            RETURNING id
        )
        SELECT (SELECT id FROM h) AS host_id, (SELECT project FROM known) AS known,
            (SELECT id FROM a) AS alloc_id, (SELECT count(*) FROM gate) AS gated
        """


# Keyed by ``ClaimOrder.wait``: wait for the host's lock, or skip a host another holds.
_OPEN_PG = {
    True: _open_pg_statement("FOR NO KEY UPDATE"),
    False: _open_pg_statement("FOR NO KEY UPDATE SKIP LOCKED"),
}
# Whether a taken device is the pool of some device on its host (a GPU its vGPUs are carved
# from): returned by the take itself, so a claim of plain devices reads no pool at all. Text,
# since SQLite's RETURNING would lose the correlation of a built subquery.
_IS_POOL_SQL = (
    "EXISTS (SELECT 1 FROM devices AS m WHERE m.host_id = devices.host_id AND m.pool = devices.address)"
)
_IS_POOL: sa.Label[bool] = sa.literal_column(_IS_POOL_SQL, sa.Boolean).label("is_pool")
# Whether a taken device's parent or a child of it is a device on its host (a PF and its VFs):
# held, it keeps them from claims, which the counts then show.
_KIN_SQL = (
    "EXISTS (SELECT 1 FROM devices AS k WHERE k.host_id = devices.host_id"
    " AND (k.parent = devices.address OR k.address = devices.parent))"
)
_KIN: sa.Label[bool] = sa.literal_column(_KIN_SQL, sa.Boolean).label("has_kin")
# SQLite's (the only user of this statement): without statistics, its planner took the state
# index for more than one id and scanned every free device of the cloud (78 ms at 80,000);
# the unary ``+`` keeps it off the host and state indexes, so it looks the ids up by key.
_UNINDEXED_HOST = sa.literal_column("+devices.host_id", sa.Integer)
_UNINDEXED_STATE = sa.literal_column("+devices.state", sa.String)
_TAKE = (
    devices.update()
    .where(
        devices.c.id.in_(sa.bindparam("ids", expanding=True)),
        sa.bindparam("on_host") == _UNINDEXED_HOST,
        sa.literal(DeviceState.AVAILABLE.value) == _UNINDEXED_STATE,
        devices.c.healthy.is_(True),
        devices.c.taint.is_(None),
    )
    .values(
        state=DeviceState.RESERVED.value,
        allocation_id=sa.bindparam("new_allocation"),
        state_changed_at=sa.bindparam("now"),
        updated_at=sa.bindparam("now"),
    )
    .returning(
        devices.c.id,
        devices.c.address,
        devices.c.kind,
        devices.c.type_id,
        devices.c.parent,
        devices.c.pool,
        _IS_POOL,
        _KIN,
    )
)
# A PF and its VFs (a GPU and its vGPU slots) exclude each other: the claimed devices' parents
# (locked, whatever their state) and their held children, in one statement.
_RELATIVES = (
    sa.select(devices.c.address, devices.c.state, devices.c.parent, devices.c.pool)
    .where(
        devices.c.host_id == sa.bindparam("host_id"),
        devices.c.id.not_in(sa.bindparam("ids", expanding=True)),
        sa.or_(
            devices.c.address.in_(sa.bindparam("parents", expanding=True)),
            sa.and_(
                sa.or_(
                    devices.c.parent.in_(sa.bindparam("addresses", expanding=True)),
                    devices.c.pool.in_(sa.bindparam("addresses", expanding=True)),
                ),
                devices.c.state.in_(_HOLDING),
            ),
        ),
    )
    .with_for_update()
)
_NEW_ITEM = allocation_items.insert()
# PostgreSQL: the same as _TAKE, _NEW_ITEM, _TAKE_COUNTS and the event, as one statement of
# data-modifying CTEs (one round trip instead of four). The row count is checked as for _TAKE;
# a lost race rolls the whole transaction back, items, counts and event included.
_TAKE_ALL_PG = f"""
    WITH taken AS (
        UPDATE devices
        SET state = '{DeviceState.RESERVED.value}', allocation_id = %(alloc)s::bigint,
            state_changed_at = %(now)s::timestamptz, updated_at = %(now)s::timestamptz
        WHERE id = ANY(%(ids)s::varchar[]) AND host_id = %(host_id)s::int
          AND state = '{DeviceState.AVAILABLE.value}' AND healthy AND taint IS NULL
        RETURNING id, address, kind, type_id, parent, pool, {_IS_POOL_SQL} AS is_pool, {_KIN_SQL} AS has_kin,
            EXISTS (SELECT 1 FROM quotas AS q
                    WHERE q.project = %(project)s::varchar AND q.type_id = devices.type_id) AS limited
    ), items AS (
        INSERT INTO allocation_items (allocation_id, device_id, request_name)
        SELECT %(alloc)s::bigint, t.id, r.name
        FROM taken AS t
        JOIN unnest(%(ids)s::varchar[], %(names)s::varchar[]) AS r(id, name) ON r.id = t.id
    ), counts AS (
        UPDATE inventory SET available = inventory.available - c.n
        FROM (SELECT type_id, count(*) AS n FROM taken GROUP BY type_id) AS c
        WHERE inventory.host_id = %(host_id)s::int AND inventory.type_id = c.type_id
    ), event AS (
        INSERT INTO events (at, actor, action, host, consumer, message, detail)
        VALUES (%(now)s::timestamptz, %(actor)s::varchar, 'allocation_created', %(host)s::varchar,
            %(consumer)s::varchar, %(message)s::text, %(detail)s::jsonb)
    )
    SELECT id, address, kind, type_id, parent, pool, is_pool, has_kin, limited,
        -- A PF and its VFs (a GPU and its vGPU slots) exclude each other: any held parent or
        -- child of the taken devices. Under the host's lock every claim on this host waits
        -- for this one, so the states read here cannot change before the commit.
        (SELECT count(*) FROM devices AS d
         WHERE d.host_id = %(host_id)s::int AND NOT (d.id = ANY(%(ids)s::varchar[]))
           AND d.state IN ({", ".join(repr(x) for x in _HOLDING)})
           AND (d.address IN (SELECT parent FROM taken) OR d.parent IN (SELECT address FROM taken)
                OR d.address IN (SELECT pool FROM taken) OR d.pool IN (SELECT address FROM taken))
        ) AS held_relatives,
        -- The request's types, still in the catalog after their gates were taken shared.
        (SELECT count(*) FROM resource_types WHERE id = ANY(%(types)s::int[])) AS types_left
    FROM taken
"""
_TAKE_COUNTS = (
    inventory.update()
    .where(inventory.c.host_id == sa.bindparam("on_host"), inventory.c.type_id == sa.bindparam("t"))
    .values(available=inventory.c.available - sa.bindparam("n"))
)


@dataclass(frozen=True)
class ClaimOrder:
    """One claim attempt on one host, as the placer decided it.

    ``chosen``: per named request, its devices and their IOMMU group mates (:class:`Pick`).
    ``check_quota``: check the project's quota for the devices the claim takes (after a refit,
    the ones it chose then; group mates as their own type), under the quota's lock whenever
    the project has a limit for one of their types *now*, in this transaction (it raises
    :class:`OverQuota`); False only for a caller that checks its own way (a move's start).
    ``wait=False``: raise
    :class:`HostBusy` at once if another transaction holds the host (PostgreSQL; SQLite has one
    writer anyway). ``refit``: choose again on the host's devices as they are under its lock,
    instead of trusting ``chosen`` from an older view (one more statement; used after a claim
    found the host busy or its devices taken). ``consumption``: per named request, what its
    params take of each of its devices' pools beyond their own ``consumes`` (scheduler/shares.py;
    not of the group mates', which carry no traffic).
    """

    host: str
    chosen: Sequence[Pick]
    consumer: str
    project: str
    key: str | None
    request_doc: dict[str, Any]
    actor: str
    type_names: Mapping[int, str] | None = None
    check_quota: bool = True
    wait: bool = True
    refit: Refit | None = None
    consumption: Mapping[str, Mapping[str, int]] | None = None


@dataclass(frozen=True)
class _Taking:
    """What both halves of a claim need once the prelude has decided the devices."""

    order: ClaimOrder
    host_id: int
    alloc_id: int
    request_of: dict[str, str | None]  # device id -> request name (None: an IOMMU group mate)
    mates: frozenset[str]  # of those, the IOMMU group mates (no params of their request)
    now: datetime
    message: str
    detail: dict[str, Any]

    @property
    def ids(self) -> list[str]:
        return list(self.request_of)


def claim(
    conn: sa.Connection, order: ClaimOrder, *, now: datetime, ttl: timedelta, up_since: datetime | None = None
) -> tuple[schemas.Allocation, bool]:
    """Reserve the chosen devices for the order's consumer, or raise :class:`LostRace` (roll back).

    Returns the allocation and whether this call made it (False: a replay of the same claim,
    committed earlier or meanwhile). The prelude (the host's lock, the consumer, the
    allocation row, the refit) is shared; the devices are then taken by :func:`_take_pg` (one
    statement of data-modifying CTEs) or :func:`_take_sqlite`, and the quota checked for them.
    """
    prepared = _prelude(conn, order, now=now, ttl=ttl, up_since=up_since)
    if isinstance(prepared, schemas.Allocation):
        return prepared, False
    take = _take_pg if conn.dialect.name == "postgresql" else _take_sqlite
    taken = take(conn, prepared)
    if order.check_quota:
        _check_quota(conn, order.project, taken)
    return _answer(conn, prepared, taken, ttl), True


def _check_quota(conn: sa.Connection, project: str, taken: Sequence[Any]) -> None:
    """Raise :class:`OverQuota` when the devices just taken put the project over a limit.

    Looked for after the take, in this transaction, on the devices taken: after a refit they
    are not the ones the claim planned, and a limit may have been set since the claim's read.
    On PostgreSQL the take said whether the project has a limit for any of their types (no
    statement more for a project without); on SQLite (one writer) the check's first statement
    is that look."""
    if conn.dialect.name == "postgresql" and not any(r.limited for r in taken):
        return
    per_type: dict[int, int] = defaultdict(int)
    for r in taken:
        per_type[r.type_id] += 1
    refusal = quota_refusal(conn, project, per_type)
    if refusal is not None:
        raise OverQuota(refusal)


def _prelude(
    conn: sa.Connection, order: ClaimOrder, *, now: datetime, ttl: timedelta, up_since: datetime | None
) -> _Taking | schemas.Allocation:
    """Everything before the devices are taken; an allocation when this is a replay."""
    opened = (_open_pg if conn.dialect.name == "postgresql" else _open_sqlite)(conn, order, now, ttl)
    if isinstance(opened, schemas.Allocation):
        return opened
    host_id, alloc_id = opened
    consumer, project = order.consumer, order.project
    chosen = order.chosen
    if order.refit is not None:
        views = load_snapshot(conn, [host_id], up_since=up_since or now).hosts
        fresh = order.refit(views[0]) if views else None
        if fresh is None:
            raise LostRace(f"host {order.host} no longer fits the request")
        chosen = fresh
    # One id once (a device could in principle be both chosen and a group mate).
    # A group mate belongs to no request: none of a request's params (a MAC, a VLAN) is its.
    request_of: dict[str, str | None] = {}
    for pick in chosen:
        for i in pick.device_ids:
            request_of.setdefault(i, pick.name)
    chosen_ids = set(request_of)
    for pick in chosen:
        for i in pick.mates:
            request_of.setdefault(i, None)
    mates = frozenset(request_of) - chosen_ids
    ids = list(request_of)
    message = f"{consumer} reserved {len(ids)} device{'' if len(ids) == 1 else 's'} on {order.host}"
    return _Taking(
        order, host_id, alloc_id, request_of, mates, now, message, {"project": project, "devices": ids}
    )


def _host_not_locked(order: ClaimOrder) -> LostRace:
    if not order.wait:
        return HostBusy(f"host {order.host} is locked by another transaction (or was deleted)")
    return LostRace(f"host {order.host} was deleted meanwhile")


def _no_new_allocation(conn: sa.Connection, order: ClaimOrder) -> schemas.Allocation:
    """The consumer already holds a live allocation: the replay of this claim, or a conflict."""
    replay = existing_claim(conn, order.consumer, order.key, order.project, order.request_doc)
    if replay is None:  # released between the two statements: start again
        raise ConcurrentChange(f"the live allocation of {order.consumer} was released meanwhile")
    return replay


def _allocation_row(order: ClaimOrder, host_id: int | None, now: datetime, ttl: timedelta) -> dict[str, Any]:
    return {
        "consumer": order.consumer,
        "project": order.project,
        "host_id": host_id,
        "state": AllocationState.RESERVED.value,
        "idempotency_key": order.key,
        "request": order.request_doc,
        "created_at": now,
        "expires_at": now + ttl,
    }


def _open_sqlite(
    conn: sa.Connection, order: ClaimOrder, now: datetime, ttl: timedelta
) -> tuple[int, int] | schemas.Allocation:
    """Lock the host (first: the lock order of lock_host), record the consumer and insert the
    allocation row: (host id, allocation id), or the live allocation this claim replays."""
    lock = _LOCK_HOST if order.wait else _LOCK_HOST_IF_FREE
    host_id = conn.execute(lock, {"name": order.host}).scalar_one_or_none()
    if host_id is None:
        raise _host_not_locked(order)
    consumer, project = order.consumer, order.project
    new = {"uuid": consumer, "project": project, "created_at": now}
    if conn.execute(_NEW_CONSUMER, new).first() is None:
        known = conn.execute(_CONSUMER_PROJECT, {"uuid": consumer}).scalar_one()
        if known != project:
            raise consumer_in_use(consumer)
    row = _allocation_row(order, host_id, now, ttl)
    alloc_id = conn.execute(_NEW_ALLOCATION, row).scalar_one_or_none()
    if alloc_id is None:
        return _no_new_allocation(conn, order)
    return host_id, alloc_id


def _open_pg(
    conn: sa.Connection, order: ClaimOrder, now: datetime, ttl: timedelta
) -> tuple[int, int] | schemas.Allocation:
    """What :func:`_open_sqlite` does, in one statement (:data:`_OPEN_PG`)."""
    row = _allocation_row(order, None, now, ttl)
    row["name"], row["request"] = order.host, json.dumps(order.request_doc)
    row["gate"] = quota_gate(order.project)
    row["types"] = _type_ids(order)
    found = driver_rows(conn, _OPEN_PG[order.wait], row)[0]
    if found.host_id is None:
        raise _host_not_locked(order)
    if found.alloc_id is not None:
        return found.host_id, found.alloc_id
    if found.known is None:
        # Another transaction inserted the consumer after this statement's snapshot: its
        # project is not known here. A fresh transaction sees it.
        raise ConcurrentChange(f"consumer {order.consumer} was recorded meanwhile")
    if found.known != order.project:
        raise consumer_in_use(order.consumer)
    return _no_new_allocation(conn, order)


def _take_pg(conn: sa.Connection, t: _Taking) -> Sequence[Any]:
    """PostgreSQL: the devices, the allocation items, the counts and the event in one statement."""
    o = t.order
    types = _type_ids(o)
    taken = driver_rows(
        conn,
        _TAKE_ALL_PG,
        {
            "ids": t.ids,
            "names": [t.request_of[i] for i in t.ids],
            "host_id": t.host_id,
            "alloc": t.alloc_id,
            "now": t.now,
            "actor": o.actor,
            "host": o.host,
            "consumer": o.consumer,
            "project": o.project,
            "message": t.message,
            "detail": json.dumps(t.detail),
            "types": types,
        },
    )
    _check_taken(conn, t, taken)
    if taken[0].types_left != len(types):
        raise _type_deleted(o)
    if taken[0].held_relatives:
        raise LostRace(f"a parent or child of the chosen devices on {o.host} is in use")
    _check_pools(conn, t.host_id, taken)
    return taken


def _take_sqlite(conn: sa.Connection, t: _Taking) -> Sequence[Any]:
    """SQLite: what :data:`_TAKE_ALL_PG` does, statement by statement, under the one writer lock."""
    o = t.order
    wanted = _type_ids(o)
    if wanted and conn.execute(_TYPES_LEFT, {"ids": wanted}).scalar_one() != len(wanted):
        raise _type_deleted(o)
    taken = conn.execute(
        _TAKE, {"ids": t.ids, "on_host": t.host_id, "new_allocation": t.alloc_id, "now": t.now}
    ).all()
    _check_taken(conn, t, taken)
    _check_relatives(conn, t.host_id, t.ids, taken)
    conn.execute(
        _NEW_ITEM,
        [{"allocation_id": t.alloc_id, "device_id": i, "request_name": t.request_of[i]} for i in t.ids],
    )
    # Exactly these devices went available -> reserved, under the host's lock: decrement
    # the counts instead of recounting the host.
    per_type: dict[int, int] = defaultdict(int)
    for r in taken:
        per_type[r.type_id] += 1
    conn.execute(_TAKE_COUNTS, [{"on_host": t.host_id, "t": k, "n": n} for k, n in per_type.items()])
    _check_pools(conn, t.host_id, taken)
    record(
        conn,
        at=t.now,
        actor=o.actor,
        action="allocation_created",
        host=o.host,
        consumer=o.consumer,
        message=t.message,
        detail=t.detail,
    )
    return taken


_TYPES_LEFT = (
    sa.select(sa.func.count())
    .select_from(resource_types)
    .where(resource_types.c.id.in_(sa.bindparam("ids", expanding=True)))
)


def _type_ids(order: ClaimOrder) -> list[int]:
    """The ids of every type the order's request names (alternatives too), as the claim read
    them from the catalog: each must still be there when the allocation naming it is written."""
    return sorted(order.type_names or ())


def _type_deleted(order: ClaimOrder) -> errors.DevassignError:
    gone = ", ".join(sorted((order.type_names or {}).values()))
    return errors.DevassignError(
        errors.TYPE_NOT_FOUND,
        f"a resource type of this request ({gone}) was deleted while it was being claimed; "
        "`devassign types` lists the types there are",
    )


def _check_taken(conn: sa.Connection, t: _Taking, taken: Sequence[Any]) -> None:
    """Every chosen device was still free; record what the requests' params take of them."""
    if len(taken) != len(t.ids):
        raise LostRace(
            f"{len(t.ids) - len(taken)} of the chosen devices on {t.order.host} were taken meanwhile"
        )
    wanted = t.order.consumption
    if wanted:
        _record_consumption(
            conn, {i: wanted[n] for i, n in t.request_of.items() if n is not None and n in wanted}
        )


def _answer(conn: sa.Connection, t: _Taking, taken: Sequence[Any], ttl: timedelta) -> schemas.Allocation:
    """The allocation, built from what the take returned: no second read of it."""
    o, now = t.order, t.now
    consumer, project, host, request_of, type_names = (
        o.consumer,
        o.project,
        o.host,
        t.request_of,
        o.type_names,
    )
    names = dict(type_names or {})
    if not {r.type_id for r in taken} <= set(names):
        names = dict(
            conn.execute(
                sa.select(resource_types.c.id, resource_types.c.name).where(
                    resource_types.c.id.in_({r.type_id for r in taken})
                )
            ).all()
        )
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
    failpoint("claim.before_commit")
    return allocation


def _check_relatives(conn: sa.Connection, host_id: int, ids: Sequence[str], rows: Sequence[Any]) -> None:
    """A PF and its VFs (a GPU and its vGPU slots) exclude each other, even under races
    (SQLite; on PostgreSQL ``_TAKE_ALL_PG`` checks the same in its statement).

    Every parent row is locked whatever its state: a concurrent claim of the parent waits for
    this transaction and then sees this child held (and every claim holds its host's lock
    first, so claims on one host serialize anyway). ``rows`` are the claimed devices
    (address, parent) as the claim's UPDATE returned them.
    """
    parents = sorted({r.parent for r in rows if r.parent} | {r.pool for r in rows if r.pool})
    addresses = [r.address for r in rows]
    for r in conn.execute(
        _RELATIVES, {"host_id": host_id, "ids": list(ids), "parents": parents, "addresses": addresses}
    ):
        if r.address in parents and r.state in _HOLDING:
            raise LostRace(f"parent device {r.address} is in use")
        if (r.parent in addresses or r.pool in addresses) and r.state in _HOLDING:
            raise LostRace(f"child device {r.address} is in use")


def _check_lineage(parts: Sequence[Any], rows: Sequence[Any]) -> None:
    """No device taken while one above or below it, however deep, is held (a PF and a vGPU
    slot on one of its VFs), nor two such devices in one claim: the check above looks one
    level only. ``parts`` (:func:`partitions`, read after the take under the host's lock) hold
    every device with a parent or children, so their chains are whole."""
    links = parent_map(parts)
    taken = {r.address for r in rows}
    held = {p.address for p in parts if p.state in _HOLDING and p.address not in taken}
    for address in taken:
        for above in ancestors(address, links):
            if above in held or above in taken:
                raise LostRace(f"parent device {above} is in use")
    for address in held:
        for above in ancestors(address, links):
            if above in taken:
                raise LostRace(f"child device {address} is in use")


def _record_consumption(conn: sa.Connection, extra: Mapping[str, Mapping[str, int]]) -> None:
    """Each taken device's ``consumed``: its own consumes plus what its request's params take."""
    if not extra:
        return
    rows = conn.execute(
        sa.select(devices.c.id, devices.c.consumes).where(devices.c.id.in_(list(extra)))
    ).all()
    updates = []
    for r in rows:
        total = dict(r.consumes or {})
        for k, amount in extra[r.id].items():
            total[k] = total.get(k, 0) + amount
        updates.append({"b_id": r.id, "b_consumed": total})
    conn.execute(
        devices.update()
        .where(devices.c.id == sa.bindparam("b_id"))
        .values(consumed=sa.bindparam("b_consumed")),
        updates,
    )


def _check_pools(conn: sa.Connection, host_id: int, rows: Sequence[Any]) -> None:
    """The partitions just taken, with those already held, within their pools' counters and
    in one mode per pool, and no pool taken whole while a partition of it is held
    (scheduler/shares.py; as far as this claim changes them: :func:`overdrawn`); then what
    the host's pools can no longer give is counted again
    (a mode taken changes what the pool's other partitions count: ``recarve``).
    Under the host's lock (every claim on the host waits for this one), so what is read here
    cannot change before the commit."""
    # The pools of the partitions taken, and the taken devices that are pools themselves;
    # a claim of devices with neither pools nor a parent or child on the host stops here
    # without a statement. A parent or child taken keeps its relatives from claims: recarved.
    pools = {r.pool for r in rows if r.pool} | {r.address for r in rows if r.is_pool}
    kin = any(r.has_kin for r in rows)
    if not pools and not kin:
        return
    parts = partitions(conn, host_id)
    if kin:
        _check_lineage(parts, rows)
    members = [m for m in parts if m.pool in pools]
    if not members:
        if kin:
            recarve(conn, host_id, parts)
        return
    taken = {r.address for r in rows}
    holding = [m for m in members if m.state in _HOLDING]
    # Only what this claim makes worse is refused: a pool can be over its counters already
    # (held partitions that outlived a drop of their link's rate), which refuses no other claim.
    before = Pools.of(members, (m for m in holding if m.address not in taken))
    state = copy_pools(before)
    for m in holding:
        if m.address in taken:
            state.take(m, 1)
    for address in taken & set(state.capacity):
        state.held[address] += 1  # a pool taken whole (its own row is not a member)
    why = overdrawn(state, before)
    if why is not None:
        raise LostRace(why)
    recarve(conn, host_id, parts)


# ---------------------------------------------------------------- release and expiry


RELEASE_DETAIL_MAX = 1000  # the column's width


def release(
    conn: sa.Connection,
    consumer: str,
    *,
    now: datetime,
    actor: str,
    why: str = "released",
    expired_before: datetime | None = None,
    on_host: str | None = None,
    detail: str | None = None,
) -> bool:
    """Release the consumer's live allocation: its devices go to ``cleaning``; ``why`` and
    ``detail`` are kept on it (``release_reason``, ``release_detail``).

    Returns False when there was nothing live (a second release is harmless); raises 404 for a
    consumer that never held anything. With ``expired_before``, only a reservation that is
    still unconfirmed and expired is released (the sweeper's case). With ``on_host``, only an
    allocation on that host (a build that failed there may have been rescheduled elsewhere
    under the same consumer: that one stays), else a 409 that says where it is.
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
    if row is not None and on_host is not None:
        where = conn.execute(sa.select(hosts.c.name).where(hosts.c.id == row.host_id)).scalar_one()
        if where != on_host:
            raise errors.DevassignError(
                errors.INVALID_STATE,
                f"consumer {consumer!r} holds its devices on {where}, not {on_host}; nothing released",
            )
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
        .values(
            state=AllocationState.RELEASED.value,
            released_at=now,
            release_reason=why[:32],
            release_detail=None if detail is None else detail[:RELEASE_DETAIL_MAX],
        )
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
    _end_arq_bindings(conn, consumer, now)
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
    failpoint("expire.before_commit" if expired_before is not None else "release.before_commit")
    return True


def bound_through_arqs(conn: sa.Connection, consumer: str) -> bool:
    """Whether Nova holds ``consumer``'s devices through ARQs bound (or binding) to it; an
    ``Initial`` ARQ naming it is a bind in flight, whose claim may be made already."""
    live = cyborg_arqs.c.state.in_(
        [ArqState.INITIAL.value, ArqState.BIND_STARTED.value, ArqState.BOUND.value]
    )
    q = sa.select(cyborg_arqs.c.id).where(cyborg_arqs.c.instance_uuid == consumer, live).limit(1)
    return conn.execute(q).first() is not None


def _end_arq_bindings(conn: sa.Connection, consumer: str, now: datetime) -> None:
    """Nova takes a bound ARQ's attach handle for a device its instance holds (it attaches it
    again at a reboot): once the allocation ends, however it ends, the instance's ARQs are
    ``BindFailed`` and name no device. A bind still in flight also tells Nova (its event)."""
    mine = cyborg_arqs.c.instance_uuid == consumer
    unnamed = {
        "state": ArqState.BIND_FAILED.value,
        "device_id": None,
        "attach_handle_type": None,
        "attach_handle_info": None,
        "attach_handle_uuid": None,
        "updated_at": now,
    }
    started = cyborg_arqs.c.state == ArqState.BIND_STARTED.value
    bound = cyborg_arqs.c.state == ArqState.BOUND.value
    conn.execute(cyborg_arqs.update().where(mine, started).values(**unnamed, event="failed"))
    conn.execute(cyborg_arqs.update().where(mine, bound).values(**unnamed))


def expired_consumers(conn: sa.Connection, now: datetime) -> list[str]:
    rows = conn.execute(
        sa.select(allocations.c.consumer).where(
            allocations.c.released_at.is_(None),
            allocations.c.state == AllocationState.RESERVED.value,
            allocations.c.expires_at < now,
        )
    )
    return [r.consumer for r in rows]
