"""Moves: a consumer's allocation moving to another host (live or cold migration).

The consumer keeps its one live allocation (the partial unique index) while the target
devices are held by an internal allocation of their own, whose consumer is a reserved id
(:data:`MOVE_PREFIX`: no client can claim under it, since a client's consumer id starts with a
letter or digit). The target is claimed by the ordinary claim (``claims.claim`` with the
placer's ``ClaimOrder``) in the same transaction that checks the source and records the move.

Commit, in one transaction: release the source (its devices go to cleaning), re-point the
target allocation to the consumer, mark the move committed. Abort: release the target. A
target released by anything else (its reservation expired, its setup failed, a release) leaves
the move to :func:`settle`, which marks it aborted; a source released meanwhile makes
:func:`settle` release the target too. Every writer here locks the hosts involved in the order
of their names, then the allocations, like every other writer (``inventory.lock_host``).
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel

from devassign import errors, schemas
from devassign.domain import AllocationState, DeviceState
from devassign.scheduler.gang import host_value
from devassign.store.candidates import load_snapshot
from devassign.store.claims import ClaimOrder, LostRace, OverQuota, bound_through_arqs, release
from devassign.store.claims import claim as claim_devices
from devassign.store.db import ConcurrentChange
from devassign.store.events import aware, record
from devassign.store.inventory import lock_host
from devassign.store.quotas import move_quota_refusal
from devassign.store.schema import (
    GangId,
    allocation_items,
    allocations,
    devices,
    events,
    hosts,
    moves,
    resource_types,
)
from devassign.store.taint_marks import marked, without_setter

# The consumer id of a move's target allocation: never a valid client consumer id.
MOVE_PREFIX = "_move:"

PENDING, COMMITTED, ABORTED = "pending", "committed", "aborted"


def is_internal(consumer: str | None) -> bool:
    """Whether ``consumer`` is a move's target allocation rather than a client's consumer."""
    return bool(consumer) and str(consumer).startswith(MOVE_PREFIX)


def new_target_consumer() -> str:
    return MOVE_PREFIX + secrets.token_hex(8)


class MovePair(BaseModel):
    """One source device and the target device that takes its place (same named request)."""

    request: str | None
    source_id: str | None
    source_address: str | None
    source_type: str | None
    target_id: str | None
    target_address: str | None
    target_type: str | None


class Move(BaseModel):
    consumer: str
    project: str
    source_host: str
    target_host: str
    # pending, committed or aborted
    state: str
    # Why an aborted move ended: aborted, expired, setup_failed, released, source_released.
    reason: str | None
    device_map: list[MovePair]
    # Source address -> target address, for rewriting a guest's PCI addresses.
    addresses: dict[str, str]
    # The target allocation's state while pending: reserved (agent setting up) or assigned.
    target_state: str | None
    expires_at: datetime | None
    idempotency_key: str | None
    created_at: datetime
    finished_at: datetime | None


class MoveReplay(Exception):
    """A start that repeats one already made (same idempotency key and host)."""

    def __init__(self, move: Move) -> None:
        super().__init__(move.consumer)
        self.move = move


_SOURCE = sa.alias(hosts, "source_host")
_TARGET = sa.alias(hosts, "target_host")
_TARGET_ALLOC = sa.alias(allocations, "target_alloc")


def _move_query() -> sa.Select[Any]:
    return (
        sa.select(
            moves,
            _SOURCE.c.name.label("source_name"),
            _TARGET.c.name.label("target_name"),
            _TARGET_ALLOC.c.state.label("target_alloc_state"),
            _TARGET_ALLOC.c.expires_at.label("target_expires_at"),
            _TARGET_ALLOC.c.released_at.label("target_released_at"),
        )
        .join(_SOURCE, _SOURCE.c.id == moves.c.source_host_id)
        .join(_TARGET, _TARGET.c.id == moves.c.target_host_id)
        .join(_TARGET_ALLOC, _TARGET_ALLOC.c.id == moves.c.target_allocation_id)
    )


def _model(r: Any) -> Move:
    pairs = [MovePair(**p) for p in r.device_map or []]
    pending = r.state == PENDING
    return Move(
        consumer=r.consumer,
        project=r.project,
        source_host=r.source_name,
        target_host=r.target_name,
        state=r.state,
        reason=r.reason,
        device_map=pairs,
        addresses={
            p.source_address: p.target_address for p in pairs if p.source_address and p.target_address
        },
        target_state=r.target_alloc_state if pending or r.state == COMMITTED else None,
        expires_at=aware(r.target_expires_at)
        if pending and r.target_alloc_state == AllocationState.RESERVED.value
        else None,
        idempotency_key=r.idempotency_key,
        created_at=aware(r.created_at) or r.created_at,
        finished_at=aware(r.finished_at),
    )


def latest(conn: sa.Connection, consumer: str, *, lock: bool = False) -> Any:
    """The consumer's newest move row (joined with its hosts and target), or None."""
    q = _move_query().where(moves.c.consumer == consumer).order_by(moves.c.id.desc()).limit(1)
    if lock:
        q = q.with_for_update(of=moves)
    return conn.execute(q).first()


