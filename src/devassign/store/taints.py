"""Taints: devices, parents and hosts taken out of service (Kubernetes DRA's device taints).

Each change is one transaction that locks the host first (the lock order of every writer of a
host's devices), writes ``taints``, recomputes ``devices.taint`` of that host
(``store/taint_marks.py``) and its ``inventory`` counts, and records the event. A claim
holds the same lock and takes only devices whose ``taint`` is NULL, so a device tainted
before a claim committed is never in that claim.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from devassign import errors, schemas
from devassign.domain import DeviceState
from devassign.store.events import aware, record
from devassign.store.inventory import lock_host, recount
from devassign.store.moves import is_internal, target_consumers
from devassign.store.schema import allocations, devices, hosts, taints, tokens
from devassign.store.taint_marks import Covering, applies, lineage, live, mark_tainted

# Live taints one host may have (its own, its parents' and its devices'): what an operator
# or the host's agent sets, never thousands (each is listed with every device it covers).
MAX_TAINTS_PER_HOST = 100

# A holder of one of these is asked to move when its device is drained.
_HELD = (DeviceState.RESERVED.value, DeviceState.ASSIGNED.value, DeviceState.MISSING.value)


def _host_row(conn: sa.Connection, name: str) -> Any:
    r = conn.execute(sa.select(hosts.c.id, hosts.c.name).where(hosts.c.name == name)).first()
    if r is None:
        raise errors.DevassignError(errors.HOST_NOT_FOUND, f"no host {name!r}")
    return r


def device_host(conn: sa.Connection, device_id: str) -> str:
    """The name of the host of a device (404 for an unknown one)."""
    name = conn.execute(
        sa.select(hosts.c.name)
        .select_from(devices.join(hosts, hosts.c.id == devices.c.host_id))
        .where(devices.c.id == device_id)
    ).scalar_one_or_none()
    if name is None:
        raise errors.DevassignError(errors.DEVICE_NOT_FOUND, f"no device with id {device_id!r}")
    return str(name)


def _expiry(body: schemas.TaintCreate, now: datetime) -> datetime | None:
    if body.expires_in is not None:
        return now + body.expires_in
    if body.expires_at is not None and body.expires_at <= now:
        raise errors.DevassignError(
            errors.INVALID_REQUEST,
            f"expires_at {body.expires_at.isoformat()} is in the past; give a later time or leave it out",
        )
    return body.expires_at


def _target_phrase(host: str, device: str | None, parent: str | None) -> str:
    if device is not None:
        return f"{host} {device}"
    if parent is not None:
        return f"{host} {parent} and the devices under it"
    return f"host {host}"


def add_taint(
    conn: sa.Connection,
    body: schemas.TaintCreate,
    *,
    host: str | None = None,
    device_id: str | None = None,
    now: datetime,
    actor: str,
    by_agent: bool = False,
) -> schemas.Taint:
    """Taint one device (``device_id``), or a host's parent (``body.parent``) or whole host.
    ``by_agent``: the host's agent sets it (and so may lift it again)."""
    address = None
    if device_id is not None:
        if body.parent is not None:
            raise errors.DevassignError(
                errors.INVALID_REQUEST, "parent is for a host's taints: POST /v1/hosts/{host}/taints"
            )
        host = device_host(conn, device_id)
    assert host is not None
    h = _host_row(conn, host)
    lock_host(conn, h.id)
    held = conn.execute(
        sa.select(sa.func.count()).select_from(taints).where(taints.c.host_id == h.id, live(now))
    ).scalar_one()
    if held >= MAX_TAINTS_PER_HOST:
        raise errors.DevassignError(
            errors.TOO_MANY_TAINTS,
            f"host {host} has {held} live taints, the most one host may have: remove one "
            "(devassign host untaint) or let one expire, or taint the host or a parent once "
            "instead of many devices",
        )
    if device_id is not None:
        address = conn.execute(
            sa.select(devices.c.address).where(devices.c.id == device_id, devices.c.host_id == h.id)
        ).scalar_one_or_none()
        if address is None:  # moved or deleted meanwhile
            raise errors.DevassignError(errors.DEVICE_NOT_FOUND, f"no device with id {device_id!r}")
    if body.parent is not None:
        known = conn.execute(
            sa.select(devices.c.id).where(
                devices.c.host_id == h.id,
                sa.or_(
                    devices.c.address == body.parent,
                    devices.c.parent == body.parent,
                    devices.c.pool == body.parent,
                ),
            )
        ).first()
        if known is None:
            raise errors.DevassignError(
                errors.DEVICE_NOT_FOUND, f"host {host} has no device {body.parent!r} nor devices under it"
            )
    expires_at = _expiry(body, now)
    taint_id = conn.execute(
        taints.insert()
        .values(
            host_id=h.id,
            device_id=device_id,
            parent=body.parent,
            effect=body.effect,
            reason=body.reason,
            set_by=actor,
            by_agent=by_agent,
            created_at=now,
            expires_at=expires_at,
        )
        .returning(taints.c.id)
    ).scalar_one()
    mark_tainted(conn, h.id, now)
    recount(conn, h.id)
    row = conn.execute(sa.select(taints).where(taints.c.id == taint_id)).one()
    target = _target_phrase(host, address, body.parent)
    until = f" until {expires_at:%Y-%m-%d %H:%M:%S}" if expires_at else ""
    record(
        conn,
        at=now,
        actor=actor,
        action="device_tainted",
        host=host,
        device=address or body.parent,
        device_id=device_id,
        message=f"{target} tainted {body.effect}: {body.reason}{until}",
        detail={"taint": taint_id, "effect": body.effect, "reason": body.reason},
    )
    if body.effect == "Drain":
        _request_drain(conn, row, host, now=now, actor=actor)
    return _model(row, host, address)


