"""Hosts and devices as clients see them, and host liveness by the server's own clock.

Reading lives here; applying agents' reports lives in ``inventory.py``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from devassign import errors, schemas
from devassign.domain import HOST_RE, IN_USE_STATES, DeviceState, instance_tag
from devassign.failpoints import failpoint
from devassign.store.db import ConcurrentChange
from devassign.store.events import aware, record
from devassign.store.schema import (
    allocation_items,
    allocations,
    devices,
    events,
    hosts,
    inventory,
    moves,
    resource_types,
    taints,
)

_HELD = IN_USE_STATES | {DeviceState.QUARANTINED}


# ---------------------------------------------------------------- the live agent

# How long the agent process last heard from must be silent before another process with the
# same host id takes the host over: three heartbeats at the agent's default 10 s interval.
AGENT_TAKEOVER_AFTER = timedelta(seconds=30)
_INSTANCE_RE = re.compile(schemas.AGENT_INSTANCE_PATTERN)


def checked_instance(instance: str | None) -> str | None:
    """An agent instance id as sent (a header), or ``None`` when none was sent."""
    if not instance:
        return None
    if not _INSTANCE_RE.fullmatch(instance):
        raise errors.DevassignError(
            errors.INVALID_REQUEST,
            f"{schemas.AGENT_INSTANCE_HEADER} must be 8 to 64 letters, digits, _ or -",
        )
    return instance


def may_act(instance: str, cutoff: datetime) -> sa.ColumnElement[bool]:
    """SQL: this host's recorded agent is ``instance``, none, or silent since ``cutoff``.

    Part of the WHERE of the update that records the instance, so two processes racing for one
    host cannot both win (the loser's update changes no row and is answered as a conflict).
    """
    return sa.or_(
        hosts.c.agent_instance.is_(None),
        hosts.c.agent_instance == instance,
        hosts.c.agent_seen_at.is_(None),
        hosts.c.agent_seen_at <= cutoff,
    )


def agent_live(row: Any, now: datetime, takeover_after: timedelta) -> tuple[float, int] | None:
    """How long ago the host's recorded agent was heard and how long until it may be taken
    over (seconds), or ``None`` when none is recorded or it has been silent for ``takeover_after``."""
    seen = aware(row.agent_seen_at)
    if row.agent_instance is None or seen is None or seen <= now - takeover_after:
        return None
    age = max(0.0, (now - seen).total_seconds())
    return age, max(1, math.ceil(takeover_after.total_seconds() - age))


class AgentConflict(errors.DevassignError):
    """Another agent process with this host's id was heard less than the takeover time ago.

    The refused transaction rolls back, so the store records :attr:`event` in one of its own
    (:meth:`record`): the operator sees each refusal in ``devassign events``.
    """

    def __init__(
        self, row: Any, name: str, instance: str, *, now: datetime, takeover_after: timedelta, actor: str
    ) -> None:
        age, wait = agent_live(row, now, takeover_after) or (0.0, 1)
        limit = f"{takeover_after.total_seconds():.0f} s"
        super().__init__(
            errors.AGENT_CONFLICT,
            f"another agent is live for host {name!r}: agent instance "
            f"{instance_tag(row.agent_instance)} was heard {age:.0f} s ago, and this agent is instance "
            f"{instance_tag(instance)}. If this agent was "
            f"just restarted, it takes over once the old process has been silent for {limit} "
            f"(retry in {wait} s). Otherwise two machines run with this host's state file or its "
            "agent.toml and token (a cloned machine image?): stop the agent on the machine that is "
            f"not {name!r}, delete its state file, and give it its own host name and agent token",
            retry_after=wait,
        )
        self.event: dict[str, Any] = {
            "at": now,
            "actor": actor,
            "action": "agent_conflict",
            "host": name,
            "message": f"host {name}: agent instance {instance_tag(instance)} refused, instance "
            f"{instance_tag(row.agent_instance)} was heard {age:.0f} s ago (a restarted agent takes over "
            f"after {limit} of silence; otherwise two machines share this host's state file or token)",
            "detail": {
                "instance": instance_tag(instance),
                "live_instance": instance_tag(row.agent_instance),
                "host_id": row.host_id,
            },
        }

    def record(self, conn: sa.Connection) -> None:
        record(conn, **self.event)


def agent_conflict(
    row: Any, name: str, instance: str, *, now: datetime, takeover_after: timedelta, actor: str
) -> AgentConflict | None:
    """The refusal of ``instance`` on a host row (``agent_instance``, ``agent_seen_at``,
    ``host_id``), or ``None`` when it may report: no agent recorded, the same one, or the
    recorded one silent for ``takeover_after``."""
    if row.agent_instance == instance or agent_live(row, now, takeover_after) is None:
        return None
    return AgentConflict(row, name, instance, now=now, takeover_after=takeover_after, actor=actor)


# ---------------------------------------------------------------- liveness


_HEARTBEAT = (
    hosts.update()
    .where(hosts.c.name == sa.bindparam("host_name"), hosts.c.marked_down.is_(False))
    .values(last_seen_at=sa.bindparam("now"))
)
_HEARTBEAT_OF_AGENT = (
    hosts.update()
    .where(
        hosts.c.name == sa.bindparam("host_name"),
        hosts.c.marked_down.is_(False),
        hosts.c.agent_instance == sa.bindparam("instance"),
    )
    .values(last_seen_at=sa.bindparam("now"), agent_seen_at=sa.bindparam("now"))
)
_HEARTBEAT_OF_AGENT_WITH_ID = _HEARTBEAT_OF_AGENT.where(
    sa.or_(hosts.c.host_id.is_(None), hosts.c.host_id == sa.bindparam("machine_id"))
)


def id_fence(name: str) -> errors.DevassignError:
    """The refusal of an agent token's report or heartbeat that names no host id, for a host
    registered with one: a machine holding a copy of the host's token (not its state file)
    was taken for the host by leaving the id out."""
    return errors.DevassignError(
        errors.HOST_ID_MISMATCH,
        f"host {name!r} is registered with a host id, and this agent sends none: an agent's "
        "report and heartbeat name the host id of its state file (devassign's agent always does)",
    )


def heartbeat(
    conn: sa.Connection,
    name: str,
    *,
    now: datetime,
    actor: str,
    instance: str | None = None,
    host_id: str | None = None,
    takeover_after: timedelta = AGENT_TAKEOVER_AFTER,
    by_agent: bool = False,
) -> None:
    """One statement in the common case (the host is up, and the instance, if sent, is the
    recorded one): heartbeats are the busiest call.

    ``instance`` is the agent process's id; a heartbeat from another process while the
    recorded one is live is refused (:class:`AgentConflict`), one after its silence takes over.
    ``host_id``, when sent, must be the host's (``host_id_mismatch``): a machine refused as the
    host may not keep it up, nor take its agent over by heartbeats, whatever instance it names.
    """
    params: dict[str, Any] = {"host_name": name, "now": now}
    if instance is not None:
        params["instance"] = instance
    if host_id is not None:
        params["machine_id"] = host_id
    fast: sa.Update | None
    if instance is not None:
        # The recorded process's own heartbeat: its instance (a secret of that process) is
        # its proof; a new process's is checked below.
        fast = _HEARTBEAT_OF_AGENT if host_id is None else _HEARTBEAT_OF_AGENT_WITH_ID
    else:
        fast = None if host_id is not None else _HEARTBEAT
    if fast is not None and conn.execute(fast, params).rowcount == 1:
        return
    row = conn.execute(
        sa.select(
            hosts.c.id, hosts.c.marked_down, hosts.c.host_id, hosts.c.agent_instance, hosts.c.agent_seen_at
        ).where(hosts.c.name == name)
    ).first()
    if row is None:
        raise errors.DevassignError(
            errors.HOST_NOT_FOUND, f"host {name!r} has never reported: send a full inventory first"
        )
    if host_id is not None and row.host_id and row.host_id != host_id:
        raise errors.DevassignError(
            errors.HOST_ID_MISMATCH,
            # Never the registered id: with the host's token, it is what lets a machine in.
            f"host {name!r} is registered with another host id than this agent's {host_id}: this "
            f"machine is not {name!r} (its agent.toml and token copied from it?)",
        )
    values: dict[str, Any] = {"last_seen_at": now, "marked_down": False}
    update = hosts.update().where(hosts.c.id == row.id)
    if instance is not None:
        conflict = agent_conflict(row, name, instance, now=now, takeover_after=takeover_after, actor=actor)
        if conflict is not None:
            raise conflict
        if by_agent and host_id is None and row.host_id and instance != row.agent_instance:
            # Another process than the recorded one, with no host id: it would take the host
            # over after the recorded one's silence on the strength of the token alone.
            raise id_fence(name)
        values.update(agent_instance=instance, agent_seen_at=now)
        update = update.where(may_act(instance, now - takeover_after))
    if conn.execute(update.values(**values)).rowcount != 1:
        # Deleted, or taken by another agent since the read: the retry answers which.
        raise ConcurrentChange(f"host {name} changed while its heartbeat was taken")
    if row.marked_down:
        record(conn, at=now, actor=actor, action="host_up", host=name, message=f"host {name} is up")


# How far ahead of the sweeping server's clock a recorded time may be before it is taken for
# one written before that clock stepped back. Replicas' clocks kept by NTP differ by far less;
# a smaller step delays a silent host's down, or a takeover, by that step at most.
CLOCK_TOLERANCE = timedelta(seconds=30)


def mark_down(conn: sa.Connection, *, now: datetime, down_after: timedelta) -> list[str]:
    """Record hosts whose reports stopped (by the server's clock) as down; returns their names.

    A time of hearing from a host (or its agent process) later than ``now`` by more than
    :data:`CLOCK_TOLERANCE` was written before the server's clock stepped back (or by a replica
    whose clock is ahead): it says nothing of how long the host has been silent, and left as it
    is it would keep a dead host up, and its restarted agent refused, until the clock caught up
    with it (hours, after a step of hours). It is counted from now instead."""
    cutoff, later = now - down_after, now + CLOCK_TOLERANCE
    ahead = sa.or_(hosts.c.last_seen_at > later, hosts.c.agent_seen_at > later)
    silent = sa.and_(hosts.c.marked_down.is_(False), hosts.c.last_seen_at < cutoff)
    rows = conn.execute(
        sa.select(hosts.c.id, hosts.c.name, silent.label("silent")).where(sa.or_(silent, ahead))
    ).all()
    if any(not r.silent for r in rows):
        conn.execute(
            hosts.update()
            .where(
                hosts.c.id.in_(
                    sa.select(hosts.c.id)
                    .where(ahead)
                    .order_by(hosts.c.name)
                    .with_for_update(key_share=True)  # locked as lock_host does, in the same order
                    .scalar_subquery()
                )
            )
            .values(
                last_seen_at=sa.case((hosts.c.last_seen_at > now, now), else_=hosts.c.last_seen_at),
                agent_seen_at=sa.case((hosts.c.agent_seen_at > now, now), else_=hosts.c.agent_seen_at),
            )
        )
    rows = [r for r in rows if r.silent]
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
        failpoint("sweep.host_down")
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


# A host's devices (all but removed ones) from its kept counts: ``inventory.total`` per type,
# recounted in the same transaction as every change on the host (``inventory.recount``).
_DEVICE_COUNT = (
    sa.select(sa.func.coalesce(sa.func.sum(inventory.c.total), 0))
    .where(inventory.c.host_id == hosts.c.id)
    .scalar_subquery()
    .label("device_count")
)
_HOST_COLUMNS = (
    hosts.c.id,
    hosts.c.name,
    hosts.c.host_id,
    hosts.c.generation,
    hosts.c.last_report_at,
    hosts.c.last_seen_at,
    hosts.c.created_at,
    _DEVICE_COUNT,
)


def list_hosts(
    conn: sa.Connection,
    *,
    now: datetime,
    down_after: timedelta,
    limit: int | None = None,
    after: str | None = None,
    only: str | None = None,
) -> list[schemas.Host]:
    """Hosts by name: all of them, or a page of ``limit`` after the name ``after`` (keyset
    paging: a page costs the same at any depth). ``only``: just that host (an agent's scope).

    Device counts come from the kept per-host counts, never from counting ``devices``."""
    q = sa.select(*_HOST_COLUMNS).order_by(hosts.c.name)
    if after is not None:
        q = q.where(hosts.c.name > after)
    if only is not None:
        q = q.where(hosts.c.name == only)
    if limit is not None:
        q = q.limit(limit)
    return [_host_model(r, now, down_after, int(r.device_count)) for r in conn.execute(q)]


def device_counts(
    conn: sa.Connection, *, names: Sequence[str] | None = None, largest: int | None = None
) -> list[tuple[str, int]]:
    """(host, devices) from the kept counts: of the hosts ``names``, or the ``largest`` hosts
    by devices (what bounds how many hosts one explain or capacity call may read)."""
    q = sa.select(hosts.c.name, _DEVICE_COUNT)
    if largest is not None:
        q = q.order_by(_DEVICE_COUNT.desc()).limit(largest)
    if names is None:
        return [(r.name, int(r.device_count)) for r in conn.execute(q)]
    out: list[tuple[str, int]] = []
    wanted = sorted(set(names))
    for i in range(0, len(wanted), NAMES_PER_STATEMENT):
        chunk = wanted[i : i + NAMES_PER_STATEMENT]
        out += [(r.name, int(r.device_count)) for r in conn.execute(q.where(hosts.c.name.in_(chunk)))]
    return out


def count_hosts(conn: sa.Connection, *, up_since: datetime, only: str | None = None) -> tuple[int, int]:
    """(hosts, of which up): one pass over ``hosts``, no device read."""
    q = sa.select(sa.func.count(), sa.func.count().filter(hosts.c.last_seen_at >= up_since)).select_from(
        hosts
    )
    if only is not None:
        q = q.where(hosts.c.name == only)
    total, up = conn.execute(q).one()
    return int(total), int(up)


# PostgreSQL takes at most 65,535 parameters a statement: host names are looked up this many at a time.
NAMES_PER_STATEMENT = 1000


def taint_candidates(conn: sa.Connection, found: list[schemas.Host]) -> list[schemas.Host]:
    """The hosts of ``found`` whose taints must be read: all of a page, and of a longer
    listing those with a row in ``taints`` (one small query instead of naming every host)."""
    if len(found) <= NAMES_PER_STATEMENT:
        return found
    q = sa.select(hosts.c.name).where(hosts.c.id.in_(sa.select(taints.c.host_id)))
    tainted = set(conn.execute(q).scalars())
    return [h for h in found if h.name in tainted]


def get_host(conn: sa.Connection, name: str, *, now: datetime, down_after: timedelta) -> schemas.Host:
    r = conn.execute(sa.select(*_HOST_COLUMNS).where(hosts.c.name == name)).first()
    if r is None:
        raise errors.DevassignError(errors.HOST_NOT_FOUND, f"no host {name!r}")
    return _host_model(r, now, down_after, int(r.device_count))


def delete_host(
    conn: sa.Connection,
    name: str,
    *,
    now: datetime,
    actor: str,
    down_after: timedelta | None = None,
    force: bool = False,
) -> None:
    """Forget a host whose devices are free. One whose agent was heard within ``down_after``
    is refused unless ``force``: that agent would register it again at its next report, as a
    new host without the taints that drained it."""
    r = conn.execute(sa.select(hosts.c.id, hosts.c.last_seen_at).where(hosts.c.name == name)).first()
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
    seen = aware(r.last_seen_at)
    if not force and down_after is not None and seen is not None and now - seen < down_after:
        raise errors.DevassignError(
            errors.INVALID_STATE,
            f"host {name!r} was heard from {max(0, int((now - seen).total_seconds()))} s ago (a report "
            "or heartbeat): its agent would register it again at its next report (without its "
            "taints). Stop the agent and revoke its token first, then delete it once it is down; or "
            "force it (`--force`, ?force=true) for a machine whose new agent reports under a new "
            "host id",
        )
    dev_ids = sa.select(devices.c.id).where(devices.c.host_id == r.id)
    conn.execute(allocation_items.delete().where(allocation_items.c.device_id.in_(dev_ids)))
    # Finished moves from or to this host name its (released) allocations; a pending one would
    # hold a live allocation here, refused above. Their story stays in the event log.
    here = sa.select(allocations.c.id).where(allocations.c.host_id == r.id)
    conn.execute(
        moves.delete().where(
            sa.or_(
                moves.c.source_host_id == r.id,
                moves.c.target_host_id == r.id,
                moves.c.source_allocation_id.in_(here),
                moves.c.target_allocation_id.in_(here),
            )
        )
    )
    # Devices retired while they still owed a cleanup (missing when released, then cleared):
    # their rows go, so the event keeps their addresses, and a host registered again under
    # this name cleans them first if they come back (inventory.owed_cleanups).
    owed = sorted(
        conn.execute(
            sa.select(devices.c.address).where(
                devices.c.host_id == r.id,
                devices.c.state == DeviceState.REMOVED.value,
                devices.c.prior_state == DeviceState.CLEANING.value,
            )
        ).scalars()
    )
    conn.execute(allocations.delete().where(allocations.c.host_id == r.id))
    conn.execute(devices.delete().where(devices.c.host_id == r.id))
    conn.execute(inventory.delete().where(inventory.c.host_id == r.id))
    conn.execute(hosts.delete().where(hosts.c.id == r.id))
    message = f"host {name} deleted"
    if owed:
        message += (
            f"; {len(owed)} device(s) retired before their cleanup are cleaned first if they come "
            f"back under this name: {', '.join(owed[:4])}{', ...' if len(owed) > 4 else ''}"
        )
    record(
        conn,
        at=now,
        actor=actor,
        action="host_deleted",
        host=name,
        message=message,
        detail={"uncleaned": owed} if owed else None,
    )


def rename_host(
    conn: sa.Connection, old: str, new: str, *, now: datetime, actor: str, down_after: timedelta
) -> schemas.Host:
    """The same machine (its row, devices, allocations and host id) under a new name.

    An admin's decision, never an agent's: a host id stays with the name it was first
    reported under. The old name's agent token does not follow (tokens are bound to a name),
    and the agent instance is forgotten, so the agent reconfigured for the new name (a new
    process) is taken at once.
    """
    if not HOST_RE.fullmatch(new):
        raise errors.DevassignError(
            errors.INVALID_REQUEST, f"{new!r} is not a host name: letters, digits, _ . - (up to 253)"
        )
    r = conn.execute(sa.select(hosts.c.id, hosts.c.host_id).where(hosts.c.name == old)).first()
    if r is None:
        raise errors.DevassignError(errors.HOST_NOT_FOUND, f"no host {old!r}")
    if new == old:
        raise errors.DevassignError(errors.HOST_EXISTS, f"host {old!r} is already called {new!r}")
    if conn.execute(sa.select(hosts.c.id).where(hosts.c.name == new)).first() is not None:
        raise errors.DevassignError(
            errors.HOST_EXISTS,
            f"a host named {new!r} is already registered: delete it first (`devassign host delete "
            f"{new}`, when its devices are free) or choose another name",
        )
    moved = conn.execute(
        hosts.update()
        .where(hosts.c.id == r.id, hosts.c.name == old)
        .values(name=new, agent_instance=None, agent_seen_at=None)
    ).rowcount
    if moved != 1:
        raise ConcurrentChange(f"host {old} changed while being renamed")
    # The machine's history goes with it: events are kept by host name, and a new machine
    # registered under the old name must not read the tenants of this one.
    conn.execute(events.update().where(events.c.host == old).values(host=new))
    record(
        conn,
        at=now,
        actor=actor,
        action="host_renamed",
        host=new,
        message=f"host {old} renamed to {new}; its agent needs a token for {new}",
        detail={"old_name": old, "new_name": new, "host_id": r.host_id},
    )
    return get_host(conn, new, now=now, down_after=down_after)


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


def _facts(r: Any) -> dict[str, Any]:
    """A device row's facts (schemas.DEVICE_FACTS); its JSON ones empty rather than NULL."""
    out = {name: getattr(r, name) for name in schemas.DEVICE_FACTS}
    for name in ("attributes", "pool_counters", "consumes"):
        out[name] = out[name] or {}
    return out


def device_model(r: Any) -> schemas.Device:
    return schemas.Device(
        **_facts(r),
        id=r.id,
        host=r.host_name,
        type=r.type_name,
        state=r.state,
        healthy=r.healthy,
        consumer=r.consumer,
        quarantine_reason=r.quarantine_reason,
        health_reason=r.health_reason,
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
    after: tuple[str, str] | None = None,
) -> list[schemas.Device]:
    """Devices by (host name, address); ``after``: only those after that (host, address), the
    keyset of the page before (an index walk from there, where ``offset`` skips rows)."""
    q = device_query().order_by(hosts.c.name, devices.c.address).limit(limit).offset(offset)
    if after is not None:
        h, a = after
        q = q.where(sa.or_(hosts.c.name > h, sa.and_(hosts.c.name == h, devices.c.address > a)))
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