def list_moves(conn: sa.Connection, consumer: str, *, limit: int = 20) -> list[Move]:
    """The consumer's moves, newest first (a pending one is always the newest)."""
    q = _move_query().where(moves.c.consumer == consumer).order_by(moves.c.id.desc()).limit(limit)
    return [_model(r) for r in conn.execute(q)]


def _lock_hosts(conn: sa.Connection, host_ids: Iterable[int]) -> None:
    """Lock the hosts in the order of their names, the order a gang's claim takes them in
    (store/gangs.py): writers locking several hosts never deadlock one another."""
    rows = conn.execute(sa.select(hosts.c.id, hosts.c.name).where(hosts.c.id.in_(set(host_ids)))).all()
    for r in sorted(rows, key=lambda r: r.name):
        lock_host(conn, r.id)


def _live_source(conn: sa.Connection, consumer: str, *, lock: bool = False) -> Any:
    q = sa.select(allocations).where(allocations.c.consumer == consumer, allocations.c.released_at.is_(None))
    if lock:
        q = q.with_for_update()
    return conn.execute(q).first()


def replay_of(conn: sa.Connection, consumer: str, key: str | None, host: str) -> Move | None:
    """The move this start repeats (the consumer's newest move with the same key, whichever
    moves came after it), or None."""
    if key is None:
        return None
    q = _move_query().where(moves.c.consumer == consumer, moves.c.idempotency_key == key)
    row = conn.execute(q.order_by(moves.c.id.desc()).limit(1)).first()
    if row is None:
        return None
    if row.target_name != host:
        raise errors.DevassignError(
            errors.IDEMPOTENCY_KEY_REUSED,
            f"idempotency_key {key!r} was used for the move of {consumer} to {row.target_name}, "
            f"not {host}; use a new key for a new move",
        )
    # The same move only while it still concerns the consumer's allocation: the one it moves
    # (pending, aborted) or the one it made (committed). A consumer released and claimed again
    # since is not moved by that old move.
    live = conn.execute(
        sa.select(allocations.c.id).where(
            allocations.c.consumer == consumer, allocations.c.released_at.is_(None)
        )
    ).scalar_one_or_none()
    ours = row.target_allocation_id if row.state == COMMITTED else row.source_allocation_id
    if live is None or live != ours:
        raise errors.DevassignError(
            errors.IDEMPOTENCY_KEY_REUSED,
            f"idempotency_key {key!r} was used for an earlier move of {consumer} to {row.target_name} "
            f"({row.state}), which does not concern its allocation now; use a new key for a new move",
        )
    return _model(row)


def source_for_move(conn: sa.Connection, consumer: str, target: str) -> tuple[dict[str, Any], str, int, bool]:
    """(the stored request document, its project, the allocation's id, whether ``target`` is a
    known host) of the allocation to move; the refusals a move start answers before anything
    is claimed. An unknown target is the caller's to answer: members must not learn from it
    which host names exist. The start moves that allocation only (``start``'s ``source_id``)."""
    row = conn.execute(
        sa.select(allocations.c.id, allocations.c.request, allocations.c.project, hosts.c.name)
        .join(hosts, hosts.c.id == allocations.c.host_id)
        .where(allocations.c.consumer == consumer, allocations.c.released_at.is_(None))
    ).first()
    if row is None:
        raise errors.DevassignError(
            errors.INVALID_STATE, f"consumer {consumer!r} holds no live allocation: there is nothing to move"
        )
    if row.name == target:
        raise _already_on(consumer, target)
    _refuse_pending(conn, consumer)
    _refuse_nova_bound(conn, consumer)
    known = conn.execute(sa.select(hosts.c.id).where(hosts.c.name == target)).first() is not None
    return dict(row.request), str(row.project), int(row.id), known


