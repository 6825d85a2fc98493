"""The resource-type catalog: one definition of each type for the whole cloud."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from devassign import errors, schemas
from devassign.domain import MAX_JSON_DEPTH, DeviceState, cut_too_deep
from devassign.scheduler.errors import RequestError
from devassign.scheduler.request import parse_claim
from devassign.store.events import aware, record
from devassign.store.moves import is_internal
from devassign.store.quotas import lock_type_gate
from devassign.store.schema import allocations, devices, hosts, inventory, quotas, resource_types, taints

log = logging.getLogger(__name__)


# States a free device is not in: counted from ``devices`` through its ``state`` index, at a
# cost that grows with the devices held or out of service, never with the free ones.
_NOT_FREE = [s.value for s in DeviceState if s is not DeviceState.AVAILABLE]


def _counts(
    conn: sa.Connection, type_id: int | None = None, *, up_since: datetime | None = None
) -> dict[int, schemas.StateCounts]:
    """Devices per type and state, without reading the free ones.

    ``total``, ``available`` (free, schedulable, on up hosts) and ``partitioned`` (free but
    their pool cannot give them) come from the kept per-host counts (``inventory``); the other
    states from the devices in them; ``tainted`` from the hosts that have a taint. Free
    devices of down hosts are ``down``: nothing can be placed on them until their host
    reports again."""
    up = sa.true() if up_since is None else hosts.c.last_seen_at >= up_since
    down = (
        sa.false()
        if up_since is None
        else sa.or_(hosts.c.last_seen_at.is_(None), hosts.c.last_seen_at < up_since)
    )
    kept = sa.select(
        inventory.c.type_id,
        sa.func.sum(inventory.c.total),
        sa.func.sum(inventory.c.available),
        sa.func.sum(inventory.c.carved),
    ).group_by(inventory.c.type_id)
    # Then the free ones of down hosts taken back out: few hosts, found by their own row.
    of_down = (
        sa.select(inventory.c.type_id, sa.func.sum(inventory.c.available), sa.func.sum(inventory.c.carved))
        .select_from(hosts.join(inventory, inventory.c.host_id == hosts.c.id))
        .where(down)
        .group_by(inventory.c.type_id)
    )
    held = (
        sa.select(devices.c.type_id, devices.c.state, sa.func.count())
        .where(devices.c.state.in_(_NOT_FREE))
        .group_by(devices.c.type_id, devices.c.state)
    )
    # ``devices.taint`` is only ever set on a host with a row in ``taints`` (taint_marks.py).
    tainted = (
        sa.select(
            devices.c.type_id,
            sa.func.sum(sa.case((up, 1), else_=0)),
            sa.func.sum(sa.case((up, 0), else_=1)),
        )
        .select_from(devices.join(hosts, hosts.c.id == devices.c.host_id))
        .where(
            devices.c.host_id.in_(sa.select(taints.c.host_id)),
            devices.c.state == DeviceState.AVAILABLE.value,
            devices.c.taint.is_not(None),
        )
        .group_by(devices.c.type_id)
    )
    if type_id is not None:
        kept = kept.where(inventory.c.type_id == type_id)
        of_down = of_down.where(inventory.c.type_id == type_id)
        held = held.where(devices.c.type_id == type_id)
        tainted = tainted.where(devices.c.type_id == type_id)
    out: dict[int, dict[str, int]] = {}
    for tid, total, available, carved in conn.execute(kept):
        out[tid] = {
            "total": int(total or 0),
            "available": int(available or 0),
            "partitioned": int(carved or 0),
        }
    for tid, available, carved in conn.execute(of_down):
        c = out.setdefault(tid, {"available": 0, "partitioned": 0})
        c["available"] -= int(available or 0)
        c["partitioned"] -= int(carved or 0)
        c["down"] = int(available or 0) + int(carved or 0)
    for tid, state, n in conn.execute(held):
        out.setdefault(tid, {})[state] = int(n)
    for tid, n_up, n_down in conn.execute(tainted):
        c = out.setdefault(tid, {})
        c["tainted"] = int(n_up or 0)
        c["down"] = c.get("down", 0) + int(n_down or 0)
    return {tid: schemas.StateCounts(**c) for tid, c in out.items()}


def _readable_json(row: Any, column: str) -> Any:
    value = getattr(row, column)
    # The type's own object is at depth 1 of the catalog's entry for the type.
    shown = cut_too_deep(value, limit=MAX_JSON_DEPTH - 1)
    if shown is not value:
        log.warning(
            "resource type %s: its %s nests deeper than %d levels and is shown cut off; set it again",
            row.name,
            column,
            MAX_JSON_DEPTH,
        )
    return shown


def _declared(row: Any) -> dict[str, schemas.ParamSpec]:
    """The type's declared params by name (PostgreSQL keeps no order in JSON); one stored in a
    form this version refuses is left out (claims refuse it too) and logged, instead of failing
    every read of the catalog."""
    out = {}
    for name, raw in sorted((row.params or {}).items()):
        try:
            out[name] = schemas.ParamSpec.model_validate(raw)
        except ValueError as exc:
            log.warning(
                "resource type %s: declared param %r is not valid (%s); set it again", row.name, name, exc
            )
    return out


def _stored(params: dict[str, schemas.ParamSpec]) -> dict[str, Any]:
    return {name: spec.model_dump(mode="json", exclude_none=True) for name, spec in params.items()}


def declared_params(conn: sa.Connection, names: list[str]) -> dict[str, dict[str, Any] | None]:
    """The stored declarations of the named types (for a check that runs outside a claim)."""
    rows = conn.execute(
        sa.select(resource_types.c.name, resource_types.c.params).where(
            resource_types.c.name.in_(sorted(set(names)))
        )
    )
    return {r.name: r.params for r in rows}


def _to_model(row: Any, counts: schemas.StateCounts | None) -> schemas.ResourceType:
    return schemas.ResourceType(
        name=row.name,
        description=row.description,
        handler=row.handler,
        config=_readable_json(row, "config") or {},
        attribute_schema=_readable_json(row, "attribute_schema"),
        params=_declared(row),
        counts=counts or schemas.StateCounts(),
        created_at=aware(row.created_at) or row.created_at,
    )


def list_types(conn: sa.Connection, *, up_since: datetime | None = None) -> list[schemas.ResourceType]:
    counts = _counts(conn, up_since=up_since)
    rows = conn.execute(sa.select(resource_types).order_by(resource_types.c.name))
    return [_to_model(r, counts.get(r.id)) for r in rows]


def type_names(conn: sa.Connection) -> list[str]:
    """The catalog's names alone (a filter's choices): no counts read."""
    return list(conn.execute(sa.select(resource_types.c.name).order_by(resource_types.c.name)).scalars())


def _row(conn: sa.Connection, name: str) -> Any:
    row = conn.execute(sa.select(resource_types).where(resource_types.c.name == name)).first()
    if row is None:
        raise errors.DevassignError(
            errors.TYPE_NOT_FOUND,
            f"no resource type {name!r}; `devassign types` lists them",
        )
    return row


def get_type(conn: sa.Connection, name: str, *, up_since: datetime | None = None) -> schemas.ResourceType:
    row = _row(conn, name)
    return _to_model(row, _counts(conn, row.id, up_since=up_since).get(row.id))


def _catalog_changed(conn: sa.Connection) -> None:
    """Every host's next report is applied in full, even if unchanged: a device refused for
    its type (unknown, or a reset policy) may be taken now. Without this the server would skip
    the report by its digest, and the agent's hint to create the type would never come true."""
    conn.execute(hosts.update().where(hosts.c.report_digest.is_not(None)).values(report_digest=None))