def _request_drain(conn: sa.Connection, taint: Any, host: str, *, now: datetime, actor: str) -> None:
    """Ask each consumer holding a drained device to move: one ``drain_requested`` per consumer.

    Nothing is taken away: the devices stay theirs until they release them.
    """
    held = conn.execute(
        sa.select(devices.c.id, devices.c.address, devices.c.parent, allocations.c.consumer)
        .select_from(devices.join(allocations, allocations.c.id == devices.c.allocation_id))
        .where(
            devices.c.host_id == taint.host_id,
            devices.c.state.in_(_HELD),
            allocations.c.released_at.is_(None),
        )
        .order_by(allocations.c.consumer, devices.c.address)
    ).all()
    above = lineage(
        conn.execute(
            sa.select(devices.c.address, devices.c.parent, devices.c.pool).where(
                devices.c.host_id == taint.host_id
            )
        )
    )
    per_consumer: dict[str, list[Any]] = {}
    for d in held:
        if applies(taint, d.id, d.address, above.get(d.address, frozenset())):
            per_consumer.setdefault(d.consumer, []).append(d)
    # A pending move's target devices are held by its internal consumer: the consumer being
    # moved is the one to tell (and its move can no longer be committed: moves.commit).
    moving = target_consumers(conn, [c for c in per_consumer if is_internal(c)])
    for holder, ds in per_consumer.items():
        consumer = moving.get(holder, holder)
        if holder in moving:
            message = (
                f"{consumer} is asked to abort its move to {host}: {len(ds)} of the devices held "
                f"for it there are drained ({taint.reason}); the move cannot be committed now"
            )
        else:
            message = (
                f"{consumer} is asked to move off {host}: {len(ds)} of its devices "
                f"{'is' if len(ds) == 1 else 'are'} drained "
                f"({taint.reason}); they stay its own until it releases them"
            )
        record(
            conn,
            at=now,
            actor=actor,
            action="drain_requested",
            host=host,
            consumer=consumer,
            device_id=ds[0].id if len(ds) == 1 else None,
            device=ds[0].address if len(ds) == 1 else None,
            message=message,
            detail={"taint": taint.id, "reason": taint.reason, "devices": [d.id for d in ds]},
        )


def remove_taints(
    conn: sa.Connection,
    *,
    host: str | None = None,
    device_id: str | None = None,
    parent: str | None = None,
    taint_id: int | None = None,
    now: datetime,
    actor: str,
    action: str = "device_untainted",
    agent: bool = False,
) -> list[schemas.Taint]:
    """Remove one taint (``taint_id``) of the target, or all of them; the removed ones.

    The target is a device (its own taints), a host's parent, or a host (every taint of the
    host, its devices' and parents' included, unless ``taint_id`` names one). Removing nothing
    is not an error for "all" (a second untaint is harmless); an unknown ``taint_id`` is 404.
    A host's ``agent`` removes only the taints an agent set: an operator's taint (a host under
    investigation) is the operator's to lift (403 for that one; "all" leaves it).
    """
    if device_id is not None:
        host = device_host(conn, device_id)
    assert host is not None
    h = _host_row(conn, host)
    lock_host(conn, h.id)
    q = sa.select(taints).where(taints.c.host_id == h.id)
    if device_id is not None:
        q = q.where(taints.c.device_id == device_id)
    if parent is not None:
        q = q.where(taints.c.parent == parent)
    if taint_id is not None:
        q = q.where(taints.c.id == taint_id)
    rows = conn.execute(q.order_by(taints.c.id)).all()
    if taint_id is not None and not rows:
        where = f"device {device_id}" if device_id else f"host {host}"
        raise errors.DevassignError(errors.NOT_FOUND, f"{where} has no taint {taint_id}")
    if agent:
        rows = _set_by_agents(conn, host, rows, taint_id, actor)
    if not rows:
        return []
    conn.execute(taints.delete().where(taints.c.id.in_([r.id for r in rows])))
    mark_tainted(conn, h.id, now)
    recount(conn, h.id)
    addresses = _addresses(conn, [r.device_id for r in rows if r.device_id])
    removed = [_model(r, host, addresses.get(r.device_id)) for r in rows]
    for t in removed:
        target = _target_phrase(host, t.device, t.parent)
        verb = "expired" if action == "taint_expired" else "removed"
        record(
            conn,
            at=now,
            actor=actor,
            action=action,
            host=host,
            device=t.device or t.parent,
            device_id=t.device_id,
            message=f"{t.effect} taint of {target} {verb} ({t.reason}, set by {t.set_by})",
            detail={"taint": t.id, "effect": t.effect, "reason": t.reason},
        )
    return removed