def _already_on(consumer: str, host: str) -> errors.DevassignError:
    return errors.DevassignError(
        errors.INVALID_REQUEST, f"consumer {consumer!r} is already on {host}; name another host to move to"
    )


def _refuse_nova_bound(conn: sa.Connection, consumer: str) -> None:
    """A Nova instance's devices stay where its guest runs: Nova moves the instance (and binds
    new ARQs there); a move here would hand Nova's bound ARQs devices it never attached."""
    if bound_through_arqs(conn, consumer):
        raise errors.DevassignError(
            errors.INVALID_STATE,
            f"the devices of {consumer!r} are bound to a Nova instance through the accelerator API: "
            "Nova moves its instances (evacuate, or rebuild elsewhere), not a devassign move",
        )


def _refuse_pending(conn: sa.Connection, consumer: str) -> None:
    row = conn.execute(
        sa.select(moves.c.id, _TARGET.c.name)
        .join(_TARGET, _TARGET.c.id == moves.c.target_host_id)
        .where(moves.c.consumer == consumer, moves.c.finished_at.is_(None))
    ).first()
    if row is not None:
        raise errors.DevassignError(
            errors.MOVE_PENDING,
            f"consumer {consumer!r} is already moving to {row.name}; commit or abort that move first "
            f"(POST /v1/allocations/{consumer}/moves/commit or /abort)",
        )


def _items(conn: sa.Connection, allocation_id: int) -> list[Any]:
    return list(
        conn.execute(
            sa.select(
                allocation_items.c.request_name,
                devices.c.id,
                devices.c.address,
                resource_types.c.name.label("type"),
            )
            .join(devices, devices.c.id == allocation_items.c.device_id)
            .join(resource_types, resource_types.c.id == devices.c.type_id)
            .where(allocation_items.c.allocation_id == allocation_id)
            .order_by(devices.c.address)
        )
    )


def device_map(source: list[Any], target: list[Any]) -> list[dict[str, Any]]:
    """Pair the source's devices with the target's, per named request, in address order; a
    request with more devices on one side (IOMMU group mates) pairs the rest with nothing."""
    by_name: dict[str | None, tuple[list[Any], list[Any]]] = defaultdict(lambda: ([], []))
    for r in source:
        by_name[r.request_name][0].append(r)
    for r in target:
        by_name[r.request_name][1].append(r)
    out = []
    for name in sorted(by_name, key=lambda n: n or ""):
        src, dst = by_name[name]
        for i in range(max(len(src), len(dst))):
            s = src[i] if i < len(src) else None
            t = dst[i] if i < len(dst) else None
            out.append(
                {
                    "request": name,
                    "source_id": s.id if s else None,
                    "source_address": s.address if s else None,
                    "source_type": s.type if s else None,
                    "target_id": t.id if t else None,
                    "target_address": t.address if t else None,
                    "target_type": t.type if t else None,
                }
            )
    return out