def create_type(
    conn: sa.Connection, body: schemas.ResourceTypeCreate, *, now: datetime, actor: str
) -> schemas.ResourceType:
    exists = conn.execute(sa.select(resource_types.c.id).where(resource_types.c.name == body.name)).first()
    if exists:
        raise errors.DevassignError(errors.TYPE_EXISTS, f"resource type {body.name!r} exists")
    _check_config(body.handler, body.config)
    conn.execute(
        resource_types.insert().values(
            name=body.name,
            description=body.description,
            handler=body.handler,
            config=body.config,
            attribute_schema=body.attribute_schema,
            params=_stored(body.params),
            created_at=now,
            updated_at=now,
        )
    )
    _catalog_changed(conn)
    record(
        conn,
        at=now,
        actor=actor,
        action="type_created",
        type=body.name,
        message=f"resource type {body.name} created",
        detail={"description": body.description, "handler": body.handler, "params": sorted(body.params)},
    )
    return get_type(conn, body.name)


def _check_config(handler: str | None, config: dict[str, Any]) -> None:
    from devassign.lifecycle.type_config import config_problem  # the handlers' own: not at every import

    problem = config_problem(handler, config)
    if problem is not None:
        raise errors.DevassignError(errors.INVALID_REQUEST, f"{problem}; docs/lifecycle.md lists them")