def _set_by_agents(
    conn: sa.Connection, host: str, rows: Sequence[Any], taint_id: int | None, actor: str
) -> list[Any]:
    """Of ``rows``, the taints an agent set (this host's: an agent taints its own host only);
    one named by ``taint_id`` that an operator set is refused. Told from what was recorded when
    the taint was set, never from its setter's name (a label an admin chooses), except for a
    taint this very agent set through a server that did not record it yet (a replica of an
    older version during a rolling upgrade): its name, where no token but an agent's has it."""
    own = {r.id for r in rows if not r.by_agent and r.set_by == actor}
    if (
        own
        and conn.execute(
            sa.select(tokens.c.id).where(tokens.c.name == actor, tokens.c.role != "agent").limit(1)
        ).first()
    ):
        own = set()
    if taint_id is not None and rows and not rows[0].by_agent and rows[0].id not in own:
        raise errors.DevassignError(
            errors.FORBIDDEN,
            f"taint {taint_id} of host {host} was set by {rows[0].set_by}, not by an agent: "
            "an admin removes it",
        )
    return [r for r in rows if r.by_agent or r.id in own]


def expired_hosts(conn: sa.Connection, now: datetime) -> list[str]:
    """Hosts with a taint past its expiry."""
    return list(
        conn.execute(
            sa.select(hosts.c.name)
            .join(taints, taints.c.host_id == hosts.c.id)
            .where(taints.c.expires_at.is_not(None), taints.c.expires_at <= now)
            .distinct()
        ).scalars()
    )


def expire_host(conn: sa.Connection, host: str, *, now: datetime) -> int:
    """Remove the host's expired taints in one transaction; how many."""
    h = conn.execute(sa.select(hosts.c.id).where(hosts.c.name == host)).first()
    if h is None:
        return 0
    lock_host(conn, h.id)
    ids = conn.execute(
        sa.select(taints.c.id).where(
            taints.c.host_id == h.id, taints.c.expires_at.is_not(None), taints.c.expires_at <= now
        )
    ).scalars()
    n = 0
    for taint_id in ids.all():
        n += len(
            remove_taints(conn, host=host, taint_id=taint_id, now=now, actor="server", action="taint_expired")
        )
    return n


def _addresses(conn: sa.Connection, ids: Sequence[str]) -> dict[str, str]:
    if not ids:
        return {}
    return dict(conn.execute(sa.select(devices.c.id, devices.c.address).where(devices.c.id.in_(ids))).all())


def _model(r: Any, host: str, address: str | None) -> schemas.Taint:
    return schemas.Taint(
        id=r.id,
        host=host,
        device_id=r.device_id,
        device=address,
        parent=r.parent,
        effect=r.effect,
        reason=r.reason,
        set_by=r.set_by,
        created_at=aware(r.created_at) or r.created_at,
        expires_at=aware(r.expires_at),
    )


_LIST = (
    sa.select(taints, hosts.c.name.label("host_name"), devices.c.address.label("device_address"))
    .join(hosts, hosts.c.id == taints.c.host_id)
    .outerjoin(devices, devices.c.id == taints.c.device_id)
)


def list_taints(
    conn: sa.Connection, *, now: datetime, host: str | None = None, device_id: str | None = None
) -> list[schemas.Taint]:
    """Active taints (an expired one is not shown, even before the sweeper removes it)."""
    q = _LIST.where(live(now)).order_by(hosts.c.name, taints.c.id)
    if host is not None:
        q = q.where(hosts.c.name == host)
    if device_id is not None:
        q = q.where(taints.c.device_id == device_id)
    return [_model(r, r.host_name, r.device_address) for r in conn.execute(q)]


