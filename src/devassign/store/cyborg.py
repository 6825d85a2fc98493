"""Cyborg's device profiles and accelerator requests (ARQs), as Nova uses them: their SQL.

The HTTP side (what Nova sends, the claim, the attach handles) is ``server/cyborg.py``. All
ARQs of one instance are one devassign allocation whose consumer is the instance: a bind
claims through the normal claim path first, then :meth:`CyborgStore.start_binding` records
it; :meth:`CyborgStore.resolve` later turns ``BindStarted`` into ``Bound`` once the agent has
set the devices up (the allocation is ``assigned``), or ``BindFailed`` once the allocation is
gone (setup failed, reservation expired, released), and leaves an event for Nova to be told.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from devassign import errors
from devassign.domain import AllocationState, ArqState
from devassign.store import claims
from devassign.store.events import aware
from devassign.store.schema import allocations, cyborg_arqs, cyborg_device_profiles

if TYPE_CHECKING:
    from devassign.store import Store

INITIAL = ArqState.INITIAL.value
BIND_STARTED = ArqState.BIND_STARTED.value
BOUND = ArqState.BOUND.value
BIND_FAILED = ArqState.BIND_FAILED.value
# What Nova's get_arqs_for_instance(only_resolved=True) keeps: the binding has ended.
RESOLVED = (BOUND, BIND_FAILED)
# A bound ARQ (or one on its way): its instance holds devices through it.
LIVE = (BIND_STARTED, BOUND)


@dataclass(frozen=True)
class Binding:
    """One ARQ's binding as the server worked it out: where, for whom, and its attach handle."""

    arq: str
    hostname: str
    device_rp_uuid: str | None
    instance: str
    device_id: str
    handle_type: str
    handle_info: dict[str, str]
    handle_uuid: str | None


@dataclass(frozen=True)
class Event:
    """An ``accelerator-request-bound`` event Nova still has to be told of."""

    arq: str
    instance: str
    status: str  # completed or failed
    resolved_at: datetime


def profile_body(row: Any) -> dict[str, Any]:
    return {
        "uuid": row.uuid,
        "name": row.name,
        "description": row.description,
        "groups": row.groups,
        "created_at": (aware(row.created_at) or row.created_at).isoformat(),
        "updated_at": None,
    }


def arq_body(row: Any) -> dict[str, Any]:
    """An ARQ as Cyborg's v2 API writes it (the fields Nova reads, and a few more)."""
    return {
        "uuid": row.uuid,
        "state": row.state,
        "device_profile_name": row.profile_name,
        "device_profile_group_id": row.group_id,
        "hostname": row.hostname,
        "device_rp_uuid": row.device_rp_uuid,
        "instance_uuid": row.instance_uuid,
        "project_id": None,
        "attach_handle_type": row.attach_handle_type,
        "attach_handle_info": row.attach_handle_info,
        "attach_handle_uuid": row.attach_handle_uuid,
        "created_at": (aware(row.created_at) or row.created_at).isoformat(),
        "updated_at": (aware(row.updated_at) or row.updated_at).isoformat(),
    }


def _unbound() -> dict[str, Any]:
    return {
        "state": INITIAL,
        "hostname": None,
        "device_rp_uuid": None,
        "instance_uuid": None,
        "device_id": None,
        "attach_handle_type": None,
        "attach_handle_info": None,
        "attach_handle_uuid": None,
        "event": None,
    }


