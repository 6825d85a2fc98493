"""Finding candidate hosts and reading them into the scheduler's read-only snapshots.

The candidate query walks the ``inventory(type_id, available, host_id)`` index and stops after a
few hosts (Placement builds every candidate, then truncates); the hosts' devices come
back in the same statement. Statements are built once per shape; a claim's scan starts the
equally good hosts at a random one (``_rotated``); hosts whose rows did not change since an
earlier read keep their view (``ViewCache``).
"""

from __future__ import annotations

import functools
import json
import random
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from devassign.domain import DeviceState
from devassign.scheduler.view import DeviceView, HostView, JsonAttributes, Snapshot
from devassign.schemas import DEVICE_FACTS
from devassign.store.db import driver_rows
from devassign.store.quotas import type_ids
from devassign.store.schema import devices, hosts, inventory, resource_types

# Statements built once per shape: building one costs SQLAlchemy more Python than sending it
# (py-spy), and a stable statement keeps the compiled-SQL cache and psycopg's prepared
# statements warm.
_INV = inventory.alias("i")
_INV_BEST = inventory.alias("b")


def _literal(name: str) -> Any:
    """A parameter written into the SQL text (see _candidates)."""
    return sa.bindparam(name, type_=sa.Integer, literal_execute=True)


@functools.cache
def _candidates(n_needs: int, any_of: bool, by_name: bool, spread: bool, rotate: str) -> sa.Subquery:
    """Up hosts with enough free devices of every needed type: ``(host_id, rank, lap)``, ranked.

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
        return _rotated(q, spread, rotate) if rotate else q.limit(_literal("limit")).subquery("c")
    # A host may qualify through several types: once, at its best rank. The index scan stops
    # after ``limit x types`` rows, which hold at least ``limit`` distinct hosts whenever that
    # many qualify (a host appears once per type at most), and a host's first row is its best;
    # a plain ``limit`` here returned fewer hosts than asked when hosts had several types free.
    rows = q.limit(_literal("row_limit")).subquery("r")
    agg = (sa.func.max if spread else sa.func.min)(rows.c.rank).label("rank")
    best = sa.select(rows.c.host_id, agg).group_by(rows.c.host_id)
    best = best.order_by(agg.desc(), rows.c.host_id.desc()) if spread else best.order_by(agg, rows.c.host_id)
    return best.limit(_literal("limit")).subquery("c")


def _rotated(q: sa.Select[Any], spread: bool, ranks: str) -> sa.Subquery:
    """``q``'s ranking with the hosts of each rank started at a random host: of the best rank
    (``ranks="best"``) or of every rank (``"all"``).

    Hosts of one rank are equally good, but the index hands them out in id order: every
    concurrent claim read the same few hosts and raced for them (docs/benchmarks.md). Here
    the scan runs in two laps around a random host id (``rotation`` in [0, 1) of the largest
    id), each an index walk that stops after ``limit`` rows, so ranks still come in order
    (*pack* still fills the fullest hosts first) and only the order among equals is random.

    ``best``: from the pivot on within the best rank (the first of the driving type in the
    index) and through the worse ranks in one index range, then the best rank before the pivot;
    it costs a claim nothing measurable. ``all`` (a burst of claims, where the best rank of
    *pack* is a few partly used hosts): each rank from the pivot on, then before it; the first
    lap skips the index rows before the pivot, as many as a rank has hosts.
    """
    i = _INV
    largest = sa.select(sa.func.max(hosts.c.id)).scalar_subquery()
    pivot = sa.cast(largest * sa.bindparam("rotation", type_=sa.Float), sa.Integer)
    laps: tuple[tuple[int, sa.ColumnElement[bool]], ...]
    if ranks == "all":
        first = i.c.host_id <= pivot if spread else i.c.host_id >= pivot
        laps = ((0, first), (1, sa.not_(first)))
    else:
        best_of = sa.func.max if spread else sa.func.min
        best = (
            sa.select(best_of(_INV_BEST.c.available))
            .where(_INV_BEST.c.type_id == _literal("t0"), _INV_BEST.c.available >= _literal("n0"))
            .scalar_subquery()
        )
        at = sa.tuple_(i.c.available, i.c.host_id)
        if spread:
            laps = ((0, at <= sa.tuple_(best, pivot)), (1, (i.c.available == best) & (i.c.host_id > pivot)))
        else:
            laps = ((0, at >= sa.tuple_(best, pivot)), (1, (i.c.available == best) & (i.c.host_id < pivot)))
    parts = [
        sa.select(
            q.where(where)
            .add_columns(sa.literal(lap, sa.Integer).label("lap"))
            .limit(_literal("limit"))
            .subquery()
        )
        for lap, where in laps
    ]
    u = sa.union_all(*parts).subquery("u")
    order = (u.c.rank.desc(), u.c.lap, u.c.host_id.desc()) if spread else (u.c.rank, u.c.lap, u.c.host_id)
    return sa.select(u.c.host_id, u.c.rank, u.c.lap).order_by(*order).limit(_literal("limit")).subquery("c")


# Reads of at most this many hosts (a claim's) start the best rank at a random host (_rotated);
# larger ones (explain, capacity) keep the index's order, so their answers are repeatable.
_ROTATE_UP_TO = 32


# The device's facts (schemas.DEVICE_FACTS), its state and its type's name, as hashable values:
# the JSON columns come as their text (attributes decoded only if a selector or constraint looks,
# the small ones when the view is built), so a device's row is a key of the view cache below.
_FACTS = tuple(f for f in DEVICE_FACTS if f != "attributes")
_JSON_FACTS = frozenset({"pool_counters", "consumes"})
_DEVICE_COLUMNS = (
    devices.c.id,
    *(sa.cast(devices.c[f], sa.Text).label(f) if f in _JSON_FACTS else devices.c[f] for f in _FACTS),
    sa.cast(devices.c.attributes, sa.Text).label("attributes_json"),
    devices.c.state,
    devices.c.healthy,
    devices.c.taint,
    sa.cast(devices.c.consumed, sa.Text).label("consumed"),
    resource_types.c.name.label("type_name"),
)
_N_DEVICE = len(_DEVICE_COLUMNS)
_ADDRESS = 1 + _FACTS.index("address")
# Then the host's: whether it is up is decided in SQL (no timestamp to convert per device row).
_HOST_COLUMNS = (
    devices.c.host_id,
    hosts.c.name.label("host_name"),
    sa.func.coalesce(hosts.c.last_seen_at >= sa.bindparam("up_since"), sa.false()).label("up"),
)
_PRESENT = devices.c.state != DeviceState.REMOVED.value
# Positions in a row (an int index into a Row is several times cheaper than an attribute, and
# a claim reads some 128 rows): the host's columns, then the candidate read's rank and lap.
_HOST_ID, _HOST_NAME, _UP, _RANK, _LAP = range(_N_DEVICE, _N_DEVICE + 5)


# Each shape's statement is built once and shared by every thread. SQLAlchemy's constructs are
# not safe to build from several threads at once: two claims of a new shape at the same moment
# (a burst's first) failed to compile ("Can't determine which FROM clause to join from"), one
# in thousands under load. So they are built, and looked up, under one lock.
_BUILDING = threading.Lock()


def _candidate_devices(
    n_needs: int, any_of: bool, by_name: bool, rotate: str, spread: bool
) -> sa.Select[Any]:
    """Every present device of the candidate hosts, with each host's rank: one round trip."""
    with _BUILDING:
        return _build_candidate_devices(n_needs, any_of, by_name, rotate, spread)