def start(
    conn: sa.Connection,
    order: ClaimOrder,
    *,
    consumer: str,
    key: str | None,
    now: datetime,
    ttl: timedelta,
    up_since: datetime,
    source_id: int | None = None,
) -> tuple[schemas.Allocation, Move]:
    """Claim the target devices (``order``, for the move's internal consumer on the target
    host) and record the move, in this one transaction; raises ``LostRace`` like a
    claim, :class:`MoveReplay` for a start already made.

    ``source_id``: the allocation the move was placed for (its request chose the target's
    devices); released and claimed again since, the consumer's allocation is another, and
    this start is refused."""
    source = _live_source(conn, consumer)
    target_id = conn.execute(sa.select(hosts.c.id).where(hosts.c.name == order.host)).scalar_one_or_none()
    if source is None:
        raise errors.DevassignError(
            errors.INVALID_STATE, f"consumer {consumer!r} holds no live allocation: there is nothing to move"
        )
    if target_id is None:
        raise LostRace(f"host {order.host} was deleted meanwhile")
    _lock_hosts(conn, [source.host_id, target_id])
    seen, source = source.id, _live_source(conn, consumer, lock=True)
    if source is None or source.id != seen:
        raise ConcurrentChange(f"the allocation of {consumer} was released meanwhile")
    if source_id is not None and source.id != source_id:
        raise errors.DevassignError(
            errors.INVALID_STATE,
            f"the allocation of {consumer} was released and claimed again while its move was "
            "placed; start the move again",
        )
    if source.host_id == target_id:
        raise _already_on(consumer, order.host)
    if key is not None:
        replay = replay_of(conn, consumer, key, order.host)
        if replay is not None:
            raise MoveReplay(replay)
    _refuse_pending(conn, consumer)
    _refuse_nova_bound(conn, consumer)
    _keep_gang_layout(conn, source, target_id, order.host, consumer)
    allocation, created = claim_devices(conn, order, now=now, ttl=ttl, up_since=up_since)
    if not created:  # a fresh internal consumer is never a replay
        raise ConcurrentChange(f"the move target {order.consumer} exists already")
    target_alloc = conn.execute(
        sa.select(allocations.c.id).where(
            allocations.c.consumer == order.consumer, allocations.c.released_at.is_(None)
        )
    ).scalar_one()
    refused = move_quota_refusal(conn, source.project, source.id, target_alloc)
    if refused is not None:  # planned on a use that another claim changed: plan again
        raise OverQuota(refused)
    pairs = device_map(_items(conn, source.id), _items(conn, target_alloc))
    conn.execute(
        moves.insert().values(
            consumer=consumer,
            project=source.project,
            target_consumer=order.consumer,
            source_allocation_id=source.id,
            target_allocation_id=target_alloc,
            source_host_id=source.host_id,
            target_host_id=target_id,
            state=PENDING,
            device_map=pairs,
            idempotency_key=key,
            created_at=now,
        )
    )
    source_host = conn.execute(sa.select(hosts.c.name).where(hosts.c.id == source.host_id)).scalar_one()
    record(
        conn,
        at=now,
        actor=order.actor,
        action="move_started",
        host=order.host,
        consumer=consumer,
        message=f"{consumer} is moving from {source_host} to {order.host}: {len(allocation.devices)} "
        f"device{'' if len(allocation.devices) == 1 else 's'} held there",
        detail={"source_host": source_host, "target": order.consumer, "device_map": pairs},
    )
    row = latest(conn, consumer)
    return allocation, _model(row)


def _keep_gang_layout(conn: sa.Connection, source: Any, target_id: int, target: str, consumer: str) -> None:
    """A gang's instance moves only where the gang's layout still holds: at most
    ``max_per_host`` instances a host (counting the other instances' pending moves there), and
    the host's value of ``same`` the one the other instances' hosts share. In the start's
    transaction, after both hosts are locked: two instances moving to one host at once are
    counted one after the other."""
    doc = source.request or {}
    layout, gang = doc.get("gang_layout"), doc.get("gang")
    if not layout or not gang:
        return
    others = conn.execute(
        sa.select(allocations.c.consumer, allocations.c.host_id).where(
            GangId() == gang,
            allocations.c.released_at.is_(None),
            allocations.c.project == source.project,
            allocations.c.id != source.id,
        )
    ).all()
    if not others:
        return
    where: dict[str, set[int]] = {o.consumer: {o.host_id} for o in others}
    for m in conn.execute(
        sa.select(moves.c.consumer, moves.c.target_host_id).where(
            moves.c.consumer.in_(list(where)), moves.c.state == PENDING
        )
    ):
        where[m.consumer].add(m.target_host_id)
    cap = layout.get("max_per_host")
    there = sum(1 for hosts_of in where.values() if target_id in hosts_of)
    if cap is not None and there + 1 > cap:
        # Names no host: a member reads it too (it named the target itself).
        raise errors.DevassignError(
            errors.GANG_LAYOUT,
            f"moving {consumer} there would break its gang's layout: gang {gang} allows at most "
            f"{cap} instance{'' if cap == 1 else 's'} a host, and {there} of its other instances "
            f"{'is' if there == 1 else 'are'} on that host or moving there",
        )
    same = layout.get("same")
    if same is None:
        return
    attribute = str(same).removeprefix("attributes.")
    staying = sorted({o.host_id for o in others})
    # Only the devices' attributes are read: whether a host is up does not matter here.
    # Every one of these hosts exists (they hold live allocations, or are locked): one view each,
    # in this order.
    ids = sorted({target_id, *staying})
    views = load_snapshot(conn, ids, up_since=datetime.min.replace(tzinfo=UTC)).hosts
    by_id = dict(zip(ids, views, strict=True))
    shared: dict[str, Any] = {}
    for h in staying:
        known, value = host_value(by_id[h], attribute)
        if known:
            shared[repr(value)] = value
    known, value = host_value(by_id[target_id], attribute)
    if shared and (not known or repr(value) not in shared):
        gang_has = " or ".join(f"{attribute}={v}" for v in shared.values())
        has = f"{attribute}={value}" if known else f"no one {attribute}"
        raise errors.DevassignError(
            errors.GANG_LAYOUT,
            f"moving {consumer} there would break its gang's layout: the other instances of gang "
            f"{gang} share {gang_has}, and that host has {has}",
        )