class CyborgStore:
    """Every read and write of the Cyborg API, each one transaction (as :class:`Store`)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.db

    # ------------------------------------------------------------ device profiles
    def create_profile(
        self, name: str, description: str, groups: list[dict[str, str]], uuid: str | None = None
    ) -> dict[str, Any]:
        """A new profile, under the caller's ``uuid`` where it gives one (Cyborg takes it)."""

        def go(c: sa.Connection) -> dict[str, Any]:
            taken = c.execute(
                sa.select(cyborg_device_profiles.c.id).where(cyborg_device_profiles.c.name == name)
            ).first()
            if taken is not None:
                raise errors.DevassignError(
                    errors.INVALID_STATE,
                    f"device profile {name!r} exists; delete it first or choose another name",
                )
            if (
                uuid is not None
                and c.execute(
                    sa.select(cyborg_device_profiles.c.id).where(cyborg_device_profiles.c.uuid == uuid)
                ).first()
            ):
                raise errors.DevassignError(
                    errors.INVALID_STATE, f"a device profile with uuid {uuid} exists; choose another uuid"
                )
            row = {
                "uuid": uuid or str(uuidlib.uuid4()),
                "name": name,
                "description": description,
                "groups": groups,
                "created_at": self.store.clock(),
            }
            c.execute(cyborg_device_profiles.insert().values(**row))
            return profile_body(_Obj(row))

        return self.db.retrying(go)

    def list_profiles(self, name: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(cyborg_device_profiles).order_by(cyborg_device_profiles.c.name)
        if name is not None:
            q = q.where(cyborg_device_profiles.c.name == name)
        return self.db.reading(lambda c: [profile_body(r) for r in c.execute(q)])

    def get_profile(self, ref: str) -> dict[str, Any]:
        """A profile by uuid or name (Cyborg accepts both)."""
        row = self.db.reading(lambda c: _profile_row(c, ref))
        if row is None:
            raise _no_profile(ref)
        return profile_body(row)

    def delete_profile(self, ref: str) -> None:
        """The one profile ``ref`` names: its uuid first (a name may look like another's uuid)."""

        def go(c: sa.Connection) -> None:
            row = _profile_row(c, ref)
            if row is None:
                raise _no_profile(ref)
            c.execute(cyborg_device_profiles.delete().where(cyborg_device_profiles.c.id == row.id))

        self.db.retrying(go)

    # ------------------------------------------------------------ ARQs
    def create_arqs(self, profile_name: str, types: list[tuple[int, str, int]]) -> list[dict[str, Any]]:
        """One ARQ per device of each group: ``types`` is (group index, type, count)."""

        def go(c: sa.Connection) -> list[dict[str, Any]]:
            now = self.store.clock()
            rows = [
                {
                    **_unbound(),
                    "uuid": str(uuidlib.uuid4()),
                    "profile_name": profile_name,
                    "group_id": group,
                    "type_name": type_name,
                    "created_at": now,
                    "updated_at": now,
                }
                for group, type_name, count in types
                for _ in range(count)
            ]
            c.execute(cyborg_arqs.insert(), rows)
            return [arq_body(_Obj(r)) for r in rows]

        return self.db.retrying(go)

    def list_arqs(
        self, instance: str | None = None, states: Iterable[str] | None = None
    ) -> list[dict[str, Any]]:
        q = sa.select(cyborg_arqs).order_by(cyborg_arqs.c.id)
        if instance is not None:
            q = q.where(cyborg_arqs.c.instance_uuid == instance)
        if states is not None:
            q = q.where(cyborg_arqs.c.state.in_(list(states)))
        return self.db.reading(lambda c: [arq_body(r) for r in c.execute(q)])

    def arqs(self, uuids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The ARQs of ``uuids`` that exist, by uuid, each with its ``type_name``."""
        wanted = list(uuids)
        q = sa.select(cyborg_arqs).where(cyborg_arqs.c.uuid.in_(wanted))
        # With the devassign type each stands for (not part of the API's ARQ).
        return self.db.reading(
            lambda c: {r.uuid: {**arq_body(r), "type_name": r.type_name} for r in c.execute(q)}
        )

    def live_arqs_of(self, instance: str) -> list[str]:
        q = sa.select(cyborg_arqs.c.uuid).where(
            cyborg_arqs.c.instance_uuid == instance, cyborg_arqs.c.state.in_(LIVE)
        )
        return self.db.reading(lambda c: [r.uuid for r in c.execute(q)])

    def mark_binding(self, instance: str, arqs: list[str]) -> list[str]:
        """Name ``instance`` on those of ``arqs`` still ``Initial`` before their devices are
        claimed, so a delete of the instance's ARQs while the bind runs finds them (and the
        bind then finds them gone, and undoes its claim). Returns the ARQs another instance's
        bind has named: none is marked then."""

        def go(c: sa.Connection) -> list[str]:
            free = sa.or_(cyborg_arqs.c.instance_uuid.is_(None), cyborg_arqs.c.instance_uuid == instance)
            initial = sa.and_(cyborg_arqs.c.uuid.in_(arqs), cyborg_arqs.c.state == INITIAL)
            taken = [r.uuid for r in c.execute(sa.select(cyborg_arqs.c.uuid).where(initial, sa.not_(free)))]
            if not taken:
                c.execute(cyborg_arqs.update().where(initial, free).values(instance_uuid=instance))
            return sorted(taken)

        return self.db.retrying(go)

    def unmark_binding(self, instance: str, arqs: list[str]) -> None:
        """Undo :meth:`mark_binding` for a bind that did not happen (its claim refused)."""
        self.db.retrying(
            lambda c: c.execute(
                cyborg_arqs.update()
                .where(
                    cyborg_arqs.c.uuid.in_(arqs),
                    cyborg_arqs.c.state == INITIAL,
                    cyborg_arqs.c.instance_uuid == instance,
                )
                .values(instance_uuid=None)
            )
        )

    def start_binding(self, bindings: list[Binding]) -> list[str]:
        """Record bindings whose devices were claimed; the ARQs (of ``bindings``) that were no
        longer ``Initial`` and not already bound this way: none recorded then (the caller
        releases its claim)."""

        def go(c: sa.Connection) -> list[str]:
            now = self.store.clock()
            lost = []
            for b in bindings:
                moved = c.execute(
                    cyborg_arqs.update()
                    .where(cyborg_arqs.c.uuid == b.arq, cyborg_arqs.c.state == INITIAL)
                    .values(
                        state=BIND_STARTED,
                        hostname=b.hostname,
                        device_rp_uuid=b.device_rp_uuid,
                        instance_uuid=b.instance,
                        device_id=b.device_id,
                        attach_handle_type=b.handle_type,
                        attach_handle_info=b.handle_info,
                        attach_handle_uuid=b.handle_uuid,
                        event=None,
                        updated_at=now,
                    )
                ).rowcount
                if not moved:
                    same = c.execute(
                        sa.select(cyborg_arqs.c.id).where(
                            cyborg_arqs.c.uuid == b.arq,
                            cyborg_arqs.c.instance_uuid == b.instance,
                            cyborg_arqs.c.hostname == b.hostname,
                            cyborg_arqs.c.state.in_(LIVE),
                        )
                    ).first()
                    if same is None:
                        lost.append(b.arq)
            if lost:
                raise _Lost(lost)  # rolls the transaction back: all or nothing
            return lost

        try:
            return self.db.retrying(go)
        except _Lost as exc:
            return exc.arqs

    def unbind(self, instance: str, arqs: list[str] | None, *, actor: str, delete: bool) -> bool:
        """Release the instance's devices, then unbind (or delete) ``arqs`` (None: all of the
        instance's). Every other live ARQ of the instance is unbound too: they shared the one
        allocation. Returns whether devices were released. Idempotent."""

        def go(c: sa.Connection) -> bool:
            released = False
            mine = cyborg_arqs.c.instance_uuid == instance
            # Bound ARQs, or ones a bind in flight has named (mark_binding): its claim may
            # be made already, and is released here.
            holds = c.execute(sa.select(cyborg_arqs.c.id).where(mine).limit(1))
            try:
                if holds.first() is None:
                    raise errors.DevassignError(errors.ALLOCATION_NOT_FOUND, "no live ARQ")
                released = claims.release(c, instance, now=self.store.clock(), actor=actor, why="arq_unbound")
            except errors.DevassignError as exc:  # never held anything: nothing to release
                if exc.code != errors.ALLOCATION_NOT_FOUND:
                    raise
            now = self.store.clock()
            chosen = mine if arqs is None else sa.and_(mine, cyborg_arqs.c.uuid.in_(arqs))
            if delete:
                c.execute(cyborg_arqs.delete().where(chosen))
            c.execute(cyborg_arqs.update().where(mine).values(**_unbound(), updated_at=now))
            return released

        return self.db.retrying(go)

    def delete_unbound(self, uuids: list[str]) -> None:
        """Delete ARQs that are bound to no instance."""
        self.db.retrying(
            lambda c: c.execute(
                cyborg_arqs.delete().where(
                    cyborg_arqs.c.uuid.in_(uuids), cyborg_arqs.c.instance_uuid.is_(None)
                )
            )
        )

    def instances_of(self, uuids: list[str]) -> dict[str, str | None]:
        q = sa.select(cyborg_arqs.c.uuid, cyborg_arqs.c.instance_uuid).where(cyborg_arqs.c.uuid.in_(uuids))
        return self.db.reading(lambda c: {r.uuid: r.instance_uuid for r in c.execute(q)})

    # ------------------------------------------------------------ resolution and events
    def resolve(self) -> list[Event]:
        """BindStarted ARQs whose allocation is assigned become Bound, those whose allocation
        is gone BindFailed; each leaves its event. Returns the ARQs this call moved (a
        conditional update each: of several replicas, one moves an ARQ). Reads first: most
        calls find nothing to do and write nothing."""
        live = sa.and_(
            allocations.c.consumer == cyborg_arqs.c.instance_uuid, allocations.c.released_at.is_(None)
        )
        started = self.db.reading(
            lambda c: c.execute(
                sa.select(cyborg_arqs.c.uuid, cyborg_arqs.c.instance_uuid, allocations.c.state)
                .select_from(cyborg_arqs.outerjoin(allocations, live))
                .where(cyborg_arqs.c.state == BIND_STARTED)
            ).all()
        )
        todo = []
        for r in started:
            if r.state == AllocationState.ASSIGNED.value:
                todo.append((r, BOUND, "completed"))
            elif r.state is None:
                todo.append((r, BIND_FAILED, "failed"))
        if not todo:
            return []
        assigned = sa.exists().where(live, allocations.c.state == AllocationState.ASSIGNED.value)
        gone = ~sa.exists().where(live)

        def go(c: sa.Connection) -> list[Event]:
            now = self.store.clock()
            moved = []
            for r, state, status in todo:
                n = c.execute(
                    cyborg_arqs.update()
                    .where(
                        cyborg_arqs.c.uuid == r.uuid,
                        cyborg_arqs.c.state == BIND_STARTED,
                        assigned if state == BOUND else gone,  # still so, under this transaction
                    )
                    .values(state=state, event=status, updated_at=now)
                ).rowcount
                if n:
                    moved.append(Event(r.uuid, r.instance_uuid, status, now))
            return moved

        return self.db.retrying(go)

    def pending_events(self, limit: int = 200) -> list[Event]:
        q = (
            sa.select(
                cyborg_arqs.c.uuid, cyborg_arqs.c.instance_uuid, cyborg_arqs.c.event, cyborg_arqs.c.updated_at
            )
            .where(cyborg_arqs.c.event.is_not(None))
            .order_by(cyborg_arqs.c.id)
            .limit(limit)
        )
        return self.db.reading(
            lambda c: [
                Event(r.uuid, r.instance_uuid, r.event, aware(r.updated_at) or r.updated_at)
                for r in c.execute(q)
            ]
        )

    def events_done(self, done: list[Event]) -> None:
        """Nova was told (or will never be): forget these events."""

        def go(c: sa.Connection) -> None:
            for e in done:
                c.execute(
                    cyborg_arqs.update()
                    .where(cyborg_arqs.c.uuid == e.arq, cyborg_arqs.c.event == e.status)
                    .values(event=None)
                )

        if done:
            self.db.retrying(go)

    def now(self) -> datetime:
        return self.store.clock()

    def too_old(self, event: Event, max_age: timedelta) -> bool:
        return self.store.clock() - event.resolved_at > max_age


class _Lost(Exception):
    def __init__(self, arqs: list[str]) -> None:
        super().__init__(", ".join(arqs))
        self.arqs = arqs


class _Obj:
    """Attribute access to a plain dict, so a row just written and one read share one body."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


def _profile_row(conn: sa.Connection, ref: str) -> Any:
    """The profile whose uuid is ``ref``, else the one of that name (names are unique)."""
    for column in (cyborg_device_profiles.c.uuid, cyborg_device_profiles.c.name):
        row = conn.execute(sa.select(cyborg_device_profiles).where(column == ref)).first()
        if row is not None:
            return row
    return None


def _no_profile(ref: str) -> errors.DevassignError:
    return errors.DevassignError(
        errors.NOT_FOUND,
        f"no device profile {ref!r}: GET /accelerator/v2/device_profiles lists them; an admin "
        "creates one with POST /accelerator/v2/device_profiles",
    )
