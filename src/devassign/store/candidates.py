"""Finding candidate hosts and reading them into the scheduler's read-only snapshots.

The candidate query walks the ``inventory(type_id, available, host_id)`` index and stops after a
few hosts (Placement builds every candidate, then truncates); the hosts' devices come
back in the same statement. Statements are built once per shape.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from devassign.domain import DeviceState
from devassign.scheduler.view import DeviceView, HostView, JsonAttributes, Snapshot
from devassign.schemas import DEVICE_FACTS
from devassign.store.quotas import type_ids
from devassign.store.schema import devices, hosts, inventory, resource_types

# Statements built once per shape: building one costs SQLAlchemy more Python than sending it
# (py-spy), and a stable statement keeps the compiled-SQL cache and psycopg's prepared
# statements warm.
_INV = inventory.alias("i")


def _literal(name: str) -> Any:
    """A parameter written into the SQL text (see _candidates)."""
    return sa.bindparam(name, type_=sa.Integer, literal_execute=True)


@functools.cache
def _candidates(n_needs: int, any_of: bool, by_name: bool, spread: bool) -> sa.Subquery:
    """Up hosts with enough free devices of every needed type: ``(host_id, rank)``, ranked.

    Driven by the ``(type_id, available, host_id)`` index of the first (largest) need, so it
    stops after ``limit`` hosts instead of building every candidate (Placement's ``limit``
    truncates only after building them all). ``any_of`` (types of ``first_available``
    alternatives): one free device of any.
    Parameters: ``t0, n0, t1, n1, ...`` or ``any_of``; ``up_since``, ``names``, ``limit``. The
    type ids, counts and limit are written into the SQL text (integers only): psycopg then
    prepares one statement per combination, and PostgreSQL plans it once (a generic plan), where
    with parameters it planned every claim anew (0.5 ms of a 1.0 ms query; per-statement timing,
    docs/benchmarks.md).
    """
    i = _INV
    if not any_of:
        q = sa.select(i.c.host_id, i.c.available.label("rank")).where(
            i.c.type_id == _literal("t0"), i.c.available >= _literal("n0")
        )
        for k in range(1, n_needs):
            j = inventory.alias(f"j{k}")
            q = q.where(
                sa.exists().where(
                    j.c.host_id == i.c.host_id,
                    j.c.type_id == _literal(f"t{k}"),
                    j.c.available >= _literal(f"n{k}"),
                )
            )
    else:
        q = sa.select(i.c.host_id, i.c.available.label("rank")).where(
            i.c.type_id.in_(sa.bindparam("any_of", expanding=True)), i.c.available >= 1
        )
    q = q.join(hosts, hosts.c.id == i.c.host_id).where(hosts.c.last_seen_at >= sa.bindparam("up_since"))
    if by_name:
        q = q.where(hosts.c.name.in_(sa.bindparam("names", expanding=True)))
    # The tie-break follows the direction so the index yields the rows in order and the query
    # stops after ``limit`` of them (no sort of every host).
    if spread:
        q = q.order_by(i.c.available.desc(), i.c.host_id.desc())
    else:
        q = q.order_by(i.c.available.asc(), i.c.host_id.asc())
    if not any_of:
        return q.limit(_literal("limit")).subquery("c")
    # A host may qualify through several types: once, at its best rank. The index scan stops
    # after ``limit x types`` rows, which hold at least ``limit`` distinct hosts whenever that
    # many qualify (a host appears once per type at most), and a host's first row is its best;
    # a plain ``limit`` here returned fewer hosts than asked when hosts had several types free.
    rows = q.limit(_literal("row_limit")).subquery("r")
    agg = (sa.func.max if spread else sa.func.min)(rows.c.rank).label("rank")
    best = sa.select(rows.c.host_id, agg).group_by(rows.c.host_id)
    best = best.order_by(agg.desc(), rows.c.host_id.desc()) if spread else best.order_by(agg, rows.c.host_id)
    return best.limit(_literal("limit")).subquery("c")


# The device's facts (schemas.DEVICE_FACTS) but its attributes, which come as text: decoded
# only if a selector or constraint looks (JsonAttributes).
_FACTS = tuple(f for f in DEVICE_FACTS if f != "attributes")
_DEVICE_COLUMNS = (
    devices.c.id,
    devices.c.host_id,
    *(devices.c[f] for f in _FACTS),
    sa.cast(devices.c.attributes, sa.Text).label("attributes_json"),
    devices.c.state,
    devices.c.healthy,
    devices.c.taint,
    devices.c.consumed,
    resource_types.c.name.label("type_name"),
    hosts.c.name.label("host_name"),
    hosts.c.last_seen_at,
)
_PRESENT = devices.c.state != DeviceState.REMOVED.value


@functools.cache
def _candidate_devices(n_needs: int, any_of: bool, by_name: bool, spread: bool) -> sa.Select[Any]:
    """Every present device of the candidate hosts, with each host's rank: one round trip."""
    c = _candidates(n_needs, any_of, by_name, spread)
    return (
        sa.select(*_DEVICE_COLUMNS, c.c.rank)
        .select_from(
            devices.join(c, c.c.host_id == devices.c.host_id)
            .join(resource_types, resource_types.c.id == devices.c.type_id)
            .join(hosts, hosts.c.id == devices.c.host_id)
        )
        .where(_PRESENT)
    )


