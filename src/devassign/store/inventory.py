"""Hosts and their devices: applying agents' reports, liveness, and the per-host counts.

A report replaces a host's full device list in one transaction. The rules (docs/api.md,
"Inventory report rules"): a host id stays with the name it was first reported under; one live agent
process per host (``agent_instance``); unknown types are refused per device; a device that
vanishes while in use becomes ``missing``, a free one ``removed`` -- rows are never deleted;
a device that comes back is restored; a stale generation cannot overwrite a newer report.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from devassign import errors, schemas
from devassign.attribute_schema import attributes_problem
from devassign.domain import IN_USE_STATES, NAME_RE, AllocationState, DeviceKind, DeviceState, usb_address
from devassign.failpoints import after_commit, failpoint
from devassign.scheduler.reasons import join_and
from devassign.scheduler.shares import Pools, Relatives, copy_pools, parent_map
from devassign.scheduler.view import HOLDING_STATES, UNGROUPED_KINDS
from devassign.store.db import ConcurrentChange
from devassign.store.events import record, record_many
from devassign.store.hosts import AGENT_TAKEOVER_AFTER, agent_conflict, agent_live, id_fence, may_act
from devassign.store.inherited_health import with_inherited_health
from devassign.store.schema import (
    allocations,
    devices,
    events,
    hosts,
    inventory,
    resource_types,
)
from devassign.store.taint_marks import mark_tainted

# What ``inventory.available`` counts: free devices that no taint keeps from new claims.
SCHEDULABLE = sa.and_(devices.c.state == DeviceState.AVAILABLE.value, devices.c.taint.is_(None))
# The facts a report may change (the address is the device's identity): one column each.
_COMPARED = tuple(f for f in schemas.DEVICE_FACTS if f != "address")
# A held partition's share of its pool (scheduler/shares.py): kept as claimed until it is free.
_HELD_SHARE = ("pool", "consumes", "mode")
# Stored as NULL when empty (attributes are always an object).
_NULL_WHEN_EMPTY = frozenset({"pool_counters", "consumes"})


def stored_facts(dev: schemas.DeviceFacts) -> dict[str, Any]:
    """A device's facts as its columns hold them."""
    out: dict[str, Any] = {}
    for name in schemas.DEVICE_FACTS:
        value = getattr(dev, name)
        if hasattr(value, "value"):  # an enum: its text
            value = value.value
        out[name] = None if (name in _NULL_WHEN_EMPTY and not value) else value
    return out


_HELD = IN_USE_STATES | {DeviceState.QUARANTINED}