def of_hosts(conn: sa.Connection, names: Sequence[str], now: datetime) -> dict[str, list[schemas.Taint]]:
    """Per host name, its active taints of every target (device, parent, whole host)."""
    if not names:
        return {}
    out: dict[str, list[schemas.Taint]] = {}
    q = _LIST.where(live(now), hosts.c.name.in_(sorted(set(names)))).order_by(taints.c.id)
    for r in conn.execute(q):
        out.setdefault(r.host_name, []).append(_model(r, r.host_name, r.device_address))
    return out


def with_taints(conn: sa.Connection, found: list[schemas.Device], now: datetime) -> list[schemas.Device]:
    """The devices with the active taints that cover each (its own, those of a device it is
    part of, its host's)."""
    by_host = of_hosts(conn, [d.host for d in found], now)
    if not by_host:
        return found
    parented = sorted(h for h, ts in by_host.items() if any(t.parent is not None for t in ts))
    above: dict[str, dict[str, frozenset[str]]] = {}
    if parented:
        rows = conn.execute(
            sa.select(hosts.c.name, devices.c.address, devices.c.parent, devices.c.pool)
            .join(hosts, hosts.c.id == devices.c.host_id)
            .where(hosts.c.name.in_(parented))
        ).all()
        per_host: dict[str, list[Any]] = {}
        for r in rows:
            per_host.setdefault(r.name, []).append(r)
        above = {name: lineage(rs) for name, rs in per_host.items()}
    index = {name: Covering(ts) for name, ts in by_host.items()}
    out = []
    for d in found:
        up = above.get(d.host, {}).get(d.address, frozenset())
        covering = index[d.host].of(d.id, d.address, up) if d.host in index else []
        out.append(d.model_copy(update={"taints": covering}) if covering else d)
    return out


def hosts_with_taints(conn: sa.Connection, found: list[schemas.Host], now: datetime) -> list[schemas.Host]:
    """The hosts with all their active taints."""
    by_host = of_hosts(conn, [h.name for h in found], now)
    return [h.model_copy(update={"taints": by_host[h.name]}) if h.name in by_host else h for h in found]


def tainted_counts(
    conn: sa.Connection, up_since: datetime | None, names: Sequence[str] = ()
) -> dict[int, int]:
    """Per type id: free devices (of hosts that are up; of the hosts ``names``, when given)
    that a taint keeps from new claims.

    Only hosts with a row in ``taints`` can have tainted devices (taint_marks.py): the read
    starts from them, not from every free device of the region (1.6 M at 100,000 hosts)."""
    up = sa.true() if up_since is None else hosts.c.last_seen_at >= up_since
    if names:
        up = sa.and_(up, hosts.c.name.in_(sorted(set(names))))
    q = (
        sa.select(devices.c.type_id, sa.func.count())
        .select_from(devices.join(hosts, hosts.c.id == devices.c.host_id))
        .where(
            devices.c.host_id.in_(sa.select(taints.c.host_id)),
            devices.c.state == DeviceState.AVAILABLE.value,
            devices.c.taint.is_not(None),
            up,
        )
        .group_by(devices.c.type_id)
    )
    return {t: int(n) for t, n in conn.execute(q)}


def taint_texts(
    conn: sa.Connection, type_ids: Sequence[int], up_since: datetime | None, names: Sequence[str] = ()
) -> dict[int, list[tuple[str, int]]]:
    """Per type id: the taints that keep free devices of up hosts (of ``names``, when given)
    from new claims, each with how many devices it holds back, most first: why a refusal's
    hosts lack devices only because of taints, when no host reached the scheduler to say so."""
    up = sa.true() if up_since is None else hosts.c.last_seen_at >= up_since
    if names:
        up = sa.and_(up, hosts.c.name.in_(sorted(set(names))))
    n = sa.func.count().label("n")
    q = (
        sa.select(devices.c.type_id, devices.c.taint, n)
        .select_from(devices.join(hosts, hosts.c.id == devices.c.host_id))
        .where(
            devices.c.host_id.in_(sa.select(taints.c.host_id)),
            devices.c.type_id.in_(list(type_ids)),
            devices.c.state == DeviceState.AVAILABLE.value,
            devices.c.taint.is_not(None),
            up,
        )
        .group_by(devices.c.type_id, devices.c.taint)
        .order_by(n.desc(), devices.c.taint)
    )
    out: dict[int, list[tuple[str, int]]] = {}
    for type_id, text, count in conn.execute(q):
        found = out.setdefault(type_id, [])
        if len(found) < MAX_TAINT_TEXTS:
            found.append((str(text), int(count)))
    return out


MAX_TAINT_TEXTS = 3  # per type: a refusal names the few taints that hold back most