_DEVICES_OF_HOSTS = (
    sa.select(*_DEVICE_COLUMNS)
    .select_from(
        devices.join(resource_types, resource_types.c.id == devices.c.type_id).join(
            hosts, hosts.c.id == devices.c.host_id
        )
    )
    .where(devices.c.host_id.in_(sa.bindparam("host_ids", expanding=True)), _PRESENT)
)


def hosts_with_free(conn: sa.Connection) -> dict[int, int]:
    """Per type id, how many hosts have a free device of it (to choose the scan's driver)."""
    q = (
        sa.select(inventory.c.type_id, sa.func.count().label("n"))
        .where(inventory.c.available > 0)
        .group_by(inventory.c.type_id)
    )
    return {r.type_id: r.n for r in conn.execute(q)}


def _candidate_params(
    needs: Mapping[int, int],
    any_of: Sequence[int],
    up_since: datetime,
    names: Sequence[str],
    limit: int,
    scarcity: Mapping[int, int] | None = None,
) -> tuple[tuple[int, bool, bool], dict[str, Any]]:
    params: dict[str, Any] = {"up_since": up_since, "limit": limit}
    if needs:
        # The need that most hosts are likely to fail drives the index scan: the largest count
        # first; among equal counts, the type free on the fewest hosts. Driven by a plentiful
        # type, the scan of a 3/4-full cloud walked hundreds of hosts whose scarce type was used
        # up (1.1 ms of a 1.4 ms query). The hint only picks the driver; the ranking of the
        # candidates follows the driving type's free count.
        free = scarcity or {}

        def selective(kv: tuple[int, int]) -> tuple[int, int]:
            return -kv[1], free.get(kv[0], 0)

        for k, (tid, n) in enumerate(sorted(needs.items(), key=selective)):
            params[f"t{k}"], params[f"n{k}"] = tid, n
    else:
        params["any_of"] = list(any_of)
        params["row_limit"] = limit * max(1, len(set(any_of)))
    if names:
        params["names"] = list(names)
    return (len(needs), not needs, bool(names)), params


def candidate_snapshot(
    conn: sa.Connection,
    needs: Mapping[int, int],
    *,
    any_of: Sequence[int] = (),
    up_since: datetime,
    names: Sequence[str] = (),
    spread: bool = False,
    limit: int = 32,
    scarcity: Mapping[int, int] | None = None,
) -> Snapshot:
    """Up hosts holding at least ``needs[type_id]`` available devices of every needed type, best
    first (see :func:`_candidates`), with their devices, in one statement.

    ``scarcity``: :func:`hosts_with_free`, maybe a little stale; it only chooses which need
    drives the scan.
    """
    shape, params = _candidate_params(needs, any_of, up_since, names, limit, scarcity)
    rows = conn.execute(_candidate_devices(*shape, spread), params).all()
    rank = {r.host_id: r.rank for r in rows}
    order = sorted(rank, key=lambda h: (rank[h], h), reverse=spread)
    return _views(rows, order, up_since)


