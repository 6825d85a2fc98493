"""A gang's claims in one transaction: every instance's allocation, or none.

Each instance is an ordinary claim (``claims.claim``), so a gang's allocations are ordinary
allocations: same checks, same events, released one by one with ``DELETE
/v1/allocations/{consumer}``. What this module adds is the transaction around them: the hosts
are locked first, all of them, in the order of their names (every gang and every single claim
then take host locks in one order: no deadlock on PostgreSQL), and any lost race rolls every
instance back. The gang's id is kept in each allocation's request document (``gang``), not in
a table of its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from devassign import errors, schemas
from devassign.store.allocations import get_allocation
from devassign.store.claims import ClaimOrder, LostRace, check_same_request, claim, consumer_in_use, release
from devassign.store.schema import GangId, allocations, hosts

_LOCK_HOST = sa.select(hosts.c.id).where(hosts.c.name == sa.bindparam("name")).with_for_update(key_share=True)


def claim_gang(
    conn: sa.Connection,
    orders: Sequence[ClaimOrder],
    *,
    gang: str | None = None,
    now: datetime,
    ttl: timedelta,
    up_since: datetime | None = None,
) -> tuple[list[schemas.Allocation], bool]:
    """Claim every order in this transaction; raise ``LostRace`` (the caller rolls back) if any
    device was taken meanwhile, a conflict if ``gang`` already names other live allocations.
    Returns the allocations in order and whether they were made now (False: every one is a
    replay of the same gang)."""
    project = orders[0].project if orders else ""
    if gang is not None:
        _lock_gang_id(conn, project, gang)
    for name in sorted({o.host for o in orders}):
        if conn.execute(_LOCK_HOST, {"name": name}).scalar_one_or_none() is None:
            raise LostRace(f"host {name} was deleted meanwhile")
    made: list[tuple[schemas.Allocation, bool]] = [
        claim(conn, o, now=now, ttl=ttl, up_since=up_since) for o in orders
    ]
    created = {c for _, c in made}
    if created == {False}:
        return [a for a, _ in made], False
    if False in created:
        # Some instances hold this gang's allocations already (the rest were released since):
        # the answer would mix old and new; refuse, the transaction rolls back.
        old = [a.consumer for a, c in made if not c]
        raise errors.DevassignError(
            errors.CONSUMER_CONFLICT,
            f"{len(old)} of the {len(made)} instances already hold this gang's allocations "
            f"({', '.join(old[:5])}{', ...' if len(old) > 5 else ''}); release the gang first",
        )
    if gang is not None:
        held = conn.execute(
            sa.select(sa.func.count()).where(_of_gang(gang), allocations.c.project == project)
        ).scalar_one()
        if held > len(made):  # the id names another gang's live allocations too
            key = orders[0].key
            if key is not None and _key_of_gang(conn, gang, project, key, [a.consumer for a, _ in made]):
                # The same id and key with other instances: the key's own gang (its id made from
                # the key, or named again), sent with another body.
                raise errors.DevassignError(
                    errors.IDEMPOTENCY_KEY_REUSED,
                    f"idempotency_key {key!r} was sent with gang {gang!r} of other instances; a key "
                    "names one gang body: resend that body to retry it, or use another key",
                )
            raise errors.DevassignError(
                errors.CONSUMER_CONFLICT,
                f"gang id {gang!r} already names {held - len(made)} live allocations of other "
                "instances; choose another id, or release that gang first",
            )
    return [a for a, _ in made], True


def _key_of_gang(conn: sa.Connection, gang: str, project: str, key: str, consumers: Sequence[str]) -> bool:
    """Whether a live allocation of ``gang`` in ``project`` other than ``consumers`` was claimed
    with ``key``."""
    mine = set(consumers)
    q = (
        sa.select(allocations.c.consumer)
        .where(_of_gang(gang), allocations.c.project == project, allocations.c.idempotency_key == key)
        .limit(len(consumers) + 1)
    )
    return any(c not in mine for c in conn.execute(q).scalars())


def _lock_gang_id(conn: sa.Connection, project: str, gang: str) -> None:
    """Serialise the gangs that name one id in one project until this transaction ends.

    Without it two gangs of the same new id, on different hosts, would each count the id's
    live allocations before the other committed and both succeed. PostgreSQL: a transaction
    advisory lock on a hash of (project, id), taken before any host lock (single claims take
    no such lock, so the lock order stays acyclic). SQLite: ``BEGIN IMMEDIATE`` already makes
    every write transaction the only one."""
    if conn.dialect.name == "postgresql":
        conn.execute(
            sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 7))"),
            {"k": f"gang\x1f{project}\x1f{gang}"},
        )


def live_of(
    conn: sa.Connection,
    consumers: Sequence[str],
    key: str | None,
    project: str,
    docs: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[schemas.Allocation]:
    """The instances' live allocations that replay this gang (same project and idempotency
    key); a conflict if any instance holds another allocation, or belongs to another project,
    or if its stored request is not the one in ``docs`` (by consumer) for the same key."""
    found: list[schemas.Allocation] = []
    for i in range(0, len(consumers), 500):
        chunk = list(consumers[i : i + 500])
        for r in conn.execute(
            sa.select(
                allocations.c.consumer,
                allocations.c.idempotency_key,
                allocations.c.project,
                allocations.c.request,
            ).where(allocations.c.consumer.in_(chunk), allocations.c.released_at.is_(None))
        ):
            if r.project != project:
                raise consumer_in_use(r.consumer)
            if key is None or r.idempotency_key != key:
                raise errors.DevassignError(
                    errors.CONSUMER_CONFLICT,
                    f"consumer {r.consumer!r} already holds an allocation; release it first, or resend "
                    "the same gang with its idempotency_key",
                )
            want = (docs or {}).get(r.consumer)
            if want is not None and "gang_layout" not in (r.request or {}):
                # Made by a version that did not keep the layout: the rest must still match.
                want = {k: v for k, v in want.items() if k != "gang_layout"}
            check_same_request(r.consumer, key, r.request, want)
            found.append(get_allocation(conn, r.consumer))
    return found


def _of_gang(gang: str) -> sa.ColumnElement[bool]:
    """The live allocations of ``gang``, as ``ix_allocations_live_gang`` holds them."""
    return sa.and_(GangId() == gang, allocations.c.released_at.is_(None))


def gang_consumers(conn: sa.Connection, gang: str, project: str | None) -> list[tuple[str, str, str]]:
    """(host, consumer, project) of each live allocation of ``gang`` (of ``project`` when
    given), by host."""
    q = (
        sa.select(hosts.c.name, allocations.c.consumer, allocations.c.project)
        .join(hosts, hosts.c.id == allocations.c.host_id)
        .where(_of_gang(gang))
    )
    if project is not None:
        q = q.where(allocations.c.project == project)
    return [
        (r.name, r.consumer, r.project)
        for r in conn.execute(q.order_by(hosts.c.name, allocations.c.consumer))
    ]


def release_gang(
    conn: sa.Connection, gang: str, project: str | None, *, now: datetime, actor: str
) -> list[str]:
    """Release every live allocation of ``gang`` in this transaction; the consumers released
    (404 if none). Gang ids are per project: without ``project`` (an admin) the id must name
    one project's gang. The hosts are locked by name first, the order a gang's claim takes them
    in; the gang is read again under the locks, so a member released and claimed again outside
    the gang meanwhile is not released."""
    held = gang_consumers(conn, gang, project)
    if not held:
        raise errors.DevassignError(
            errors.NOT_FOUND, f"no live allocations of gang {gang!r}; `devassign allocations` lists them"
        )
    projects = sorted({p for _, _, p in held})
    if len(projects) > 1:
        raise errors.DevassignError(
            errors.INVALID_REQUEST,
            f"gang id {gang!r} names live gangs of {len(projects)} projects ({', '.join(projects[:5])}); "
            "name one: ?project= (`devassign gang release ID --project P`)",
        )
    for name in sorted({h for h, _, _ in held}):
        conn.execute(_LOCK_HOST, {"name": name})
    still = {c for _, c, _ in gang_consumers(conn, gang, projects[0])}
    return [c for _, c, _ in held if c in still and release(conn, c, now=now, actor=actor)]
