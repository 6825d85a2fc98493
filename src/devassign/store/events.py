"""The event log: who did what to which device, and when.

Rows are only inserted, except by the retention sweep (:func:`prune`), which deletes the
oldest ones.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from devassign import schemas
from devassign.domain import cut_too_deep
from devassign.store.schema import consumers, events


def aware(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every timestamp in devassign is UTC."""
    if dt is None:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


_INSERT = events.insert()  # built once: every claim and release records an event


def record(
    conn: sa.Connection,
    *,
    at: datetime,
    actor: str,
    action: str,
    message: str,
    host: str | None = None,
    device: str | None = None,
    device_id: str | None = None,
    consumer: str | None = None,
    type: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    conn.execute(
        _INSERT,
        {
            "at": at,
            "actor": actor,
            "action": action,
            "message": message,
            "host": host,
            "device": device,
            "device_id": device_id,
            "consumer": consumer,
            "type": type,
            "detail": detail or {},
        },
    )


def record_many(conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
    """Insert several events in one round trip (an inventory report can make hundreds)."""
    if rows:
        for row in rows:
            row.setdefault("detail", {})
            for key in ("host", "device", "device_id", "consumer", "type"):
                row.setdefault(key, None)
        conn.execute(_INSERT, rows)


def prune(conn: sa.Connection, *, before: datetime, batch: int) -> int:
    """Delete up to ``batch`` of the oldest events recorded before ``before``; how many went.

    Always a prefix of the log by id, never a hole in it: an agent reads its host's events from
    the last deletion of a host of its name, which is itself an event, so an older machine's
    events go no later than that mark. The prefix stops at the first event recorded at or after
    ``before`` (a server whose clock ran ahead wrote it; it only delays the rest), and never
    takes the newest event, so SQLite never gives its id out again.
    """
    newest = newest_event_id(conn)
    oldest = conn.execute(
        sa.select(events.c.id, events.c.at).where(events.c.id < newest).order_by(events.c.id).limit(batch)
    ).all()
    last = None
    for event_id, at in oldest:
        if aware(at) >= before:  # type: ignore[operator]
            break
        last = event_id
    if last is None:
        return 0
    return conn.execute(events.delete().where(events.c.id <= last)).rowcount


def event_ids_in(conn: sa.Connection, lo: int, hi: int) -> list[int]:
    """The ids of the events that exist (are committed) from ``lo`` to ``hi``, in any scope:
    the event stream tells gaps still in flight from other scopes' events (bounded read)."""
    q = sa.select(events.c.id).where(events.c.id.between(lo, hi)).order_by(events.c.id).limit(100_000)
    return list(conn.execute(q).scalars())


def newest_event_id(conn: sa.Connection) -> int:
    """The highest event id in the log, in any scope (0 when it is empty)."""
    return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(events.c.id), 0))).scalar_one())


def list_events(
    conn: sa.Connection,
    *,
    host: str | None = None,
    device: str | None = None,
    consumer: str | None = None,
    consumers_of_project: str | None = None,
    before: int | None = None,
    after: int | None = None,
    limit: int = 100,
    registered_host: bool = False,
) -> list[schemas.Event]:
    """Newest first; with ``after`` (an event id), oldest first from the one after it (the
    event stream's catch-up). ``device`` matches a device id or an address.

    ``registered_host``: only the events of ``host`` after the last deletion of a host of that
    name (an agent's view): an earlier host of the same name is another machine, whose
    tenants its agent must not read. By event id, not time: the servers' clocks may differ.
    """
    order = events.c.id.asc() if after is not None else events.c.id.desc()
    q = sa.select(events).order_by(order).limit(limit)
    if host:
        q = q.where(events.c.host == host)
        if registered_host:
            marks = events.alias("deletions")
            deleted = sa.select(sa.func.coalesce(sa.func.max(marks.c.id), 0)).where(
                marks.c.host == host, marks.c.action == "host_deleted"
            )
            q = q.where(events.c.id > deleted.scalar_subquery())
    if device:
        q = q.where(sa.or_(events.c.device_id == device, events.c.device == device))
    if consumer:
        q = q.where(events.c.consumer == consumer)
    if consumers_of_project is not None:
        q = q.where(
            events.c.consumer.in_(
                sa.select(consumers.c.uuid).where(consumers.c.project == consumers_of_project)
            )
        )
    if before is not None:
        q = q.where(events.c.id < before)
    if after is not None:
        q = q.where(events.c.id > after)
    return [
        schemas.Event(
            id=r.id,
            at=aware(r.at) or r.at,
            actor=r.actor,
            action=r.action,
            host=r.host,
            device=r.device,
            consumer=r.consumer,
            type=r.type,
            message=r.message,
            detail=cut_too_deep(r.detail or {}),
        )
        for r in conn.execute(q)
    ]