def host_ids_by_name(conn: sa.Connection, names: Sequence[str]) -> list[int]:
    rows = conn.execute(sa.select(hosts.c.id).where(hosts.c.name.in_(list(names))))
    return [r.id for r in rows]


def load_snapshot(conn: sa.Connection, host_ids: Sequence[int], *, up_since: datetime) -> Snapshot:
    """Read-only views of ``host_ids`` (in that order) with every present device."""
    if not host_ids:
        return Snapshot(())
    rows = conn.execute(_DEVICES_OF_HOSTS, {"host_ids": list(host_ids)}).all()
    missing = set(host_ids) - {r.host_id for r in rows}  # hosts without devices (explain by name)
    extra = {}
    if missing:
        for r in conn.execute(
            sa.select(hosts.c.id, hosts.c.name, hosts.c.last_seen_at).where(hosts.c.id.in_(missing))
        ):
            extra[r.id] = (r.name, r.last_seen_at)
    return _views(rows, host_ids, up_since, extra)


def _views(
    rows: Sequence[Any],
    order: Sequence[int],
    up_since: datetime,
    extra: Mapping[int, tuple[str, datetime | None]] | None = None,
) -> Snapshot:
    """Host views in ``order`` from device rows (plus ``extra`` hosts that have no devices)."""
    meta: dict[int, tuple[str, datetime | None]] = dict(extra or {})
    per_host: dict[int, list[DeviceView]] = defaultdict(list)
    for r in rows:
        if r.host_id not in meta:
            meta[r.host_id] = (r.host_name, r.last_seen_at)
        per_host[r.host_id].append(
            DeviceView(
                **{f: getattr(r, f) for f in _FACTS},
                id=r.id,
                type=r.type_name,
                attributes=JsonAttributes(r.attributes_json),
                state=r.state,
                healthy=r.healthy,
                taint=r.taint,
                consumed=r.consumed,
            )
        )
    views = []
    for hid in order:
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
        if tid is None or up == enough:
            continue
        # Of the lacking: enough but for their taints; enough but for failed health checks.
        free_tainted = (devices.c.state == DeviceState.AVAILABLE.value) & devices.c.taint.is_not(None)
        tainted = _short_because(conn, tid, n, up_since, free_tainted)
        if tainted:
            out[f"tainted_{name}"] = tainted
        carved = conn.execute(
            sa.select(sa.func.count())
            .select_from(inventory.join(hosts, hosts.c.id == inventory.c.host_id))
            .where(
                inventory.c.type_id == tid,
                inventory.c.available < n,
                inventory.c.carved > 0,
                inventory.c.available + inventory.c.carved >= n,
                hosts.c.last_seen_at >= up_since,
            )
        ).scalar_one()
        if carved:
            out[f"partitioned_{name}"] = int(carved)
        sick = (devices.c.state == DeviceState.UNHEALTHY.value) & devices.c.taint.is_(None)
        unhealthy = _short_because(conn, tid, n, up_since, sick)
        if unhealthy:
            out[f"unhealthy_{name}"] = unhealthy
    return out


def _short_because(
    conn: sa.Connection, type_id: int, n: int, up_since: datetime, counted: sa.ColumnElement[bool]
) -> int:
    """Up hosts with too few schedulable devices of the type that would have enough if the
    devices ``counted`` selects were free too (those a taint keeps from claims; the unhealthy)."""
    free = (
        sa.select(sa.func.count())
        .where(devices.c.host_id == inventory.c.host_id, devices.c.type_id == type_id, counted)
        .scalar_subquery()
    )
    return int(
        conn.execute(
            sa.select(sa.func.count())
            .select_from(inventory.join(hosts, hosts.c.id == inventory.c.host_id))
            .where(
                inventory.c.type_id == type_id,
                inventory.c.available < n,
                hosts.c.last_seen_at >= up_since,
                inventory.c.available + free >= n,
            )
        ).scalar_one()
    )
