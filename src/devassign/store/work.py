"""The agent's side of the device lifecycle: what to set up or clean, and what came of it.

The server never connects to hosts: an agent asks for its work (devices ``reserved`` need a
setup, devices ``cleaning`` a cleanup) and reports results, which move devices on:

    reserved --setup ok--> assigned          reserved --setup failed--> (whole allocation) cleaning
    cleaning --cleanup ok--> available       cleaning --cleanup failed--> quarantined
    (one-time-use types: cleaning --cleanup ok--> quarantined until an operator clears it)

A result that no longer matches the device's state (released meanwhile, reported twice by an
agent that restarted) is ignored and said so: every transition is a conditional update.

Facts (what a setup learned, handed back with the cleanup) are kept only from a setup result
of this host's agent for the holding it set up, and are small. Clearing a quarantined device
drops them (they are kept in the event) and marks the device, so its next cleanup works from
what the host shows now: a poisoned fact must not fail every cleanup after every clear.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from devassign import errors, schemas
from devassign.domain import DeviceState, cut_too_deep, instance_tag
from devassign.failpoints import after_commit, failpoint
from devassign.scheduler.shares import Pools
from devassign.scheduler.view import HOLDING_STATES
from devassign.store.claims import release
from devassign.store.events import aware, record
from devassign.store.hosts import device_model, device_query
from devassign.store.inherited_health import stored_unhealthy_above
from devassign.store.inventory import (
    PENDING_TYPE,
    SHARE_COLUMNS,
    confirm_if_set_up,
    consumer_of,
    health_event,
    lock_host,
    recount,
)
from devassign.store.schema import allocation_items, allocations, devices, hosts, moves, resource_types

# Kept in ``devices.facts`` from a clear until the device is clean; no posted fact has a ``:``.
CLEARED = "devassign:cleared"


def _clears(facts: dict[str, Any] | None) -> int:
    """How many times an operator cleared the device since its holding began (the marker)."""
    marker = (facts or {}).get(CLEARED)
    return marker if isinstance(marker, int) and not isinstance(marker, bool) else int(bool(marker))


def ticket(allocation_id: int | None, facts: dict[str, Any] | None) -> str:
    """Which round of work on a device a work item belongs to: the holding it sets up or
    cleans after (a claim's allocation), and how many clears since. A result names the ticket
    of its item; one of an earlier round (resent after its answer was lost, late after the
    device was claimed again, cleared or cleaned) is ignored."""
    return f"{allocation_id or 0}.{_clears(facts)}"


# Kept in ``devices.facts`` once a setup result for the holding came: the device was set up
# (or tried), so its cleanup must undo a setup (``type_changed``).
SET_UP = "devassign:set_up"


def _recorded(facts: dict[str, Any] | None) -> dict[str, Any]:
    """The facts an agent posted, without the server's own markers."""
    return {k: v for k, v in (facts or {}).items() if not k.startswith("devassign:")}


def _host_id(
    conn: sa.Connection, host: str, instance: str | None, *, lock: bool = False, fence: datetime | None = None
) -> int:
    """The host's id, for the agent process ``instance`` (its header) that asks; with ``lock``
    the host row is locked by the same read (``lock_host``), so the instance checked is the one
    on record when the results apply, not one a report replaced in between.

    Only the process whose report the server took may fetch or answer the host's work: a
    machine refused as the host (another host id: one agent.toml copied to two machines), or a
    second process while the first is live, would otherwise run the host's setups and
    cleanups on its own devices and report the real host's devices clean. A restarted agent
    reports first (its report takes the host over), then works. A call without the header
    (``fence``: an agent token's) is refused while the recorded process was seen after ``fence``.
    """
    q = sa.select(hosts.c.id, hosts.c.agent_instance, hosts.c.agent_seen_at).where(hosts.c.name == host)
    if lock:
        q = q.with_for_update(key_share=True)  # as lock_host
    row = conn.execute(q).first()
    if row is None:
        raise errors.DevassignError(errors.HOST_NOT_FOUND, f"no host {host!r}")
    # Also when none is on record (a host reported by `agent run --once` or by a batch, or just
    # renamed): a process whose report the server never took is not the host's agent.
    # A call without the header, for a host whose agent sends one: refused whether or not
    # that process is live, or a machine with a copy of the token (not the state file) would
    # wait for its silence and then run, and report, the host's work.
    seen = aware(row.agent_seen_at)
    if instance is None and fence is not None and row.agent_instance:
        live = seen is not None and seen > fence
        raise errors.DevassignError(
            errors.AGENT_CONFLICT,
            f"agent instance {instance_tag(row.agent_instance)} holds host {host!r}"
            + (" and was seen moments ago" if live else "")
            + f": a call without the {schemas.AGENT_INSTANCE_HEADER} header of the agent process "
            "whose report the server took gets no work (a restarted agent reports first)",
            retry_after=10,
        )
    if instance is not None and row.agent_instance != instance:
        taken = "another instance sent its last report" if row.agent_instance else "none yet"
        raise errors.DevassignError(
            errors.AGENT_CONFLICT,
            f"agent instance {instance_tag(instance)} is not the agent the server took for host {host!r} "
            f"({taken}): no work for it. A restarted "
            "agent sends a full report first; a machine whose reports are refused (another "
            "host id, another live agent) must not touch this host's devices",
            retry_after=10,
        )
    return int(row.id)


def _params_for(request_doc: dict[str, Any], request_name: str | None) -> dict[str, Any]:
    """The params the claim stored for this device's request, as its type's declaration
    checked them at the claim: a declaration written later applies to later claims, never to
    a held device's next setup (a VF's VLAN dropped from its setup would put the guest on the
    untagged network). Never a fact name, whatever an older row holds."""
    for r in request_doc.get("requests", []) if request_doc else []:
        if r.get("name") == request_name:
            return {k: v for k, v in (r.get("params") or {}).items() if k not in schemas.FACT_NAMES}
    return {}


def work_for_host(
    conn: sa.Connection, host: str, instance: str | None = None, *, fence: datetime | None = None
) -> schemas.WorkList:
    hid = _host_id(conn, host, instance, fence=fence)
    q = (
        device_query()
        .add_columns(
            resource_types.c.handler,
            resource_types.c.config.label("type_config"),
            allocations.c.request.label("request_doc"),
            allocations.c.created_at.label("claimed_at"),
            resource_types.c.config_changed_at,
            allocation_items.c.request_name,
        )
        .outerjoin(
            allocation_items,
            sa.and_(
                allocation_items.c.device_id == devices.c.id,
                allocation_items.c.allocation_id == devices.c.allocation_id,
            ),
        )
        .where(
            devices.c.host_id == hid,
            devices.c.state.in_([DeviceState.RESERVED.value, DeviceState.CLEANING.value]),
        )
        .order_by(devices.c.address)
    )
    rows = list(conn.execute(q))
    by_alloc: dict[int, list[str]] = {}
    for r in rows:
        if r.allocation_id is not None:
            by_alloc.setdefault(r.allocation_id, []).append(r.address)
    items = []
    for r in rows:
        mates = [a for a in by_alloc.get(r.allocation_id, []) if a != r.address]
        items.append(
            schemas.WorkItem(
                action="setup" if r.state == DeviceState.RESERVED.value else "cleanup",
                device=device_model(r),
                handler=r.handler,
                config=cut_too_deep(r.type_config or {}),
                params=_params_for(r.request_doc, r.request_name),
                facts=_recorded(r.facts),
                companions=mates,
                cleared=_clears(r.facts) > 0,
                ticket=ticket(r.allocation_id, r.facts),
                type_changed=(
                    r.state == DeviceState.CLEANING.value
                    and bool((r.facts or {}).get(SET_UP))
                    and r.claimed_at is not None
                    and r.config_changed_at is not None
                    and r.config_changed_at > r.claimed_at
                ),
            )
        )
    return schemas.WorkList(host=host, items=items)


def apply_results(
    conn: sa.Connection,
    host: str,
    results: list[schemas.WorkResult],
    *,
    now: datetime,
    actor: str,
    instance: str | None = None,
    fence: datetime | None = None,
) -> list[schemas.WorkOutcome]:
    hid = _host_id(conn, host, instance, lock=True, fence=fence)
    out = []
    for res in results:
        row = conn.execute(
            sa.select(
                devices,
                resource_types.c.name.label("type_name"),
                resource_types.c.config.label("type_config"),
            )
            .join(resource_types, resource_types.c.id == devices.c.type_id)
            .where(devices.c.id == res.device_id, devices.c.host_id == hid)
            .with_for_update(of=devices)
        ).first()
        if row is None:
            out.append(
                schemas.WorkOutcome(
                    device_id=res.device_id, applied=False, state=None, note="no such device on this host"
                )
            )
            continue
        out.append(_apply_one(conn, hid, host, row, res, now=now, actor=actor))
    recount(conn, hid)
    failpoint("work.before_commit")
    after_commit(conn, "work.after_commit")
    return out


def _facts_welcome(row: Any, res: schemas.WorkResult, state: DeviceState, consumer: str | None) -> bool:
    """Whether a result's facts are this device's setup's: a setup result for the holding it
    set up, while reserved (or cleaning, released since, when the result names the holder);
    never after a clear, and never from a cleanup."""
    if res.action != "setup" or row.allocation_id is None or (row.facts or {}).get(CLEARED):
        return False
    if state is DeviceState.RESERVED:
        return True
    return state is DeviceState.CLEANING and res.consumer is not None and res.consumer == consumer


def _set_state(
    conn: sa.Connection, device_id: str, expect: DeviceState, now: datetime, **values: Any
) -> bool:
    moved = conn.execute(
        devices.update()
        .where(devices.c.id == device_id, devices.c.state == expect.value)
        .values(state_changed_at=now, updated_at=now, **values)
    ).rowcount
    return bool(moved == 1)


def _apply_one(
    conn: sa.Connection, hid: int, host: str, row: Any, res: schemas.WorkResult, *, now: datetime, actor: str
) -> schemas.WorkOutcome:
    state = DeviceState(row.state)
    consumer = (
        conn.execute(
            sa.select(allocations.c.consumer).where(allocations.c.id == row.allocation_id)
        ).scalar_one_or_none()
        if row.allocation_id is not None
        else None
    )
    ev = {
        "at": now,
        "actor": actor,
        "host": host,
        "device": row.address,
        "device_id": row.id,
        "type": row.type_name,
        "consumer": consumer,
    }

    def outcome(applied: bool, new: DeviceState | None, note: str) -> schemas.WorkOutcome:
        return schemas.WorkOutcome(device_id=row.id, applied=applied, state=new, note=note)

    if res.ticket is not None and res.ticket != ticket(row.allocation_id, row.facts):
        # An earlier round's: resent after its answer was lost, or late after the device was
        # claimed again, released, cleared or cleaned since the agent fetched the item.
        return outcome(
            False, state, f"result of an earlier round of work on this device ({res.ticket}): ignored"
        )
    if res.consumer is not None and res.consumer != consumer:
        # The device moved on to another holder since the agent fetched this work item.
        return outcome(
            False, state, f"result for {res.consumer}, but the device is now held by {consumer}: ignored"
        )

    if _facts_welcome(row, res, state, consumer):
        # Keep what the setup learned even if the device was released meanwhile: the cleanup needs it.
        merged = {**_recorded(row.facts), **res.facts}
        if schemas.work_facts_problem(merged) is not None:
            merged = _recorded(row.facts)
        marked = {**merged, SET_UP: True, **_kept(row.facts)}
        conn.execute(devices.update().where(devices.c.id == row.id).values(facts=marked))

    if res.action == "setup":
        if state is not DeviceState.RESERVED:
            return outcome(False, state, f"device is {state.value}, not reserved: setup result ignored")
        if res.ok:
            _set_state(conn, row.id, DeviceState.RESERVED, now, state=DeviceState.ASSIGNED.value)
            record(
                conn, action="device_assigned", message=f"{host} {row.address} set up for {consumer}", **ev
            )
            confirm_if_set_up(conn, row.allocation_id)
            return outcome(True, DeviceState.ASSIGNED, "assigned")
        record(
            conn,
            action="device_setup_failed",
            message=f"{host} {row.address} setup failed: {res.error or 'no reason given'}",
            detail={"error": res.error},
            **ev,
        )
        if consumer is not None:
            told = f"setup of {row.address} failed: {res.error or 'no reason given'}"
            release(conn, consumer, now=now, actor=actor, why="setup_failed", detail=told)
        return outcome(
            True, DeviceState.CLEANING, "setup failed: the allocation is released, its devices go to cleaning"
        )

    # cleanup
    if state is not DeviceState.CLEANING:
        return outcome(False, state, f"device is {state.value}, not cleaning: cleanup result ignored")
    config = row.type_config or {}
    if not res.ok:
        reason = f"cleanup failed: {res.error or 'no reason given'}"
        _set_state(
            conn,
            row.id,
            DeviceState.CLEANING,
            now,
            state=DeviceState.QUARANTINED.value,
            quarantine_reason=reason,
        )
        record(
            conn,
            action="device_quarantined",
            message=f"{host} {row.address} quarantined: {reason}",
            detail={"error": res.error},
            **ev,
        )
        return outcome(True, DeviceState.QUARANTINED, reason)
    if config.get("one_time_use"):
        reason = "one_time_use: an operator must clear it before reuse"
        _set_state(
            conn,
            row.id,
            DeviceState.CLEANING,
            now,
            state=DeviceState.QUARANTINED.value,
            quarantine_reason=reason,
            allocation_id=None,
            facts=None,
        )
        record(conn, action="device_quarantined", message=f"{host} {row.address} cleaned; {reason}", **ev)
        return outcome(True, DeviceState.QUARANTINED, reason)
    # The agent checks the device's health right after the cleanup: a device that fails it (a
    # GPU whose config space reads 0xFF after its reset) is unhealthy, never available.
    healthy = row.healthy if (res.health_recovering and not res.healthy) else res.healthy
    # A slot of a GPU that fails its checks is unhealthy with it, whatever its own check says.
    above = stored_unhealthy_above(conn, hid, row) if healthy else None
    health: dict[str, Any] = {}
    if above is not None:
        healthy = False
        health = {"healthy": False, "health_reason": above}
    elif healthy != row.healthy:
        why = res.health_reason or "the health check after its cleanup failed"
        health = {"healthy": healthy, "health_reason": None if healthy else why}
    new = DeviceState.AVAILABLE if healthy else DeviceState.UNHEALTHY
    retyped = _waiting_type(conn, row)
    _set_state(
        conn,
        row.id,
        DeviceState.CLEANING,
        now,
        state=new.value,
        allocation_id=None,
        facts=None,
        consumed=None,
        quarantine_reason=None,
        # A cleanup its check finds unfinished: an operator's clear cleans it again (_clear_health).
        prior_state=None if (healthy or above) else DeviceState.CLEANING.value,
        **health,
        **({"type_id": retyped[0]} if retyped else {}),
    )
    now_type = f"; its type is now {retyped[1]}, as its host reports it" if retyped else ""
    record(
        conn, action="device_cleaned", message=f"{host} {row.address} cleaned: {new.value}{now_type}", **ev
    )
    if health:
        base = {"at": now, "actor": actor, "host": host}
        why = health["health_reason"] or "its check after the cleanup passes"
        record(
            conn,
            **health_event(
                base, row.id, row.address, row.type_name, None, healthy=healthy, reason=why, state=new
            ),
        )
        # The next report is applied in full, not skipped as unchanged: it carries the health.
        conn.execute(hosts.update().where(hosts.c.id == hid).values(report_digest=None))
    return outcome(True, new, "cleaned" if healthy else f"cleaned, but unhealthy: {res.health_reason}")


def _waiting_type(conn: sa.Connection, row: Any) -> tuple[int, str] | None:
    """The type the host reported the device as while it was held (inventory.PENDING_TYPE, by
    name), applied as the device is freed: (id, name), or None (none waits, or it is gone)."""
    waiting = (row.facts or {}).get(PENDING_TYPE)
    if not isinstance(waiting, str):
        return None
    found = conn.execute(sa.select(resource_types.c.id).where(resource_types.c.name == waiting)).scalar()
    return (found, waiting) if found is not None and found != row.type_id else None


def _kept(facts: dict[str, Any] | None) -> dict[str, Any]:
    """The markers a rewrite of a device's facts carries over (a setup result's facts, a
    clear's fresh count): the type that waits for the device to be free."""
    return {PENDING_TYPE: facts[PENDING_TYPE]} if facts and PENDING_TYPE in facts else {}


def clear_device(
    conn: sa.Connection, device_id: str, reason: str, *, now: datetime, actor: str
) -> schemas.Device:
    """An operator clears a quarantined device, or one whose health check failed.

    After a failed cleanup it goes back to ``cleaning`` (the cleanup runs again: a device is
    never available without a finished cleanup); a one-time-use device the operator scrubbed
    by hand becomes ``available``. Either way its stored facts are dropped (the event keeps
    them): the cleanup is marked ``cleared`` and works from what the host shows now.
    """
    host_id = conn.execute(sa.select(devices.c.host_id).where(devices.c.id == device_id)).scalar_one_or_none()
    if host_id is None:
        raise errors.DevassignError(errors.DEVICE_NOT_FOUND, f"no device with id {device_id!r}")
    lock_host(conn, host_id)
    row = conn.execute(sa.select(devices).where(devices.c.id == device_id)).one()
    if row.state == DeviceState.MISSING.value:
        return _retire_missing(conn, row, reason, now=now, actor=actor)
    if row.state != DeviceState.QUARANTINED.value and not row.healthy:
        return _clear_health(conn, row, reason, now=now, actor=actor)
    if row.state != DeviceState.QUARANTINED.value:
        raise errors.DevassignError(
            errors.INVALID_STATE,
            f"device {row.address} is {row.state} and healthy; "
            "only quarantined, unhealthy or missing devices are cleared",
        )
    one_time = (row.quarantine_reason or "").startswith("one_time_use")
    new = (
        (DeviceState.AVAILABLE if row.healthy else DeviceState.UNHEALTHY)
        if one_time
        else DeviceState.CLEANING
    )
    dropped = _recorded(row.facts)
    facts = {CLEARED: _clears(row.facts) + 1, **_kept(row.facts)} if new is DeviceState.CLEANING else None
    freed: dict[str, Any] = {"consumed": None} if new is not DeviceState.CLEANING else {}
    if new is not DeviceState.CLEANING and (retyped := _waiting_type(conn, row)):
        freed["type_id"] = retyped[0]  # free now: the type its host reports it as
    _set_state(
        conn,
        row.id,
        DeviceState.QUARANTINED,
        now,
        state=new.value,
        quarantine_reason=None,
        facts=facts,
        **freed,
    )
    host = conn.execute(sa.select(hosts.c.name).where(hosts.c.id == row.host_id)).scalar_one()
    record(
        conn,
        at=now,
        actor=actor,
        action="device_cleared",
        host=host,
        device=row.address,
        device_id=row.id,
        message=f"{host} {row.address} cleared by {actor} -> {new.value}" + (f": {reason}" if reason else ""),
        detail={"reason": reason, "dropped_facts": dropped},
    )
    recount(conn, row.host_id)
    r = conn.execute(device_query().where(devices.c.id == device_id)).one()
    return device_model(r)


def _retire_missing(
    conn: sa.Connection, row: Any, reason: str, *, now: datetime, actor: str
) -> schemas.Device:
    """An operator says a device that vanished while held is not coming back (VFs taken away
    with ``sriov_numvfs``, a dead card pulled, a bus renumbered): ``removed``, so its host's
    counts no longer hold it and the host can be deleted. It was never cleaned, so if it does
    come back it is cleaned first (``prior_state``). A device a live allocation still names is
    refused: its consumer is released (or moved) first, and learns the device is gone."""
    host = conn.execute(sa.select(hosts.c.name).where(hosts.c.id == row.host_id)).scalar_one()
    holder = consumer_of(conn, row.allocation_id, live=True)
    if holder is not None:
        raise errors.DevassignError(
            errors.INVALID_STATE,
            f"device {row.address} on {host} is missing but still held by consumer {holder!r}: "
            f"release it first (`devassign release --consumer {holder}`), then clear the device",
        )
    conn.execute(
        devices.update()
        .where(devices.c.id == row.id)
        .values(
            state=DeviceState.REMOVED.value,
            prior_state=DeviceState.CLEANING.value,
            allocation_id=None,
            consumed=None,
            state_changed_at=now,
            updated_at=now,
        )
    )
    record(
        conn,
        at=now,
        actor=actor,
        action="device_cleared",
        host=host,
        device=row.address,
        device_id=row.id,
        message=f"{host} {row.address} cleared by {actor} -> removed (it was missing; "
        "cleaned first if it comes back)" + (f": {reason}" if reason else ""),
        detail={"reason": reason, "was": DeviceState.MISSING.value},
    )
    recount(conn, row.host_id)
    r = conn.execute(device_query().where(devices.c.id == row.id)).one()
    return device_model(r)


def _clear_health(conn: sa.Connection, row: Any, reason: str, *, now: datetime, actor: str) -> schemas.Device:
    """An operator vouches for a device whose health check failed: healthy again now, without
    waiting for the agent's passes in a row (cleaned again first where the check that failed
    was the one after its cleanup). A check that still fails marks it again (the next
    report is applied in full, not skipped as unchanged)."""
    above = stored_unhealthy_above(conn, row.host_id, row)
    if above is not None:
        raise errors.DevassignError(
            errors.INVALID_STATE,
            f"device {row.address}: {above}; clear that device first (its own checks cannot vouch for it)",
        )
    state = DeviceState(row.state)
    new = DeviceState.AVAILABLE if state is DeviceState.UNHEALTHY else state
    again: dict[str, Any] = {}
    if state is DeviceState.UNHEALTHY and row.prior_state == DeviceState.CLEANING.value:
        # Its last cleanup ended with a failing check (a scrub that exited 0 and left data
        # behind): vouching for the device does not finish that cleanup; it runs again.
        new = DeviceState.CLEANING
        again = {"facts": {CLEARED: _clears(row.facts) + 1, **_kept(row.facts)}, "prior_state": None}
        # Cleaning holds a partition's share of its pool again, which others may hold by now.
        crowded = _pool_refusal(conn, row)
        if crowded is not None:
            raise errors.DevassignError(
                errors.INVALID_STATE,
                f"device {row.address} must be cleaned again, which takes its share of its pool, and "
                f"{crowded}; clear it once partitions of {row.pool} are released (a taint on "
                f"{row.pool} stops new claims of them)",
            )
    conn.execute(
        devices.update()
        .where(devices.c.id == row.id)
        .values(
            healthy=True,
            health_reason=None,
            state=new.value,
            updated_at=now,
            **({"state_changed_at": now} if new is not state else {}),
            **again,
        )
    )
    host = conn.execute(sa.select(hosts.c.name).where(hosts.c.id == row.host_id)).scalar_one()
    conn.execute(hosts.update().where(hosts.c.id == row.host_id).values(report_digest=None))
    record(
        conn,
        at=now,
        actor=actor,
        action="device_health_cleared",
        host=host,
        device=row.address,
        device_id=row.id,
        message=f"{host} {row.address} marked healthy by {actor} -> {new.value} (was: {row.health_reason})"
        + (f": {reason}" if reason else ""),
        detail={"reason": reason, "health_reason": row.health_reason},
    )
    recount(conn, row.host_id)
    r = conn.execute(device_query().where(devices.c.id == row.id)).one()
    return device_model(r)


def _pool_refusal(conn: sa.Connection, row: Any) -> str | None:
    """Why the pool of partition ``row`` (not held now) cannot give it its share, or None."""
    if row.pool is None:
        return None
    rows = conn.execute(
        sa.select(*SHARE_COLUMNS).where(
            devices.c.host_id == row.host_id,
            devices.c.state != DeviceState.REMOVED.value,
            sa.or_(devices.c.pool == row.pool, devices.c.address == row.pool),
        )
    ).all()
    holding = {s.value for s in HOLDING_STATES}
    return Pools.of(rows, (r for r in rows if r.state in holding)).refusal(row)


def allocation_devices(
    conn: sa.Connection, consumer: str
) -> list[tuple[schemas.Device, dict[str, Any], dict[str, Any]]]:
    """The consumer's live devices with their setup params and facts (for the libvirt XML).

    Each device names the consumer it was set up for: the allocation of a committed move was
    set up for the move's own consumer, and what the setup made is named after that one (an
    mdev's UUID), not after the consumer that holds it now."""
    alloc = conn.execute(
        sa.select(allocations.c.id, allocations.c.request).where(
            allocations.c.consumer == consumer, allocations.c.released_at.is_(None)
        )
    ).first()
    if alloc is None:
        raise errors.DevassignError(
            errors.ALLOCATION_NOT_FOUND, f"consumer {consumer!r} holds no live allocation"
        )
    set_up_for = conn.execute(
        sa.select(moves.c.target_consumer).where(moves.c.target_allocation_id == alloc.id).limit(1)
    ).scalar()
    return _devices_of(conn, alloc, set_up_for)


def move_target_devices(
    conn: sa.Connection, consumer: str
) -> list[tuple[schemas.Device, dict[str, Any], dict[str, Any]]]:
    """The devices the consumer's pending move holds on its target host, as
    :func:`allocation_devices` gives a consumer's own: what the destination's domain XML needs
    before the move is committed (a vGPU's mdev there is named after the move's own consumer,
    which no address map tells)."""
    move = conn.execute(
        sa.select(moves.c.target_allocation_id, moves.c.target_consumer).where(
            moves.c.consumer == consumer, moves.c.finished_at.is_(None)
        )
    ).first()
    alloc = (
        conn.execute(
            sa.select(allocations.c.id, allocations.c.request).where(
                allocations.c.id == move.target_allocation_id, allocations.c.released_at.is_(None)
            )
        ).first()
        if move is not None
        else None
    )
    if move is None or alloc is None:
        raise errors.DevassignError(
            errors.INVALID_STATE,
            f"{consumer} has no pending move (`devassign move show {consumer}`); start one with "
            f"`devassign move start {consumer} --to HOST`; once a move is committed, the "
            "consumer's own XML describes the devices it moved to",
        )
    return _devices_of(conn, alloc, move.target_consumer)


def _devices_of(
    conn: sa.Connection, alloc: Any, set_up_for: str | None
) -> list[tuple[schemas.Device, dict[str, Any], dict[str, Any]]]:
    q = (
        device_query()
        .add_columns(allocation_items.c.request_name)
        .join(allocation_items, allocation_items.c.device_id == devices.c.id)
        .where(allocation_items.c.allocation_id == alloc.id)
        .order_by(devices.c.address)
    )
    out = []
    for r in conn.execute(q):
        device = device_model(r)
        if set_up_for is not None:
            device = device.model_copy(update={"consumer": set_up_for})
        out.append((device, _params_for(alloc.request, r.request_name), _recorded(r.facts)))
    return out