@functools.cache
def _build_candidate_devices(
    n_needs: int, any_of: bool, by_name: bool, rotate: str, spread: bool
) -> sa.Select[Any]:
    c = _candidates(n_needs, any_of, by_name, spread, rotate)
    lap = c.c.lap if "lap" in c.c else sa.literal(0, sa.Integer).label("lap")
    return (
        sa.select(*_DEVICE_COLUMNS, *_HOST_COLUMNS, c.c.rank, lap)
        .select_from(
            devices.join(c, c.c.host_id == devices.c.host_id)
            .join(resource_types, resource_types.c.id == devices.c.type_id)
            .join(hosts, hosts.c.id == devices.c.host_id)
        )
        .where(_PRESENT)
    )


_DEVICES_OF_HOSTS = (
    sa.select(*_DEVICE_COLUMNS, *_HOST_COLUMNS)
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
    rotate_all: bool = False,
) -> tuple[tuple[int, bool, bool, str], dict[str, Any]]:
    params: dict[str, Any] = {"up_since": up_since, "limit": limit}
    rotate = "" if not needs or limit > _ROTATE_UP_TO else "all" if rotate_all else "best"
    if rotate:
        params["rotation"] = random.random()
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
    return (len(needs), not needs, bool(names), rotate), params


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
    rotate_all: bool = False,
) -> Snapshot:
    """Up hosts holding at least ``needs[type_id]`` available devices of every needed type, best
    first (see :func:`_candidates`), with their devices, in one statement.

    ``scarcity``: :func:`hosts_with_free`, maybe a little stale; it only chooses which need
    drives the scan. ``rotate_all``: every rank's equal hosts in a random order, not only the
    best rank's (:func:`_rotated`; for a burst of claims).
    """
    shape, params = _candidate_params(needs, any_of, up_since, names, limit, scarcity, rotate_all)
    rows: Sequence[Any]
    if conn.dialect.name == "postgresql" and not names:
        sql, constant = _pg_text(conn.dialect, shape, spread, _literals(params))
        fixed = dict(constant)
        fixed.update((k, params[k]) for k in _PER_CLAIM if k in params)
        rows = driver_rows(conn, sql, fixed, named=False)
    else:
        rows = conn.execute(_candidate_devices(*shape, spread), params).all()
    # Best first: by rank, then by the lap of a rotated scan, then in the index's order.
    if spread:
        key = {r[_HOST_ID]: (r[_RANK], -r[_LAP], r[_HOST_ID]) for r in rows}
    else:
        key = {r[_HOST_ID]: (r[_RANK], r[_LAP], r[_HOST_ID]) for r in rows}
    order = sorted(key, key=key.__getitem__, reverse=spread)
    return _views(rows, order)