def digest(report: schemas.InventoryReport) -> str:
    body = json.dumps([d.model_dump(mode="json") for d in report.devices], sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()


def lock_host(conn: sa.Connection, host_id: int) -> None:
    """Serialize changes to one host's devices: every writer takes the host row first.

    One order (host, then its devices) for every transaction means no deadlocks between
    claims, releases, reports and agents' results. ``FOR NO KEY UPDATE`` on PostgreSQL, so
    the foreign-key checks of new allocations (``FOR KEY SHARE``) do not conflict with it;
    SQLite's write lock already serializes everything.
    """
    conn.execute(sa.select(hosts.c.id).where(hosts.c.id == host_id).with_for_update(key_share=True))


def recount(conn: sa.Connection, host_id: int) -> None:
    """Rebuild the host's rows of ``inventory`` from its devices.

    Called in the same transaction as every change of device state on that host: one host
    holds tens of devices, so recounting is cheap and can never drift. The host row is locked
    first: two transactions that changed devices of one host recount one after the other, and
    the second counts what the first committed (at READ COMMITTED a recount would otherwise
    write counts that miss the other's change).
    """
    lock_host(conn, host_id)
    rows = conn.execute(
        sa.select(
            devices.c.type_id,
            sa.func.count(),
            sa.func.sum(sa.case((SCHEDULABLE, 1), else_=0)),
        )
        .where(devices.c.host_id == host_id, devices.c.state != DeviceState.REMOVED.value)
        .group_by(devices.c.type_id)
    ).all()
    carved = _carved_out(conn, host_id)
    conn.execute(inventory.delete().where(inventory.c.host_id == host_id))
    if rows:
        conn.execute(
            inventory.insert(),
            [
                {
                    "host_id": host_id,
                    "type_id": t,
                    "total": n,
                    "available": int(a or 0) - carved.get(t, 0),
                    "carved": carved.get(t, 0),
                }
                for t, n, a in rows
            ],
        )


_HOLDING_STATES = [s.value for s in HOLDING_STATES]
_MEMBERS = devices.alias("members")
_POOLS_OF_HOST = sa.select(_MEMBERS.c.pool).where(
    _MEMBERS.c.host_id == sa.bindparam("host_id"), _MEMBERS.c.pool.is_not(None)
)
# What scheduler.shares.Pools reads of a device: the claim, the counts and the audit select these.
SHARE_COLUMNS = (
    devices.c.address,
    devices.c.state,
    devices.c.pool,
    devices.c.pool_counters,
    devices.c.consumes,
    devices.c.consumed,
    devices.c.mode,
)
# The parents of partitions that are not pools themselves (a VF whose vGPU slots draw on its
# GPU): free while a slot under it is held, yet no claim can get them.
_PARENTS_OF_PARTITIONS = sa.select(_MEMBERS.c.parent).where(
    _MEMBERS.c.host_id == sa.bindparam("host_id"),
    _MEMBERS.c.pool.is_not(None),
    _MEMBERS.c.parent.is_not(None),
)
# A held device and the devices above and below it exclude each other, however deep (a PF
# held whole keeps its VFs and their vGPU slots from claims, a held slot its VF and PF): every
# device with a parent or children, so that their chains are whole.
_PARENTS_OF_HOST = sa.select(_MEMBERS.c.parent).where(
    _MEMBERS.c.host_id == sa.bindparam("host_id"), _MEMBERS.c.parent.is_not(None)
)
# A claim takes a device's whole IOMMU group: one member not free (tainted, unhealthy, being
# cleaned) keeps the others from claims. The groups of more than one assignable member.
_UNGROUPED = sorted(UNGROUPED_KINDS)
_SHARED_GROUPS = (
    sa.select(_MEMBERS.c.iommu_group)
    .where(
        _MEMBERS.c.host_id == sa.bindparam("host_id"),
        _MEMBERS.c.iommu_group.is_not(None),
        _MEMBERS.c.state != DeviceState.REMOVED.value,
        _MEMBERS.c.kind.not_in(_UNGROUPED),
    )
    .group_by(_MEMBERS.c.iommu_group)
    .having(sa.func.count() > 1)
)
_PARTITIONS = sa.select(
    *SHARE_COLUMNS,
    devices.c.parent,
    devices.c.type_id,
    devices.c.taint,
    devices.c.iommu_group,
    devices.c.kind,
).where(
    devices.c.host_id == sa.bindparam("host_id"),
    devices.c.state != DeviceState.REMOVED.value,
    sa.or_(
        devices.c.pool.is_not(None),
        devices.c.address.in_(_POOLS_OF_HOST),
        devices.c.address.in_(_PARENTS_OF_PARTITIONS),
        devices.c.parent.is_not(None),
        devices.c.address.in_(_PARENTS_OF_HOST),
        sa.and_(devices.c.kind.not_in(_UNGROUPED), devices.c.iommu_group.in_(_SHARED_GROUPS)),
    ),
)


def carved_counts(conn: sa.Connection, up_since: datetime | None) -> dict[int, int]:
    """Per type id: free devices of up hosts that their pool cannot give now."""
    up = sa.true() if up_since is None else hosts.c.last_seen_at >= up_since
    q = (
        sa.select(inventory.c.type_id, sa.func.sum(inventory.c.carved))
        .select_from(inventory.join(hosts, hosts.c.id == inventory.c.host_id))
        .where(inventory.c.carved > 0, up)
        .group_by(inventory.c.type_id)
    )
    return {t: int(n) for t, n in conn.execute(q)}


def _carved_out(conn: sa.Connection, host_id: int) -> dict[int, int]:
    """Per type, the schedulable devices their pools cannot give now (another mode runs, too
    little left, the pool held whole) or a held parent or child keeps from claims: not
    ``available`` in the counts, as the scheduler's view does not offer them
    (scheduler/shares.py). Empty, at one cheap query, for a host without partitions and
    without held relatives."""
    return carved_of(partitions(conn, host_id))


def partitions(conn: sa.Connection, host_id: int) -> Sequence[Any]:
    """The host's partitions and their pools, and every device with a parent or children, as
    they are now (:data:`SHARE_COLUMNS`, parent, type, taint)."""
    return conn.execute(_PARTITIONS, {"host_id": host_id}).all()


_RECARVE = (
    inventory.update()
    .where(inventory.c.host_id == sa.bindparam("h"), inventory.c.type_id == sa.bindparam("t"))
    .values(
        available=inventory.c.available + inventory.c.carved - sa.bindparam("c"),
        carved=sa.bindparam("c"),
    )
)


def recarve(conn: sa.Connection, host_id: int, rows: Sequence[Any]) -> None:
    """What :func:`recount` writes after a claim of partitions, in one statement.

    A claim has already moved ``available`` by exactly the devices it took; what else changes
    is what the pools can no longer give (a mode taken, a counter spent): ``carved``, per
    type, from ``rows`` (:func:`partitions`, read under the host's lock after the take), and
    ``available`` by its change. Counting the whole host again cost five statements."""
    if not rows:
        return
    carved = carved_of(rows)
    conn.execute(_RECARVE, [{"h": host_id, "t": t, "c": carved.get(t, 0)} for t in {r.type_id for r in rows}])


def carved_of(rows: Sequence[Any]) -> dict[int, int]:
    """:func:`_carved_out` of the rows :func:`partitions` read."""
    if not rows:
        return {}
    holding = [r for r in rows if r.state in _HOLDING_STATES]
    pools = Pools.of(rows, holding)
    relatives = Relatives.of(holding, parent_map(rows))  # as the scheduler's view has it
    out: dict[int, int] = {}
    # Per pool and type: the free devices that fit alone, of which fewer may fit together
    # (four VFs offer a 70 GB vGPU, a 141 GB GPU holds two): counted by taking them one by one.
    fitting: dict[tuple[str | None, int], list[Any]] = {}
    free: list[Any] = []
    for r in rows:
        if r.state != DeviceState.AVAILABLE.value or r.taint is not None:
            continue
        if relatives.holding_back(r) is not None or pools.refusal(r) is not None:
            out[r.type_id] = out.get(r.type_id, 0) + 1
        else:
            free.append(r)
    for r in _with_free_groups(rows, free, out):
        fitting.setdefault((r.pool, r.type_id), []).append(r)
    for (_pool, type_id), free in fitting.items():
        together = copy_pools(pools)
        fit = 0
        for r in sorted(free, key=lambda r: r.address):  # MIG placements of a profile never overlap
            if together.refusal(r) is None:
                together.take(r, 1)
                fit += 1
        if fit < len(free):
            out[type_id] = out.get(type_id, 0) + len(free) - fit
    return out


@dataclass
class _Outcome:
    accepted: int = 0
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    refused: list[schemas.RefusedDevice] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    deferred: bool = False  # a change waits until its device is free: apply the report again then
    # Consumers whose reserved device left the report before its setup: released at once.
    unset_up: dict[str, str] = field(default_factory=dict)


def _host_for_report(
    conn: sa.Connection, name: str, host_id: str | None, now: datetime, actor: str, *, by_agent: bool = False
) -> Any:
    """Find (or register) the host the report is for.

    A host id belongs to the name it was first reported under: a report under another name
    carrying it is refused, and nothing is written (an agent token for an unregistered name
    must not take over another host's row, its work and its tenants' devices). A renamed
    machine is renamed by an admin (``rename_host``).
    """
    by_name = conn.execute(sa.select(hosts).where(hosts.c.name == name)).first()
    if by_agent and host_id is None and by_name is not None and by_name.host_id:
        raise id_fence(name)
    if by_name is not None and (host_id is None or by_name.host_id == host_id):
        return by_name  # the common case: one lookup
    if host_id:
        owner = conn.execute(sa.select(hosts.c.name).where(hosts.c.host_id == host_id)).scalar_one_or_none()
        if owner is not None and owner != name:
            raise errors.DevassignError(
                errors.HOST_ID_MISMATCH,
                # Neither the other host's name nor, below, the registered id: with the host's
                # token the id is what lets a machine in (an admin reads it: `host show -f json`).
                f"host id {host_id} belongs to another host, not {name!r}: a host id stays with the "
                f"name it was first reported under. If an admin renamed this host, give this agent "
                "its new name and a token for it (host and token in agent.toml) and restart it; if "
                f"this machine should be {name!r}, an admin runs `devassign host rename OLD {name}` "
                f"(`devassign host show OLD -f json` gives an admin a host's id) and issues an agent "
                f"token for {name!r}; if its state "
                "file was copied from another machine (a cloned image), delete the agent's state file "
                "(state_file in agent.toml) and restart the agent: it then registers as a new host",
            )
        if by_name is not None and by_name.host_id and by_name.host_id != host_id:
            raise errors.DevassignError(
                errors.HOST_ID_MISMATCH,
                f"host {name!r} is registered with another host id than this agent's {host_id}: "
                "restore the agent's state file; if it was lost (the agent or the machine "
                f"reinstalled), an admin reads the host's id (`devassign host show {name} -f json`); stop "
                f'the agent, write {{"host_id": "ID", "host": "{name}"}} as its state file and '
                "start it again (it then cleans and sets up what the server asks, from the "
                "server's records); only a host whose devices are all free can instead be "
                f"deleted (`devassign host delete {name}`) and reported again",
            )
    if by_name is not None:
        if host_id and not by_name.host_id:
            conn.execute(hosts.update().where(hosts.c.id == by_name.id).values(host_id=host_id))
        return by_name
    new_id = conn.execute(
        hosts.insert().values(name=name, host_id=host_id, generation=-1, created_at=now).returning(hosts.c.id)
    ).scalar_one()
    record(
        conn,
        at=now,
        actor=actor,
        action="host_registered",
        host=name,
        message=f"host {name} registered",
    )
    return conn.execute(sa.select(hosts).where(hosts.c.id == new_id)).one()


def apply_report(
    conn: sa.Connection,
    name: str,
    report: schemas.InventoryReport,
    *,
    now: datetime,
    actor: str,
    takeover_after: timedelta = AGENT_TAKEOVER_AFTER,
    loaded: bool = False,
    by_agent: bool = False,
) -> schemas.InventoryResult:
    host = _host_for_report(conn, name, report.host_id, now, actor, by_agent=by_agent)
    instance = report.agent_instance
    if loaded and instance is None:
        _refuse_over_a_live_agent(host, name, now, takeover_after)
    values: dict[str, Any] = {
        "generation": report.generation,
        "last_report_at": now,
        "last_seen_at": now,
        "marked_down": False,
    }
    update = hosts.update().where(hosts.c.id == host.id, hosts.c.generation <= report.generation)
    if instance is not None:
        # Another live agent process with this host id (a cloned state file) is refused.
        conflict = agent_conflict(host, name, instance, now=now, takeover_after=takeover_after, actor=actor)
        if conflict is not None:
            raise conflict
        values.update(agent_instance=instance, agent_seen_at=now)
        update = update.where(may_act(instance, now - takeover_after))
    elif (
        by_agent and report.host_id and host.agent_instance and agent_live(host, now, takeover_after) is None
    ):
        # The host's id without a process id (`agent run --once`), the recorded process silent:
        # this is the host's agent now, and its calls without the header get the host's work
        # (store/work.py). A token alone, without the id, is refused above.
        values.update(agent_instance=None)
    # Compare-and-swap on the generation (and the agent instance): a stale report changes nothing.
    moved = conn.execute(update.values(**values)).rowcount
    if moved != 1:
        current = conn.execute(
            sa.select(
                hosts.c.generation, hosts.c.host_id, hosts.c.agent_instance, hosts.c.agent_seen_at
            ).where(hosts.c.id == host.id)
        ).first()
        if current is None:
            raise ConcurrentChange(f"host {name} was deleted while reporting")
        if instance is not None:
            conflict = agent_conflict(
                current, name, instance, now=now, takeover_after=takeover_after, actor=actor
            )
            if conflict is not None:
                raise conflict
        if current.generation <= report.generation:
            raise ConcurrentChange(f"host {name} changed while reporting")
        raise errors.DevassignError(
            errors.STALE_GENERATION,
            f"report generation {report.generation} is older than the last one taken "
            f"({current.generation}); send generation {current.generation} or higher (that same "
            "report again changes nothing)",
            current_generation=current.generation,
        )
    if host.marked_down:
        record(conn, at=now, actor=actor, action="host_up", host=name, message=f"host {name} is up")

    new_digest = digest(report)
    if new_digest == host.report_digest:
        # Nothing changed since the last report: liveness was refreshed above, that is all.
        return schemas.InventoryResult(
            host=name,
            generation=report.generation,
            accepted=len(report.devices),
            added=[],
            updated=[],
            removed=[],
            missing=[],
            refused=[],
            warnings=[],
            checks=health_checks(conn, {d.type for d in report.devices}),
        )

    out = _Outcome()
    reported = with_inherited_health(report.devices)
    type_rows = catalog_rows(conn)
    types = {name: r.id for name, r in type_rows.items()}
    type_names = {v: k for k, v in types.items()}
    existing = {r.address: r for r in conn.execute(sa.select(devices).where(devices.c.host_id == host.id))}
    seen: set[str] = set()
    inserts: list[dict[str, Any]] = []
    replaced: dict[str, str] = {}  # address -> why the device there is not the one held
    base_event = {"at": now, "actor": actor, "host": name}

    # Partitions of one pool must agree on every counter they both name: the first one decides.
    pool_counters: dict[str, dict[str, int]] = {}
    for dev in reported:
        if dev.pool is not None:
            known = pool_counters.setdefault(dev.pool, {})
            for k, v in dev.pool_counters.items():
                known.setdefault(k, v)
    refusals = _refusals(reported, type_rows, pool_counters)
    for dev in reported:
        if dev.address in seen:
            out.refused.append(
                schemas.RefusedDevice(address=dev.address, code="duplicate_address", reason="reported twice")
            )
            continue
        seen.add(dev.address)
        type_id = types.get(dev.type)
        refused = refusals.get(dev.address)
        if refused is not None or type_id is None:
            code, reason = refused or ("unknown_type", "")
            out.refused.append(schemas.RefusedDevice(address=dev.address, code=code, reason=reason))
            if code == "unknown_type":  # the catalog lacks it: what the operator most needs told
                out.warnings.append(f"{dev.address} refused: {reason}")
            out.events.append(
                {
                    **base_event,
                    "action": "device_refused",
                    "device": dev.address,
                    "type": dev.type,
                    "message": f"{name} {dev.address}: {reason}",
                }
            )
            if type_id is not None:
                seen.discard(dev.address)  # as if not reported: removed if free, missing if held
            continue
        out.accepted += 1
        row = existing.get(dev.address)
        if row is None:
            inserts.append(new_device(dev, host.id, type_id, now))
            out.added.append(dev.address)
            out.events.append(added_event(base_event, name, dev, inserts[-1]["id"]))
            continue
        swapped = _another_device(conn, row, dev)
        if swapped is not None:
            out.warnings.append(f"{dev.address}: {swapped}")
            replaced[dev.address] = swapped
            seen.discard(dev.address)  # the holder's device is gone: missing, never handed back
            continue
        _update_existing(conn, row, dev, type_id, type_names, out, base_event, now)

    if inserts:
        _clean_first(existing, seen, inserts, out, type_names)
        _clean_owed(conn, name, inserts, out)
        conn.execute(devices.insert(), inserts)
    for address, row in existing.items():
        if address not in seen:
            _vanished(conn, row, out, base_event, type_names, now, why=replaced.get(address))
    for consumer, gone in out.unset_up.items():
        # Its setup can never run: the claim is refused now, not when its reservation lapses
        # (minutes later); the device is cleaned before use if it comes back.
        from devassign.store.claims import release

        release(conn, consumer, now=now, actor=actor, why="device_missing", detail=gone)
        out.warnings.append(f"{consumer} released: {gone}")

    seen_types = {d.type for d in reported}
    failpoint("report.mid_transaction")
    record_many(conn, _unrepeated(conn, name, out.events))
    mark_tainted(conn, host.id, now)
    recount(conn, host.id)
    # A report with refused devices is applied in full again next time (no digest): its answer
    # keeps naming what is still refused, and a fix on the server side (a type created, a
    # config changed) is picked up without the agent having to change anything. So is one
    # with a change that waits for its device to be free (applied by a later, same report), and
    # one with another device at a held device's address (cleaned once its holder is released).
    kept = None if out.refused or out.deferred or replaced else new_digest
    conn.execute(hosts.update().where(hosts.c.id == host.id).values(report_digest=kept))
    after_commit(conn, "report.after_commit")
    return schemas.InventoryResult(
        host=name,
        generation=report.generation,
        accepted=out.accepted,
        added=out.added,
        updated=out.updated,
        removed=out.removed,
        missing=out.missing,
        refused=out.refused,
        warnings=out.warnings,
        checks=checks_for(type_rows, seen_types),
    )


def _refuse_over_a_live_agent(host: Any, name: str, now: datetime, takeover_after: timedelta) -> None:
    """A loaded report (``host load``) for a host whose agent was heard within the takeover
    time would replace what that agent reports (its devices ``removed`` until its next report,
    its generation overtaken): refused, that host's answer alone."""
    live = agent_live(host, now, takeover_after)
    if live is None:
        return
    age, wait = live
    raise errors.DevassignError(
        errors.AGENT_CONFLICT,
        f"host {name!r} has a live agent (heard {age:.0f} s ago): a loaded report would replace "
        "what it reports; leave this host out of the file, or stop its agent and load it once "
        f"the agent has been silent for {takeover_after.total_seconds():.0f} s",
        retry_after=wait,
    )


def parent_loops(reported: Sequence[schemas.ReportedDevice]) -> list[list[str]]:
    """The loops of parent links in a report (two devices each other's parent): what is held
    below a device and what above it are walked on the parent tree, which must be one. A
    device that is its own parent is a 400 already."""
    parent = {d.address: d.parent for d in reported if d.parent}
    loops: list[list[str]] = []
    done: set[str] = set()
    for start in parent:
        path: list[str] = []
        at: dict[str, int] = {}
        address: str | None = start
        while address is not None and address in parent and address not in done and address not in at:
            at[address] = len(path)
            path.append(address)
            address = parent[address]
        if address is not None and address in at:
            loops.append(path[at[address] :])
        done.update(path)
    return loops


def _refusals(
    reported: Sequence[schemas.ReportedDevice],
    type_rows: dict[str, Any],
    pool_counters: dict[str, dict[str, int]],
) -> dict[str, tuple[str, str]]:
    """Per refused address: (code, reason). A device whose IOMMU group holds a refused device
    is refused too: the group goes to a guest whole or not at all, so without its mate it
    could be claimed but never set up (the claim would fail at the agent, again and again)."""
    out: dict[str, tuple[str, str]] = {}
    for dev in reported:
        row = type_rows.get(dev.type)
        if row is None:
            # The command is suggested only for a name a type may have: the rest is the
            # agent's text, which an admin might paste into a shell.
            reason = (
                f"unknown resource type {dev.type!r}: create it with "
                f"`devassign type create {dev.type}` or fix the agent's [[device]] rule"
                if NAME_RE.match(dev.type)
                else f"unknown resource type {dev.type!r}, which is not a type name "
                "(letters, digits and _, at most 64): fix the agent's [[device]] rule"
            )
            out.setdefault(dev.address, ("unknown_type", reason))
            continue
        unfit = schema_refusal(dev, row)
        if unfit is not None:
            out.setdefault(dev.address, ("attributes_invalid", unfit))
            continue
        refusal = reset_refusal(dev, row) or iommu_refusal(dev, row) or pool_refusal(dev, pool_counters)
        if refusal is not None:
            if refusal.startswith(dev.address + " supports no reset"):
                code = "no_reset"
            elif refusal.startswith(dev.address + " has no IOMMU group"):
                code = "no_iommu_group"
            else:
                code = "inconsistent_pool"
            out.setdefault(dev.address, (code, refusal))
    for loop in parent_loops(reported):
        chain = " -> ".join([*loop, loop[0]])
        for address in loop:
            reason = f"its parent chain comes back to it ({chain}): a parent is the device it is carved from"
            out.setdefault(address, ("parent_loop", reason))
    groups: dict[int, list[schemas.ReportedDevice]] = {}
    for dev in reported:
        if dev.iommu_group is not None and dev.kind not in UNGROUPED_KINDS:
            groups.setdefault(dev.iommu_group, []).append(dev)
    for group, members in sorted(groups.items()):
        bad = sorted({d.address for d in members if d.address in out})
        if not bad:
            continue
        for dev in members:
            if dev.address not in out:
                reason = (
                    f"its IOMMU group {group} holds {join_and(bad)}, which the server refused "
                    f"({', '.join(sorted({out[a][0] for a in bad}))}): the group is assigned whole, "
                    "so it cannot be assigned without " + ("it" if len(bad) == 1 else "them")
                )
                out[dev.address] = ("iommu_group_mate_refused", reason)
    return out


def _unrepeated(conn: sa.Connection, host: str, new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The report's events without the refusals its host was last told of in the same words: a
    report with a refused device is applied in full each time (so a fix is picked up), and a
    device of an unknown type would otherwise add an event to the log every report, for ever."""
    refused = {e["device"]: e["message"] for e in new if e["action"] == "device_refused"}
    said: set[str] = set()
    for address, message in refused.items():
        last = conn.execute(
            sa.select(events.c.message)
            .where(events.c.host == host, events.c.device == address, events.c.action == "device_refused")
            .order_by(events.c.id.desc())
            .limit(1)
        ).scalar()
        if last == message:
            said.add(address)
    return [e for e in new if e["action"] != "device_refused" or e["device"] not in said]


def _clean_first(
    existing: dict[str, Any],
    seen: set[str],
    inserts: list[dict[str, Any]],
    out: _Outcome,
    type_names: dict[int, str],
) -> None:
    """New devices of a type whose held devices on this host are gone are cleaned before anyone
    gets them: the same hardware under a new address (a bus renumbered by a firmware update, a
    card moved to another slot, a token plugged into another port) still carries what its
    holder left on it, and a device first seen is otherwise taken as clean. So does one an
    operator retired while it was missing (``removed``, its cleanup still owed): it may be back
    under another address. A USB device is one of the gone only where its vendor, product and
    serial are theirs (:func:`_may_be`)."""
    gone: dict[int, list[Any]] = {}
    for address, row in existing.items():
        state = DeviceState(row.state)
        retired = state is DeviceState.REMOVED and row.prior_state == DeviceState.CLEANING.value
        was_held = state in _HELD or state is DeviceState.MISSING or retired
        if address not in seen and was_held:
            gone.setdefault(row.type_id, []).append(row)
    if not gone:
        return
    added = {e["device_id"]: e for e in out.events if e["action"] == "device_added"}
    for row in inserts:
        held = sorted(g.address for g in gone.get(row["type_id"], ()) if _may_be(row, g))
        if not held:
            continue
        row["state"] = DeviceState.CLEANING.value
        why = (
            f"cleaned before use: {len(held)} {type_names.get(row['type_id'])} device(s) held on this "
            f"host are gone uncleaned ({', '.join(held[:4])}{', ...' if len(held) > 4 else ''}), "
            "and this may be one of them under a new address"
        )
        event = added[row["id"]]
        event["message"] += f", {why}"
        event["detail"] = {"cleaning_first": True, "gone": held}
        out.warnings.append(f"{row['address']}: {why}")


def owed_cleanups(conn: sa.Connection, names: Sequence[str]) -> dict[str, set[str]]:
    """Per host name, the addresses of devices that owed a cleanup when a host of that name
    was last deleted (``hosts.delete_host``): retired while missing, never cleaned; names that
    owe none are left out. Known while that event is kept (``--event-retention-days``)."""
    newest: dict[str, Any] = {}
    q = sa.select(events.c.host, events.c.detail).where(
        events.c.action == "host_deleted", events.c.host.in_(list(names))
    )
    for r in conn.execute(q.order_by(events.c.id)):
        newest[r.host] = r.detail
    out: dict[str, set[str]] = {}
    for host, detail in newest.items():
        owed = detail.get("uncleaned") if isinstance(detail, dict) else None
        if isinstance(owed, list) and owed:
            out[host] = {a for a in owed if isinstance(a, str)}
    return out


def _clean_owed(conn: sa.Connection, name: str, inserts: list[dict[str, Any]], out: _Outcome) -> None:
    """New devices at the addresses of devices this host name's deletion left uncleaned are
    cleaned before anyone gets them: the same hardware, back after the host was registered again."""
    owed = owed_cleanups(conn, [name]).get(name)
    if not owed:
        return
    added = {e["device_id"]: e for e in out.events if e["action"] == "device_added"}
    for row in inserts:
        if row["address"] not in owed or row["state"] == DeviceState.CLEANING.value:
            continue
        row["state"] = DeviceState.CLEANING.value
        why = (
            "cleaned before use: a device at this address was retired before its cleanup when "
            f"host {name} was deleted"
        )
        event = added[row["id"]]
        event["message"] += f", {why}"
        event["detail"] = {**(event.get("detail") or {}), "cleaning_first": True}
        out.warnings.append(f"{row['address']}: {why}")


def _may_be(new: dict[str, Any], gone: Any) -> bool:
    """Whether the new device may be the gone one's hardware under a new address. A USB
    device's vendor, product and serial are read from the device itself, so they follow it
    from port to port: a token with another serial is not the gone one (a fresh one-time-use
    token plugged in while a tenant's is out is offered at once), one with its serial may be
    (named by its port where a twin with that serial is about, see the agent's USB naming)."""
    if new["kind"] != DeviceKind.USB.value or gone.kind != DeviceKind.USB.value:
        return True
    return _usb_identity(new["address"], new["vendor_id"], new["product_id"], new.get("attributes")) == (
        _usb_identity(gone.address, gone.vendor_id, gone.product_id, gone.attributes)
    )


def _usb_identity(address: str, vendor: str | None, product: str | None, attributes: Any) -> tuple[Any, ...]:
    """Vendor, product and serial (as its serial name has it: ``usb_address``), the serial
    from the attributes or else from an address that is a serial name."""
    serial = attributes.get("serial") if isinstance(attributes, dict) else None
    name = usb_address(vendor or "", product or "", serial if isinstance(serial, str) else None, "")
    if name == "usb:" and address.startswith(f"usb:{vendor}:{product}:"):
        name = address
    return (vendor, product, name if name != "usb:" else None)


def catalog_rows(conn: sa.Connection) -> dict[str, Any]:
    """Every type's id, handler and config, by name: what a report's devices are judged by."""
    q = sa.select(
        resource_types.c.id,
        resource_types.c.name,
        resource_types.c.handler,
        resource_types.c.config,
        resource_types.c.attribute_schema,
    )
    return {r.name: r for r in conn.execute(q)}


def checks_for(type_rows: dict[str, Any], seen_types: set[str]) -> dict[str, schemas.HealthCheck]:
    """Per reported type, what the agent runs to check its free devices."""
    return {
        t: schemas.HealthCheck(handler=r.handler, config=r.config or {})
        for t, r in type_rows.items()
        if t in seen_types
    }


def new_device(dev: schemas.ReportedDevice, host_id: int, type_id: int, now: datetime) -> dict[str, Any]:
    """The row of a device reported for the first time: available, or unhealthy as reported."""
    state = DeviceState.AVAILABLE if dev.healthy else DeviceState.UNHEALTHY
    return {
        **stored_facts(dev),
        "id": str(uuid.uuid4()),
        "host_id": host_id,
        "type_id": type_id,
        "state": state.value,
        "healthy": dev.healthy,
        "health_reason": None if dev.healthy else (dev.health_reason or "the agent reports it unhealthy"),
        "state_changed_at": now,
        "created_at": now,
        "updated_at": now,
    }


def added_event(
    base_event: dict[str, Any], host: str, dev: schemas.ReportedDevice, device_id: str
) -> dict[str, Any]:
    return {
        **base_event,
        "action": "device_added",
        "device": dev.address,
        "type": dev.type,
        "device_id": device_id,
        "message": f"{host} {dev.address} ({dev.type}) added",
    }


def health_checks(conn: sa.Connection, names: set[str]) -> dict[str, schemas.HealthCheck]:
    """The handler and config of each named type: how the agent checks its free devices."""
    if not names:
        return {}
    q = sa.select(resource_types.c.name, resource_types.c.handler, resource_types.c.config).where(
        resource_types.c.name.in_(sorted(names))
    )
    return {r.name: schemas.HealthCheck(handler=r.handler, config=r.config or {}) for r in conn.execute(q)}


_PCI_KINDS = frozenset({"pci", "sriov_pf", "sriov_vf"})


def schema_refusal(dev: schemas.ReportedDevice, type_row: Any) -> str | None:
    """Why a device's attributes do not meet its type's attribute schema, or ``None``."""
    schema = type_row.attribute_schema
    if not isinstance(schema, dict):
        return None
    problem = attributes_problem(schema, dict(dev.attributes))
    if problem is None:
        return None
    return f"{dev.address}: its attributes do not meet type {dev.type}'s attribute schema: {problem}"


def reset_refusal(dev: schemas.ReportedDevice, type_row: Any) -> str | None:
    """Why a PCI function that cannot be reset is refused, unless its type accepts that.

    The agent reports ``attributes.resettable`` (the kernel's ``reset`` file); a function
    without reset could carry one tenant's state to the next (docs/api.md, "Inventory report rules").
    """
    if dev.kind.value not in _PCI_KINDS or dev.attributes.get("resettable") is not False:
        return None
    if type_row.handler not in (None, "pci", "sriov_vf"):
        return None
    if (type_row.config or {}).get("reset") == "none-ok":
        return None
    return (
        f"{dev.address} supports no reset, so a tenant's state could reach the next one; "
        f'set "reset": "none-ok" in type {dev.type}\'s config to accept it'
    )


def iommu_refusal(dev: schemas.ReportedDevice, type_row: Any) -> str | None:
    """Why a PCI function without an IOMMU group (the IOMMU is off) is refused for a type whose
    handler passes it through with VFIO (the built-in ``pci`` and ``sriov_vf``): that setup can
    never succeed, so every claim of it would be accepted and then fail. The agent says so with
    ``attributes.no_iommu_group``; a type with another handler (a command, noop) takes it."""
    if dev.kind.value not in _PCI_KINDS or dev.attributes.get("no_iommu_group") is not True:
        return None
    if type_row.handler not in (None, "pci", "sriov_vf"):
        return None
    return (
        f"{dev.address} has no IOMMU group, so VFIO cannot pass it through (type {dev.type}'s "
        f"handler needs that): the IOMMU is off; turn on VT-d or AMD-Vi in the firmware and boot "
        "the host with intel_iommu=on or amd_iommu=on"
    )


def pool_refusal(dev: schemas.ReportedDevice, first: dict[str, dict[str, int]]) -> str | None:
    """Why a partition is refused: its pool's counters differ from what another partition of the
    same pool in this report says (the pool cannot have two capacities)."""
    if dev.pool is None:
        return None
    known = first.get(dev.pool, {})
    differ = sorted(k for k, v in dev.pool_counters.items() if known.get(k, v) != v)
    if not differ:
        return None
    k = differ[0]
    return (
        f"{dev.address} says its pool {dev.pool} has {dev.pool_counters[k]} {k}, another device "
        f"of the same pool says {known[k]}: fix the agent's rules so they agree"
    )


def _with_free_groups(rows: Sequence[Any], free: list[Any], out: dict[int, int]) -> list[Any]:
    """Of ``free``, those whose IOMMU group has every assignable member free too; the others
    are counted in ``out`` (per type), since a claim takes the whole group."""
    free_addresses = {r.address for r in free}
    busy = {
        r.iommu_group
        for r in rows
        if r.iommu_group is not None and r.kind not in UNGROUPED_KINDS and r.address not in free_addresses
    }
    if not busy:
        return free
    kept = []
    for r in free:
        if r.iommu_group in busy and r.kind not in UNGROUPED_KINDS:
            out[r.type_id] = out.get(r.type_id, 0) + 1
        else:
            kept.append(r)
    return kept


def _update_existing(
    conn: sa.Connection,
    row: Any,
    dev: schemas.ReportedDevice,
    type_id: int,
    type_names: dict[int, str],
    out: _Outcome,
    base_event: dict[str, Any],
    now: datetime,
) -> None:
    values: dict[str, Any] = {}
    facts = stored_facts(dev)
    for key in _COMPARED:
        if getattr(row, key) != facts[key]:
            values[key] = facts[key]
    state = DeviceState(row.state)
    held = state in _HELD or state is DeviceState.MISSING
    if type_id != row.type_id:
        if held:
            out.warnings.append(f"{dev.address}: type change to {dev.type} waits until the device is free")
            out.deferred = True
            _pending_type(conn, row, dev.type)
        else:
            values["type_id"] = type_id
    elif held:
        _pending_type(conn, row, None)  # reported as its type again: nothing waits
    waiting = sorted(k for k in _HELD_SHARE if k in values) if held else []
    if waiting:
        # What a held partition takes of its pool is what it was claimed with: a report can
        # not change it under its holder (the pool's other claims were counted against it).
        for k in waiting:
            del values[k]
        out.warnings.append(
            f"{dev.address}: a change of its {', '.join(waiting)} waits until the device is free"
        )
        out.deferred = True
    healthy = reported_health(dev, row.healthy)
    if healthy != row.healthy:
        values["healthy"] = healthy
    reason = None if healthy else (dev.health_reason or row.health_reason or "the agent reports it unhealthy")
    if reason != row.health_reason:
        values["health_reason"] = reason
    new_state = _returning_state(conn, row, state, healthy)
    if new_state is not state:
        values["state"] = new_state.value
        values["prior_state"] = None
        values["state_changed_at"] = now
    if not values:
        return
    values["updated_at"] = now
    conn.execute(devices.update().where(devices.c.id == row.id).values(**values))
    if state is DeviceState.MISSING and new_state is DeviceState.ASSIGNED:
        # Back set up: its allocation may have waited only for this device to be confirmed
        # (a setup result for the others came while it was missing).
        confirm_if_set_up(conn, row.allocation_id)
    out.updated.append(dev.address)
    consumer = consumer_of(conn, row.allocation_id)
    changed = sorted(k for k in values if k not in ("updated_at", "state_changed_at", "prior_state"))
    msg = f"{base_event['host']} {dev.address} updated: {', '.join(changed)}"
    if new_state is not state:
        msg += f" ({state.value} -> {new_state.value})"
    out.events.append(
        {
            **base_event,
            "action": "device_updated",
            "device": dev.address,
            "device_id": row.id,
            "type": type_names.get(type_id),
            "consumer": consumer,
            "message": msg,
            "detail": {k: v for k, v in values.items() if k not in ("updated_at", "state_changed_at")},
        }
    )
    if "healthy" in values:
        out.events.append(
            health_event(
                base_event,
                row.id,
                dev.address,
                type_names.get(row.type_id),
                consumer,
                healthy=healthy,
                reason=reason or "its checks pass again",
                state=state,
            )
        )


def reported_health(dev: schemas.ReportedDevice, stored: bool) -> bool:
    """What a report says of a device's health. A failing check makes it unhealthy at once; a
    device whose checks pass again keeps the state the server has until the agent has seen
    enough passes in a row (``health_recovering``), so an operator's clear stands meanwhile."""
    if dev.health_recovering and not dev.healthy:
        return stored
    return dev.healthy


def health_event(
    base: dict[str, Any],
    device_id: str,
    address: str,
    type_name: str | None,
    consumer: str | None,
    *,
    healthy: bool,
    reason: str,
    state: DeviceState,
) -> dict[str, Any]:
    """``device_unhealthy`` or ``device_healthy``, with the reason; a held device's consumer is
    named, so it sees the event in its own scope."""
    held = f" held by {consumer}" if consumer and state in IN_USE_STATES else ""
    word = "healthy again" if healthy else "unhealthy"
    return {
        **base,
        "action": "device_healthy" if healthy else "device_unhealthy",
        "device": address,
        "device_id": device_id,
        "consumer": consumer if held else None,
        "type": type_name,
        "message": f"{base['host']} {address}{held} is {word}: {reason}",
        "detail": {"reason": reason},
    }


def confirm_if_set_up(conn: sa.Connection, allocation_id: int | None) -> None:
    """An allocation whose devices are all set up is confirmed: it no longer expires."""
    if allocation_id is None:
        return
    pending = conn.execute(
        sa.select(sa.func.count()).where(
            devices.c.allocation_id == allocation_id, devices.c.state != DeviceState.ASSIGNED.value
        )
    ).scalar_one()
    if pending == 0:
        conn.execute(
            allocations.update()
            .where(allocations.c.id == allocation_id, allocations.c.state == AllocationState.RESERVED.value)
            .values(state=AllocationState.ASSIGNED.value, expires_at=None)
        )


# Kept in ``devices.facts`` while a held device's reported type waits for it to be free: the
# cleanup that frees it applies the type (store.work), so it is never offered as the type its
# host no longer reports until the next report.
PENDING_TYPE = "devassign:type"


def _pending_type(conn: sa.Connection, row: Any, type_name: str | None) -> None:
    """Note (or forget) the type, by name, that waits for the held device to be free: a name,
    since an id of a type deleted meanwhile may be another type's by then (SQLite reuses it)."""
    facts = dict(row.facts or {})
    if facts.get(PENDING_TYPE) == type_name:
        return
    if type_name is None:
        facts.pop(PENDING_TYPE, None)
    else:
        facts[PENDING_TYPE] = type_name
    conn.execute(devices.update().where(devices.c.id == row.id).values(facts=facts or None))


def _returning_state(conn: sa.Connection, row: Any, state: DeviceState, healthy: bool) -> DeviceState:
    """The state a reported device should be in, given the one it had."""
    if state is DeviceState.REMOVED:
        if row.prior_state == DeviceState.CLEANING.value:
            return DeviceState.CLEANING  # retired while missing (``device clear``): never cleaned
        return DeviceState.AVAILABLE if healthy else DeviceState.UNHEALTHY
    if state is DeviceState.MISSING:
        prior = DeviceState(row.prior_state or DeviceState.CLEANING.value)
        if prior in (DeviceState.RESERVED, DeviceState.ASSIGNED):
            live = (
                row.allocation_id is not None
                and conn.execute(
                    sa.select(allocations.c.id).where(
                        allocations.c.id == row.allocation_id, allocations.c.released_at.is_(None)
                    )
                ).first()
            )
            # Released while it was gone: it must be cleaned before anyone else gets it.
            return prior if live else DeviceState.CLEANING
        return prior
    if state is DeviceState.AVAILABLE and not healthy:
        return DeviceState.UNHEALTHY
    if state is DeviceState.UNHEALTHY and healthy:
        return DeviceState.AVAILABLE
    return state


_IDENTITY = ("kind", "vendor_id", "product_id")


def _another_device(conn: sa.Connection, row: Any, dev: schemas.ReportedDevice) -> str | None:
    """Why the device reported at a held device's address is another one (a card of another
    model in the slot, buses renumbered onto another device), or ``None``. Its holder's
    device is gone: the row stays missing for the live allocation, its facts as they were,
    and the new one is cleaned before use once the holder released it (``_returning_state``)."""
    state = DeviceState(row.state)
    if state is DeviceState.MISSING:
        if row.prior_state not in (DeviceState.RESERVED.value, DeviceState.ASSIGNED.value):
            return None
        if consumer_of(conn, row.allocation_id, live=True) is None:
            return None
    elif state not in (DeviceState.RESERVED, DeviceState.ASSIGNED):
        return None
    was = {k: getattr(row, k) for k in _IDENTITY}
    is_ = {"kind": dev.kind.value, "vendor_id": dev.vendor_id, "product_id": dev.product_id}
    changed = [k for k in _IDENTITY if None not in (was[k], is_[k]) and was[k] != is_[k]]
    if not changed:
        return None
    what = ", ".join(f"{k} {was[k]} -> {is_[k]}" for k in changed)
    return (
        f"another device is at this address now ({what}): the one its holder has is gone and "
        "stays missing until released; this one is then cleaned before use"
    )


def _vanished(
    conn: sa.Connection,
    row: Any,
    out: _Outcome,
    base_event: dict[str, Any],
    type_names: dict[int, str],
    now: datetime,
    *,
    why: str | None = None,
) -> None:
    """A device not in the report (``why``: reported, but another device than the one held)."""
    state = DeviceState(row.state)
    if state in (DeviceState.MISSING, DeviceState.REMOVED):
        return
    if state in _HELD:
        new, prior = DeviceState.MISSING, state.value
        out.missing.append(row.address)
    else:
        new, prior = DeviceState.REMOVED, None
        out.removed.append(row.address)
    conn.execute(
        devices.update()
        .where(devices.c.id == row.id)
        .values(state=new.value, prior_state=prior, state_changed_at=now, updated_at=now)
    )
    consumer = consumer_of(conn, row.allocation_id)
    if state is DeviceState.RESERVED and consumer_of(conn, row.allocation_id, live=True) is not None:
        told = why or "is no longer reported (the host uses it, or it was removed)"
        out.unset_up.setdefault(str(consumer), f"{row.address} {told} before its setup")
    out.events.append(
        {
            **base_event,
            "action": f"device_{new.value}",
            "device": row.address,
            "device_id": row.id,
            "type": type_names.get(row.type_id),
            "consumer": consumer,
            "message": f"{base_event['host']} {row.address} "
            + (why if why else "no longer reported")
            + f" ({state.value} -> {new.value})",
        }
    )


def consumer_of(conn: sa.Connection, allocation_id: int | None, *, live: bool = False) -> str | None:
    """The consumer of the allocation (``live``: only while it is not released)."""
    if allocation_id is None:
        return None
    q = sa.select(allocations.c.consumer).where(allocations.c.id == allocation_id)
    if live:
        q = q.where(allocations.c.released_at.is_(None))
    return conn.execute(q).scalar_one_or_none()