def _pending_locked(conn: sa.Connection, consumer: str) -> Any:
    """The consumer's newest move, its hosts locked (in id order) and then its row."""
    row = latest(conn, consumer)
    if row is None:
        raise errors.DevassignError(
            errors.INVALID_STATE,
            f"consumer {consumer!r} has no move to finish; "
            f"start one with POST /v1/allocations/{consumer}/moves",
        )
    _lock_hosts(conn, [row.source_host_id, row.target_host_id])
    locked = latest(conn, consumer, lock=True)
    if locked is None or locked.id != row.id:
        raise ConcurrentChange(f"a move of {consumer} started meanwhile")
    return locked


def commit(conn: sa.Connection, consumer: str, *, now: datetime, actor: str) -> tuple[Move, bool]:
    """The target becomes the consumer's allocation, the source is released (cleaning); one
    transaction. Returns (move, whether this call committed it: False for a repeat)."""
    row = _pending_locked(conn, consumer)
    if row.state == COMMITTED:
        return _model(row), False
    if row.state == ABORTED:
        raise errors.DevassignError(
            errors.INVALID_STATE,
            f"the move of {consumer} to {row.target_name} was aborted ({row.reason}); "
            "start a new move to move it",
        )
    if row.target_released_at is not None:
        raise errors.DevassignError(
            errors.INVALID_STATE,
            f"the devices held on {row.target_name} for {consumer} were released before the commit; "
            "start a new move",
        )
    source = conn.execute(
        sa.select(allocations.c.request, allocations.c.idempotency_key, allocations.c.released_at).where(
            allocations.c.id == row.source_allocation_id
        )
    ).one()
    if source.released_at is not None:
        raise errors.DevassignError(
            errors.INVALID_STATE,
            f"the allocation of {consumer} was released during its move; nothing to commit",
        )
    _refuse_unready_target(conn, row)
    release(conn, consumer, now=now, actor=actor, why="moved")
    conn.execute(
        allocations.update()
        .where(allocations.c.id == row.target_allocation_id, allocations.c.released_at.is_(None))
        # Every target device is set up (_refuse_unready_target): confirmed, it never expires.
        .values(
            consumer=consumer,
            request=source.request,
            idempotency_key=source.idempotency_key,
            state=AllocationState.ASSIGNED.value,
            expires_at=None,
        )
    )
    conn.execute(moves.update().where(moves.c.id == row.id).values(state=COMMITTED, finished_at=now))
    record(
        conn,
        at=now,
        actor=actor,
        action="move_committed",
        host=row.target_name,
        consumer=consumer,
        message=f"{consumer} moved from {row.source_name} to {row.target_name}; "
        f"its devices on {row.source_name} go to cleaning",
        detail={"source_host": row.source_name, "target": row.target_consumer},
    )
    return _model(latest(conn, consumer)), True


def _refuse_unready_target(conn: sa.Connection, row: Any) -> None:
    """Commit releases the source at once, so the target must already work: every target device
    set up (assigned). Committing onto reserved devices would leave the consumer holding devices
    whose setup may still fail or lapse, with its old devices already in cleaning; committing
    onto drained ones would land it where the operator is emptying the host."""
    drained = conn.execute(
        sa.select(devices.c.taint).where(
            devices.c.allocation_id == row.target_allocation_id, devices.c.taint.startswith(marked("Drain"))
        )
    ).first()
    if drained is not None:
        raise errors.DevassignError(
            errors.INVALID_STATE,
            f"the devices held on {row.target_name} for {row.consumer} are being drained "
            f"({without_setter(drained.taint)}); abort the move and move elsewhere",
        )
    waiting = conn.execute(
        sa.select(devices.c.state, sa.func.count())
        .where(
            devices.c.allocation_id == row.target_allocation_id, devices.c.state != DeviceState.ASSIGNED.value
        )
        .group_by(devices.c.state)
        .order_by(devices.c.state)
    ).all()
    if waiting:
        states = ", ".join(f"{n} {state}" for state, n in waiting)
        raise errors.DevassignError(
            errors.INVALID_STATE,
            f"the devices held on {row.target_name} for {row.consumer} are not all set up yet ({states}); "
            "commit once the agent there has set them up, or abort the move",
        )