def update_type(
    conn: sa.Connection,
    name: str,
    body: schemas.ResourceTypeUpdate,
    *,
    now: datetime,
    actor: str,
    up_since: datetime | None = None,
) -> schemas.ResourceType:
    row = _row(conn, name)
    values: dict[str, Any] = {"updated_at": now}
    if body.description is not None:
        values["description"] = body.description
    if body.config is not None:
        _check_config(row.handler, body.config)
        values["config"] = body.config
        if body.config != (row.config or {}):
            values["config_changed_at"] = now
    if body.params is not None:
        values["params"] = _stored(body.params)
    conn.execute(resource_types.update().where(resource_types.c.id == row.id).values(**values))
    if body.config is not None:
        _catalog_changed(conn)  # e.g. "reset": "none-ok" takes devices refused as no_reset
    record(
        conn,
        at=now,
        actor=actor,
        action="type_updated",
        type=name,
        message=f"resource type {name} updated",
        detail=body.model_dump(exclude_none=True),
    )
    return get_type(conn, name, up_since=up_since)


def _live_requests_naming(conn: sa.Connection, name: str) -> list[str]:
    """Consumers whose live allocation's stored request names type ``name`` (say, as a
    ``first_available`` alternative it did not get). A move places that request again, so the
    type must outlive it. The text match narrows the read; the parse decides."""
    pattern = "%" + name.replace("\\", "\\\\").replace("_", "\\_") + "%"
    rows = conn.execute(
        sa.select(allocations.c.consumer, allocations.c.request)
        .where(
            allocations.c.released_at.is_(None),
            sa.cast(allocations.c.request, sa.Text).like(pattern, escape="\\"),
        )
        .order_by(allocations.c.consumer)
    ).all()
    # A pending move's target allocation (an internal consumer) repeats its source's request,
    # and the source is live while the move is: the source names the type for both.
    return [r.consumer for r in rows if not is_internal(r.consumer) and _may_name(r.request, name)]


# What in a stored request says which devices it may get: the rest (consumer, project, hosts,
# idempotency key, gang) does not, and is not parsed.
_REQUEST_SHAPE = ("requests", "extra_specs", "constraints")


def _may_name(doc: Any, name: str) -> bool:
    """Whether a stored request may be placed on type ``name``; unparsable: yes (refuse the
    delete rather than strand the consumer)."""
    claim = {k: v for k, v in (doc or {}).items() if k in _REQUEST_SHAPE}
    try:
        request = parse_claim(claim)
    except RequestError:
        return True
    return any(a.type == name for r in request.requests for a in r.alternatives)


def delete_type(conn: sa.Connection, name: str, *, now: datetime, actor: str) -> None:
    row = _row(conn, name)
    lock_type_gate(conn, row.id)  # after the claims of this type in flight (quotas.TYPE_GATE)
    used = conn.execute(
        sa.select(sa.func.count()).select_from(devices).where(devices.c.type_id == row.id)
    ).scalar_one()
    if used:
        raise errors.DevassignError(
            errors.TYPE_IN_USE,
            f"resource type {name!r} has {used} devices; remove them from the agents' configuration first",
            devices=used,
        )
    naming = _live_requests_naming(conn, name)
    if naming:
        raise errors.DevassignError(
            errors.TYPE_IN_USE,
            f"resource type {name!r} is named by the request of {len(naming)} live allocation(s) "
            f"({', '.join(naming[:3])}{', ...' if len(naming) > 3 else ''}), as an alternative "
            "they may be moved onto; release them first",
            allocations=len(naming),
        )
    conn.execute(inventory.delete().where(inventory.c.type_id == row.id))
    # A quota of a type that is gone limits nothing; the event says which went with it.
    dropped = {
        r.project: r.limit
        for r in conn.execute(
            quotas.delete().where(quotas.c.type_id == row.id).returning(quotas.c.project, quotas.c.limit)
        )
    }
    conn.execute(resource_types.delete().where(resource_types.c.id == row.id))
    message = f"type {name} deleted"
    if dropped:
        shown = ", ".join(sorted(dropped)[:5]) + (", ..." if len(dropped) > 5 else "")
        message += f", with its quotas for {len(dropped)} project(s): {shown}"
    detail = {"quotas_removed": dict(sorted(dropped.items())[:100])} if dropped else None
    record(conn, at=now, actor=actor, action="type_deleted", type=name, message=message, detail=detail)