# The candidate read's parameters that change from one claim to the next; the others (type
# ids, counts, limits) are written into its text.
_PER_CLAIM = ("up_since", "rotation")


def _literals(params: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(
        (k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(params.items()) if k not in _PER_CLAIM
    )


@functools.lru_cache(maxsize=256)
def _pg_text(
    dialect: sa.Dialect,
    shape: tuple[int, bool, bool, str],
    spread: bool,
    literals: tuple[tuple[str, Any], ...],
) -> tuple[str, dict[str, Any]]:
    """PostgreSQL: the candidate read's SQL text for one shape and one set of type ids, counts
    and limits, rendered once, with the parameters that do not change from claim to claim.

    Run on the driver (``db.driver_rows``): SQLAlchemy's execution renders the literals and
    builds a result object for the 128 rows on every claim. Only claims naming no host come
    here (host names would make a text per set of names); bounded, least recently used first.
    """
    values: dict[str, Any] = {k: list(v) if isinstance(v, tuple) else v for k, v in literals}
    with _BUILDING:
        compiled = _build_candidate_devices(*shape, spread).compile(dialect=dialect)
        state = compiled.construct_expanded_state({**values, **dict.fromkeys(_PER_CLAIM)})
    fixed = {k: v for k, v in state.parameters.items() if k not in _PER_CLAIM}
    return state.statement, fixed


def candidate_page(
    conn: sa.Connection,
    needs: Mapping[int, int],
    *,
    any_of: Sequence[int] = (),
    up_since: datetime,
    after: int,
    limit: int,
    max_devices: int,
) -> tuple[Snapshot, int | None]:
    """The next ``limit`` candidate hosts by id after the host id ``after``, read whole: the
    hosts the candidate read would find (up, enough of every needed type by the kept counts),
    in a stable order, so that a caller can walk a region a page at a time.

    Walks ``inventory``'s primary key (host, type) from ``after``: a page costs its own hosts,
    not the region's. Cut short where the page's devices would pass ``max_devices``. Returns the
    hosts and the cursor of the next page (the last host's id), None after the last page.
    """
    i = _INV
    if needs:
        (t0, n0), *rest = sorted(needs.items())
        q = sa.select(i.c.host_id).where(i.c.type_id == t0, i.c.available >= n0)
        for k, (t, n) in enumerate(rest):
            j = inventory.alias(f"j{k}")
            q = q.where(sa.exists().where(j.c.host_id == i.c.host_id, j.c.type_id == t, j.c.available >= n))
    elif any_of:
        q = sa.select(i.c.host_id).where(i.c.type_id.in_(list(any_of)), i.c.available >= 1).distinct()
    else:
        q = sa.select(hosts.c.id)
    key = hosts.c.id
    if needs or any_of:
        # Both sides bounded by the cursor: the join's scan of hosts starts there too.
        q = q.join(hosts, hosts.c.id == i.c.host_id).where(i.c.host_id > after)
        key = i.c.host_id
    q = q.where(hosts.c.id > after, hosts.c.last_seen_at >= up_since).order_by(key).limit(limit)
    ids = [r[0] for r in conn.execute(q)]
    sizes = dict(
        conn.execute(
            sa.select(inventory.c.host_id, sa.func.sum(inventory.c.total))
            .where(inventory.c.host_id.in_(ids))
            .group_by(inventory.c.host_id)
        ).all()
    ) if ids else {}  # fmt: skip
    page: list[int] = []
    devices_read = 0
    for host_id in ids:
        n = int(sizes.get(host_id) or 0)
        if page and devices_read + n > max_devices:
            break
        page.append(host_id)
        devices_read += n
    more = len(page) < len(ids) or len(ids) == limit
    return load_snapshot(conn, page, up_since=up_since), (page[-1] if more and page else None)


def host_ids_by_name(conn: sa.Connection, names: Sequence[str]) -> list[int]:
    rows = conn.execute(sa.select(hosts.c.id).where(hosts.c.name.in_(list(names))))
    return [r.id for r in rows]


def load_snapshot(conn: sa.Connection, host_ids: Sequence[int], *, up_since: datetime) -> Snapshot:
    """Read-only views of ``host_ids`` (in that order) with every present device."""
    if not host_ids:
        return Snapshot(())
    rows = conn.execute(_DEVICES_OF_HOSTS, {"host_ids": list(host_ids), "up_since": up_since}).all()
    missing = set(host_ids) - {r.host_id for r in rows}  # hosts without devices (explain by name)
    extra = {}
    if missing:
        q = sa.select(hosts.c.id.label("host_id"), *_HOST_COLUMNS[1:]).where(hosts.c.id.in_(missing))
        for r in conn.execute(q, {"up_since": up_since}):
            extra[r.host_id] = (r.host_name, bool(r.up))
    return _views(rows, host_ids, extra)


def _views(
    rows: Sequence[Any], order: Sequence[int], extra: Mapping[int, tuple[str, bool]] | None = None
) -> Snapshot:
    """Host views in ``order`` from device rows (plus ``extra`` hosts that have no devices)."""
    meta: dict[int, tuple[str, bool]] = dict(extra or {})
    per_host: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
    for r in rows:
        host_id = r[_HOST_ID]
        per_host[host_id].append(tuple(r[:_N_DEVICE]))
        if host_id not in meta:
            meta[host_id] = (r[_HOST_NAME], bool(r[_UP]))
    views = []
    for hid in order:
        if hid in meta:
            name, up = meta[hid]
            devices_of = tuple(sorted(per_host.get(hid, ()), key=lambda d: d[_ADDRESS]))
            views.append(VIEWS.get(name, up, devices_of))
    return Snapshot(tuple(views))


def _device(row: tuple[Any, ...]) -> DeviceView:
    """One device's view from its row (the columns of ``_DEVICE_COLUMNS``, in that order)."""
    id_, *facts, attributes, state, healthy, taint, consumed, type_name = row
    values = dict(zip(_FACTS, facts, strict=True))
    for f in _JSON_FACTS:
        values[f] = _json(values[f])
    return DeviceView(
        **values,
        id=id_,
        type=type_name,
        attributes=JsonAttributes(attributes),
        state=state,
        healthy=bool(healthy),
        taint=taint,
        consumed=_json(consumed),
    )


def _json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


class ViewCache:
    """Host views by the rows they were built from.

    A view is a pure function of its host's device rows (and whether the host is up), so the
    same rows give the same view: the candidates that did not change since an earlier read (in
    *pack* mode 7 of a claim's 8) are not rebuilt. A changed device changes its row and so the
    key; nothing needs invalidating. Bounded by the devices held (least recently used go
    first); a host larger than a tenth of the bound is never kept.
    """

    def __init__(self, max_devices: int = 20_000) -> None:
        self.max_devices = max_devices
        self._views: OrderedDict[tuple[Any, ...], HostView] = OrderedDict()
        self._devices = 0
        self._lock = threading.Lock()
        # Device views by their row, for a host that changed: a claim changes two of its
        # sixteen rows, and the other fourteen views are reused (bounded like the hosts').
        self._by_row: OrderedDict[tuple[Any, ...], DeviceView] = OrderedDict()

    def get(self, name: str, up: bool, rows: tuple[tuple[Any, ...], ...]) -> HostView:
        key = (name, up, rows)
        with self._lock:
            view = self._views.get(key)
            if view is not None:
                self._views.move_to_end(key)
                return view
        if len(rows) * 10 > self.max_devices:
            return HostView(name, tuple(_device(r) for r in rows), up)
        view = HostView(name, tuple(self._device(r) for r in rows), up)
        with self._lock:
            if key not in self._views:
                self._views[key] = view
                self._devices += len(rows)
            while self._devices > self.max_devices:
                _, old = self._views.popitem(last=False)
                self._devices -= len(old.devices)
        return view

    def _device(self, row: tuple[Any, ...]) -> DeviceView:
        with self._lock:
            found = self._by_row.get(row)
            if found is not None:
                self._by_row.move_to_end(row)
                return found
        found = _device(row)
        with self._lock:
            self._by_row[row] = found
            while len(self._by_row) > self.max_devices:
                self._by_row.popitem(last=False)
        return found


VIEWS = ViewCache()


def count_enough(conn: sa.Connection, needs: Mapping[int, int], *, up_since: datetime) -> int:
    """Up hosts with at least ``needs[type id]`` available of every needed type: what the
    candidate read would find at most, counted on the kept counts' index, reading no device."""
    if not needs:
        return conn.execute(
            sa.select(sa.func.count()).select_from(hosts).where(hosts.c.last_seen_at >= up_since)
        ).scalar_one()
    enough = (
        sa.select(inventory.c.host_id)
        .join(hosts, hosts.c.id == inventory.c.host_id)
        .where(
            sa.or_(*((inventory.c.type_id == t) & (inventory.c.available >= n) for t, n in needs.items())),
            hosts.c.last_seen_at >= up_since,
        )
        .group_by(inventory.c.host_id)
        .having(sa.func.count() == len(needs))
        .subquery()
    )
    return int(conn.execute(sa.select(sa.func.count()).select_from(enough)).scalar_one())


def funnel(
    conn: sa.Connection, needs: Mapping[str, int], *, up_since: datetime, names: Sequence[str] = ()
) -> dict[str, int]:
    """For an explanation: hosts in all, down, and up but without enough of each needed type.

    ``names``: the hosts a request names, the only ones it could go to (so the only ones its
    explanation counts); none: every host."""
    named = hosts.c.name.in_(list(names)) if names else sa.true()
    up_host = (hosts.c.last_seen_at >= up_since) & named
    total = conn.execute(sa.select(sa.func.count()).select_from(hosts).where(named)).scalar_one()
    up = conn.execute(sa.select(sa.func.count()).select_from(hosts).where(up_host)).scalar_one()
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
                .where(inventory.c.type_id == tid, inventory.c.available >= n, up_host)
            ).scalar_one()
        )
        out[f"lacking_{name}"] = up - enough
        if tid is None or up == enough:
            continue
        # Of the lacking: enough but for their taints; enough but for failed health checks.
        free_tainted = (devices.c.state == DeviceState.AVAILABLE.value) & devices.c.taint.is_not(None)
        tainted = _short_because(conn, tid, n, up_host, free_tainted)
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
                up_host,
            )
        ).scalar_one()
        if carved:
            out[f"partitioned_{name}"] = int(carved)
        sick = (devices.c.state == DeviceState.UNHEALTHY.value) & devices.c.taint.is_(None)
        unhealthy = _short_because(conn, tid, n, up_host, sick)
        if unhealthy:
            out[f"unhealthy_{name}"] = unhealthy
        # Enough but for devices out of service for now: being cleaned, or quarantined.
        for state in (DeviceState.CLEANING, DeviceState.QUARANTINED):
            held = _short_because(conn, tid, n, up_host, devices.c.state == state.value)
            if held:
                out[f"{state.value}_{name}"] = held
    return out


def _short_because(
    conn: sa.Connection,
    type_id: int,
    n: int,
    up_host: sa.ColumnElement[bool],
    counted: sa.ColumnElement[bool],
) -> int:
    """Up hosts (``up_host``) with too few schedulable devices of the type that would have
    enough if the devices ``counted`` selects were free too (those a taint keeps from claims;
    the unhealthy)."""
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
                up_host,
                inventory.c.available + free >= n,
            )
        ).scalar_one()
    )