def abort(
    conn: sa.Connection, consumer: str, *, now: datetime, actor: str, reason: str = "aborted"
) -> tuple[Move, bool]:
    """Release the target devices (cleaning); the source stays. Returns (move, whether this
    call aborted it: False for a repeat)."""
    row = _pending_locked(conn, consumer)
    if row.state == ABORTED:
        return _model(row), False
    if row.state == COMMITTED:
        raise errors.DevassignError(
            errors.INVALID_STATE,
            f"the move of {consumer} to {row.target_name} was committed; move it back with a new move",
        )
    _finish_aborted(conn, row, now=now, actor=actor, reason=reason)
    return _model(latest(conn, consumer)), True


def _finish_aborted(conn: sa.Connection, row: Any, *, now: datetime, actor: str, reason: str) -> None:
    """Release the move's target if still live and mark the move aborted (hosts locked)."""
    if row.target_released_at is None:
        release(conn, row.target_consumer, now=now, actor=actor, why="released")
    conn.execute(
        moves.update()
        .where(moves.c.id == row.id, moves.c.finished_at.is_(None))
        .values(state=ABORTED, reason=reason, finished_at=now)
    )
    record(
        conn,
        at=now,
        actor=actor,
        action="move_aborted",
        host=row.target_name,
        consumer=row.consumer,
        message=f"the move of {row.consumer} to {row.target_name} was aborted ({reason}); "
        + (
            f"it stays on {row.source_name}"
            if _live(conn, row.source_allocation_id)
            else f"its allocation on {row.source_name} was released too"
        ),
        detail={"source_host": row.source_name, "target": row.target_consumer, "reason": reason},
    )


def _live(conn: sa.Connection, allocation_id: int) -> bool:
    return (
        conn.execute(
            sa.select(allocations.c.id).where(
                allocations.c.id == allocation_id, allocations.c.released_at.is_(None)
            )
        ).first()
        is not None
    )


def _why_released(conn: sa.Connection, target_consumer: str) -> str:
    action = conn.execute(
        sa.select(events.c.action)
        .where(events.c.consumer == target_consumer, events.c.action.like("allocation_%"))
        .order_by(events.c.id.desc())
        .limit(1)
    ).scalar_one_or_none()
    return str(action).removeprefix("allocation_") if action else "released"


def unsettled(conn: sa.Connection, consumer: str | None = None) -> list[str]:
    """Consumers with a pending move whose target or source is no longer live."""
    src = sa.alias(allocations, "src")
    q = (
        sa.select(moves.c.consumer)
        .join(_TARGET_ALLOC, _TARGET_ALLOC.c.id == moves.c.target_allocation_id)
        .join(src, src.c.id == moves.c.source_allocation_id)
        .where(
            moves.c.finished_at.is_(None),
            sa.or_(_TARGET_ALLOC.c.released_at.is_not(None), src.c.released_at.is_not(None)),
        )
    )
    if consumer is not None:
        q = q.where(moves.c.consumer == consumer)
    return [r.consumer for r in conn.execute(q)]


def settle(conn: sa.Connection, consumer: str, *, now: datetime, actor: str = "server") -> bool:
    """Finish a pending move that can no longer be committed: its target was released
    (expired, failed setup, released) or its source was (then its target is released too).
    Returns whether it finished one."""
    row = latest(conn, consumer)
    if row is None or row.state != PENDING:
        return False
    _lock_hosts(conn, [row.source_host_id, row.target_host_id])
    row = latest(conn, consumer, lock=True)
    if row is None or row.state != PENDING:
        return False
    if row.target_released_at is not None:
        reason = _why_released(conn, row.target_consumer)
    elif not _live(conn, row.source_allocation_id):
        reason = "source_released"
    else:
        return False
    _finish_aborted(conn, row, now=now, actor=actor, reason=reason)
    return True


def target_consumers(conn: sa.Connection, consumers: list[str]) -> dict[str, str]:
    """For internal move consumers: the client consumer each one is moving."""
    if not consumers:
        return {}
    rows = conn.execute(
        sa.select(moves.c.target_consumer, moves.c.consumer).where(moves.c.target_consumer.in_(consumers))
    )
    return {r.target_consumer: r.consumer for r in rows}
