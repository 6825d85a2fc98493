"""Persistence: all SQL of devassign lives in this package.

:class:`Store` is the facade the server calls: each method is one transaction. Modules
below it hold the queries, grouped by what they are about.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa

from devassign import errors, schemas
from devassign.failpoints import failpoint
from devassign.scheduler.view import Snapshot
from devassign.store import (
    allocations,
    audit,
    candidates,
    catalog,
    claims,
    events,
    gangs,
    hosts,
    inventory,
    moves,
    quotas,
    report_batch,
    secrets,
    taints,
    tokens,
    work,
)
from devassign.store.db import Database, SchemaError, default_url
from devassign.store.tokens import Principal

__all__ = ["ClaimContext", "Database", "Principal", "SchemaError", "Store", "default_url"]
T = TypeVar("T")


@dataclass
class ClaimContext:
    """What :meth:`Store.prepare_claim` read: the type ids, quota and candidates."""

    type_ids: dict[str, int] = field(default_factory=dict)
    # Each type's declared request params as stored (None: none), for scheduler.params.
    params: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, int] = field(default_factory=dict)
    usage: dict[str, int] = field(default_factory=dict)
    snapshot: Snapshot | None = None


# The event log's retention: looked at every minute, at most 20 x 5,000 events a look.
PRUNE_EVERY_S = 60.0
PRUNE_BATCH = 5_000
PRUNE_BATCHES = 20


def utcnow() -> datetime:
    return datetime.now(UTC)


class Store:
    """Every read and write the server makes, each in its own transaction."""

    def __init__(
        self,
        db: Database,
        *,
        down_after: timedelta = timedelta(seconds=90),
        reservation_ttl: timedelta = timedelta(seconds=300),
        clock: Callable[[], datetime] = utcnow,
        agent_takeover_after: timedelta = hosts.AGENT_TAKEOVER_AFTER,
        event_retention: timedelta | None = None,
    ) -> None:
        self.db = db
        self._cursor_key: bytes | None = None
        # Events older than this are deleted by the sweeper (None: kept for ever).
        self.event_retention = event_retention
        self._next_prune = 0.0
        self.down_after = down_after
        self.reservation_ttl = reservation_ttl
        # A second agent process with a host's id is refused until the one last heard from
        # has been silent this long; then it takes over (an agent restart).
        self.agent_takeover_after = agent_takeover_after
        self.clock = clock
        # Hosts with a free device, per type id: a hint for the candidate scan, refreshed by
        # the sweeper (candidates.candidate_snapshot). Stale values cost speed, never correctness.
        self._scarcity: dict[int, int] | None = None

    # ------------------------------------------------------------ catalog
    def list_types(self) -> list[schemas.ResourceType]:
        """The catalog; ``available`` counts free devices of up hosts, ``down`` those of down ones,
        ``tainted`` free devices of up hosts that a taint keeps from new claims, ``partitioned``
        those their pool cannot give now (from the kept per-host counts: catalog.py)."""
        return self.db.reading(lambda c: catalog.list_types(c, up_since=self.up_since()))

    def get_type(self, name: str) -> schemas.ResourceType:
        return self.db.reading(lambda c: catalog.get_type(c, name, up_since=self.up_since()))

    def type_names(self) -> list[str]:
        return self.db.reading(catalog.type_names)

    def create_type(self, body: schemas.ResourceTypeCreate, actor: str) -> schemas.ResourceType:
        return self.db.retrying(lambda c: catalog.create_type(c, body, now=self.clock(), actor=actor))

    def update_type(self, name: str, body: schemas.ResourceTypeUpdate, actor: str) -> schemas.ResourceType:
        return self.db.retrying(
            lambda c: catalog.update_type(
                c, name, body, now=self.clock(), actor=actor, up_since=self.up_since()
            )
        )

    def delete_type(self, name: str, actor: str) -> None:
        self.db.retrying(lambda c: catalog.delete_type(c, name, now=self.clock(), actor=actor))

    # ------------------------------------------------------------ hosts and devices
    def apply_report(
        self,
        host: str,
        report: schemas.InventoryReport,
        actor: str,
        *,
        loaded: bool = False,
        by_agent: bool = False,
    ) -> schemas.InventoryResult:
        """``loaded``: a report from a file (``host load``), refused for a host whose agent is live.
        ``by_agent``: sent with an agent token, which must name the host's id where it has one."""
        return self._one_agent(
            lambda c: inventory.apply_report(
                c,
                host,
                report,
                now=self.clock(),
                actor=actor,
                takeover_after=self.agent_takeover_after,
                loaded=loaded,
                by_agent=by_agent,
            )
        )

    def apply_reports(self, batch: list[schemas.HostReport], actor: str) -> schemas.ReportBatchResult:
        """Many hosts' reports: the new, plain hosts together in one transaction
        (store/report_batch.py), every other one as its own ``apply_report``; one outcome each,
        in the batch's order. One host's refusal is its own answer, not the batch's."""
        together = self.db.retrying(
            lambda c: report_batch.apply_new_hosts(c, batch, now=self.clock(), actor=actor)
        )
        results: list[schemas.HostReportOutcome] = []
        for b in batch:
            done = together.get(b.host)
            if done is None:
                try:
                    done = self.apply_report(b.host, b.report, actor, loaded=True)
                except errors.DevassignError as exc:
                    detail = schemas.ErrorDetail(code=exc.code, message=exc.message, **exc.extra)
                    results.append(schemas.HostReportOutcome(host=b.host, status=exc.status, error=detail))
                    continue
            results.append(schemas.HostReportOutcome(host=b.host, status=200, result=done))
        failed = sum(1 for r in results if r.error is not None)
        return schemas.ReportBatchResult(applied=len(results) - failed, failed=failed, results=results)

    def heartbeat(
        self,
        host: str,
        actor: str,
        instance: str | None = None,
        host_id: str | None = None,
        *,
        by_agent: bool = False,
    ) -> None:
        """``instance``: the agent process's id (the ``X-Devassign-Agent-Instance`` header);
        ``host_id``: the machine's, when the agent sends it (``by_agent``: an agent token's
        heartbeat, which must send it where the host has one)."""
        instance = hosts.checked_instance(instance)
        self._one_agent(
            lambda c: hosts.heartbeat(
                c,
                host,
                now=self.clock(),
                actor=actor,
                instance=instance,
                host_id=host_id,
                takeover_after=self.agent_takeover_after,
                by_agent=by_agent,
            )
        )

    def _one_agent(self, fn: Callable[[sa.Connection], T]) -> T:
        """Run ``fn``; a refused second agent is recorded as an event in a transaction of its
        own (the refused one rolled back), then answered."""
        try:
            return self.db.retrying(fn)
        except hosts.AgentConflict as conflict:
            self.db.retrying(conflict.record)
            raise

    def mark_down(self) -> list[str]:
        return self.db.retrying(lambda c: hosts.mark_down(c, now=self.clock(), down_after=self.down_after))

    def sweep(self) -> list[str]:
        """The server's periodic duties: silent hosts are marked down, stale reservations expire.

        Returns the consumers whose reservations expired.
        """
        self.mark_down()
        expired = self.expire_reservations()
        self.settle_moves()
        self.expire_taints()
        if self.event_retention is not None and time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + PRUNE_EVERY_S
            self.prune_events()
        self.refresh_statistics()
        self.refresh_scarcity()
        return expired

    def prune_events(self, *, batches: int = PRUNE_BATCHES) -> int:
        """Delete the events older than the retention, oldest first, in transactions of
        :data:`PRUNE_BATCH` rows (a claim waits on none of them for long); how many went. At most
        ``batches`` of them a call: a backlog goes over the next sweeps."""
        if self.event_retention is None:
            return 0
        before = self.clock() - self.event_retention
        gone = 0
        for _ in range(batches):
            n = self.db.retrying(lambda c: events.prune(c, before=before, batch=PRUNE_BATCH))
            gone += n
            if n < PRUNE_BATCH:
                break
        return gone

    def refresh_scarcity(self) -> dict[int, int]:
        self._scarcity = self.db.reading(candidates.hosts_with_free)
        return self._scarcity

    def refresh_statistics(self) -> bool:
        """Keep PostgreSQL's statistics of the claim's tables fresh; True if it analyzed.

        Without them (a new database, or autovacuum off) the planner guessed 5 rows and joined
        the candidate query by nested loops (37 ms at 1,000 hosts instead of 0.3 ms), and the
        generic plan of the claim's UPDATE took the index on ``devices.state`` believing 69
        devices were available (2.5 ms at 10,000 hosts instead of 0.1 ms). Like autovacuum,
        analyze a table once a tenth of it changed since the last time (``devices``: every
        few thousand claims; ANALYZE samples, so tens of milliseconds at 120,000 devices).
        """
        if self.db.is_sqlite:
            return False
        with self.db.engine.connect() as c:
            stale = (
                c.execute(
                    sa.text(
                        "SELECT relname FROM pg_stat_user_tables "
                        "WHERE relname IN ('inventory', 'hosts', 'devices') "
                        "AND n_mod_since_analyze > 50 + n_live_tup / 10"
                    )
                )
                .scalars()
                .all()
            )
            if stale:
                c.execute(sa.text("ANALYZE " + ", ".join(sorted(stale))))
            c.commit()
        return bool(stale)

    # ------------------------------------------------------------ taints
    def add_taint(
        self,
        body: schemas.TaintCreate,
        actor: str,
        *,
        host: str | None = None,
        device_id: str | None = None,
        by_agent: bool = False,
    ) -> schemas.Taint:
        """Taint a device, or a host (``body.parent``: a parent and its children) in one
        transaction with the devices' marks, the host's counts and the events."""
        return self.db.retrying(
            lambda c: taints.add_taint(
                c, body, host=host, device_id=device_id, now=self.clock(), actor=actor, by_agent=by_agent
            )
        )

    def remove_taints(
        self,
        actor: str,
        *,
        host: str | None = None,
        device_id: str | None = None,
        parent: str | None = None,
        taint_id: int | None = None,
        agent: bool = False,
    ) -> list[schemas.Taint]:
        return self.db.retrying(
            lambda c: taints.remove_taints(
                c,
                host=host,
                device_id=device_id,
                parent=parent,
                taint_id=taint_id,
                now=self.clock(),
                actor=actor,
                agent=agent,
            )
        )

    def list_taints(self, *, host: str | None = None, device_id: str | None = None) -> list[schemas.Taint]:
        return self.db.reading(
            lambda c: taints.list_taints(c, now=self.clock(), host=host, device_id=device_id)
        )

    def tainted_counts(self, names: list[str], hosts: Sequence[str] = ()) -> dict[str, int]:
        """Per named type: free devices of up hosts (of ``hosts``, when given) that a NoSchedule
        or Drain taint holds back."""

        def read(c: sa.Connection) -> dict[str, int]:
            counts = taints.tainted_counts(c, self.up_since(), hosts)
            return {name: counts.get(i, 0) for name, i in sorted(quotas.type_ids(c, names).items())}

        return self.db.reading(read)

    def taint_texts(self, names: list[str], hosts: Sequence[str] = ()) -> dict[str, list[tuple[str, int]]]:
        """Per named type: the taints holding back free devices of up hosts (of ``hosts``, when
        given), each with its count, most first."""

        def read(c: sa.Connection) -> dict[str, list[tuple[str, int]]]:
            ids = quotas.type_ids(c, names)
            found = taints.taint_texts(c, sorted(ids.values()), self.up_since(), hosts)
            return {name: found[i] for name, i in sorted(ids.items()) if i in found}

        return self.db.reading(read)

    def device_host(self, device_id: str) -> str:
        return self.db.reading(lambda c: taints.device_host(c, device_id))

    def expire_taints(self) -> int:
        """Remove the taints past their expiry: one transaction per host (the sweeper's pass)."""
        now = self.clock()
        n = 0
        for host in self.db.reading(lambda c: taints.expired_hosts(c, now)):
            n += self.db.retrying(functools.partial(taints.expire_host, host=host, now=now))
        return n

    def list_hosts(
        self, *, limit: int | None = None, after: str | None = None, only: str | None = None
    ) -> list[schemas.Host]:
        """Hosts by name: all (the default), or ``limit`` after the name ``after``; ``only``: one."""

        def read(c: sa.Connection) -> list[schemas.Host]:
            now = self.clock()
            found = hosts.list_hosts(
                c, now=now, down_after=self.down_after, limit=limit, after=after, only=only
            )
            look = hosts.taint_candidates(c, found)
            marked: dict[str, schemas.Host] = {}
            for i in range(0, len(look), hosts.NAMES_PER_STATEMENT):
                chunk = look[i : i + hosts.NAMES_PER_STATEMENT]
                marked.update((h.name, h) for h in taints.hosts_with_taints(c, chunk, now))
            return [marked.get(h.name, h) for h in found]

        return self.db.reading(read)

    def host_sizes(
        self, *, names: list[str] | None = None, largest: int | None = None
    ) -> list[tuple[str, int]]:
        """(host, devices) of the named hosts, or of the ``largest`` hosts, from kept counts."""
        return self.db.reading(lambda c: hosts.device_counts(c, names=names, largest=largest))

    def count_enough(self, needs: dict[int, int]) -> int:
        """Up hosts with enough available of every needed type (type id -> count)."""
        return self.db.reading(lambda c: candidates.count_enough(c, needs, up_since=self.up_since()))

    def count_hosts(self, *, only: str | None = None) -> tuple[int, int]:
        """(hosts, of which up) without reading a device."""
        return self.db.reading(lambda c: hosts.count_hosts(c, up_since=self.up_since(), only=only))

    def get_host(self, name: str) -> schemas.Host:
        def read(c: sa.Connection) -> schemas.Host:
            now = self.clock()
            found = hosts.get_host(c, name, now=now, down_after=self.down_after)
            return taints.hosts_with_taints(c, [found], now)[0]

        return self.db.reading(read)

    def delete_host(self, name: str, actor: str, *, force: bool = False) -> None:
        self.db.retrying(
            lambda c: hosts.delete_host(
                c, name, now=self.clock(), actor=actor, down_after=self.down_after, force=force
            )
        )

    def rename_host(self, old: str, new: str, actor: str) -> schemas.Host:
        return self.db.retrying(
            lambda c: hosts.rename_host(
                c, old, new, now=self.clock(), actor=actor, down_after=self.down_after
            )
        )

    def list_devices(
        self,
        *,
        host: str | None = None,
        type: str | None = None,
        state: str | None = None,
        address: str | None = None,
        limit: int = 1000,
        offset: int = 0,
        after: tuple[str, str] | None = None,
    ) -> list[schemas.Device]:
        return self.db.reading(
            lambda c: taints.with_taints(
                c,
                hosts.list_devices(
                    c,
                    host=host,
                    type=type,
                    state=state,
                    address=address,
                    limit=limit,
                    offset=offset,
                    after=after,
                ),
                self.clock(),
            )
        )

    def get_device(self, device_id: str) -> schemas.Device:
        return self.db.reading(
            lambda c: taints.with_taints(c, [hosts.get_device(c, device_id)], self.clock())[0]
        )

    # ------------------------------------------------------------ allocations and events
    def list_allocations(self, **filters: object) -> list[schemas.Allocation]:
        found = self.db.reading(
            lambda c: allocations.list_allocations(c, **filters)  # type: ignore[arg-type]
        )
        # A move's target is the consumer's pending move (GET .../moves), not a consumer.
        if moves.is_internal(str(filters.get("consumer") or "")):
            return found
        return [a for a in found if not moves.is_internal(a.consumer)]

    def get_allocation(self, consumer: str, project: str | None = None) -> schemas.Allocation:
        return self.db.reading(lambda c: allocations.get_allocation(c, consumer, project=project))

    def event_ids_in(self, lo: int, hi: int) -> list[int]:
        return self.db.reading(lambda c: events.event_ids_in(c, lo, hi))

    def newest_event_id(self) -> int:
        return self.db.reading(events.newest_event_id)

    def list_events(self, **filters: object) -> list[schemas.Event]:
        return self.db.reading(lambda c: events.list_events(c, **filters))  # type: ignore[arg-type]

    # ------------------------------------------------------------ claims
    def up_since(self) -> datetime:
        return self.clock() - self.down_after

    def type_ids(self, names: list[str]) -> dict[str, int]:
        return self.db.reading(lambda c: quotas.type_ids(c, names))

    def type_params(self, names: list[str]) -> dict[str, Any]:
        """The named types' declared request params as stored (for explain; a claim has them
        from :meth:`prepare_claim`)."""
        return self.db.reading(lambda c: catalog.declared_params(c, names))

    def candidates(
        self,
        needs: dict[int, int],
        *,
        any_of: list[int],
        names: list[str],
        spread: bool,
        limit: int,
    ) -> Snapshot:
        """The hosts a claim should consider, as a read-only snapshot (one read transaction)."""
        return self.db.reading(
            lambda c: candidates.candidate_snapshot(
                c,
                needs,
                any_of=any_of,
                up_since=self.up_since(),
                names=names,
                spread=spread,
                limit=limit,
                scarcity=self._scarcity_hint(c),
            )
        )

    def candidate_page(
        self, needs: dict[int, int], *, any_of: list[int], after: int, limit: int, max_devices: int
    ) -> tuple[Snapshot, int | None]:
        """A page of candidate hosts by id, read whole, and the next page's cursor
        (:func:`candidates.candidate_page`)."""
        return self.db.reading(
            lambda c: candidates.candidate_page(
                c,
                needs,
                any_of=any_of,
                up_since=self.up_since(),
                after=after,
                limit=limit,
                max_devices=max_devices,
            )
        )

    def prepare_claim(
        self,
        *,
        consumer: str,
        key: str | None,
        project: str,
        types: list[str],
        needs: dict[str, int],
        any_of: list[str],
        names: list[str],
        spread: bool,
        limit: int,
        rotate_all: bool = False,
    ) -> ClaimContext:
        """Everything a claim reads before it writes: the type ids, the project's quota and
        the first candidates, in two statements (three with a quota). The quota is every limit
        of the project, not only of ``types``: the IOMMU group mates a claim takes along count
        against their own type's limit, and the scheduler sees them.

        A replay of an earlier claim is not looked for here: the claim's own transaction finds
        it (the live-consumer index), and so does :meth:`existing_claim` before a claim that
        does not fit is refused.
        """

        def read(c: sa.Connection) -> ClaimContext:
            declared: dict[str, Any] = {}
            ids, limits = quotas.types_and_limits(c, project, types, declared)
            usage = quotas.usage_of(c, project, limits) if limits else {}
            snapshot = None
            if set(types) <= set(ids):
                up_since = self.up_since()
                snapshot = candidates.candidate_snapshot(
                    c,
                    {ids[t]: n for t, n in needs.items()},
                    any_of=[ids[t] for t in any_of],
                    up_since=up_since,
                    names=names,
                    spread=spread,
                    limit=limit,
                    scarcity=self._scarcity_hint(c),
                    rotate_all=rotate_all,
                )
            return ClaimContext(type_ids=ids, params=declared, limits=limits, usage=usage, snapshot=snapshot)

        return self.db.reading(read)

    def _scarcity_hint(self, c: sa.Connection) -> dict[int, int]:
        if self._scarcity is None:  # before the sweeper's first pass
            self._scarcity = candidates.hosts_with_free(c)
        return self._scarcity

    def existing_claim(
        self, consumer: str, key: str | None, project: str, doc: dict[str, Any] | None = None
    ) -> schemas.Allocation | None:
        """The consumer's live allocation if this claim (of ``project``, stored as ``doc``)
        replays it; a conflict if it holds another, belongs to another project, or was made
        by another request with the same key."""
        return self.db.reading(lambda c: claims.existing_claim(c, consumer, key, project, doc))

    def snapshot_of(self, names: list[str]) -> Snapshot:
        """Named hosts whatever their state (for explain)."""
        return self.db.reading(
            lambda c: candidates.load_snapshot(
                c, candidates.host_ids_by_name(c, names), up_since=self.up_since()
            )
        )

    def funnel(self, needs: dict[str, int], names: Sequence[str] = ()) -> dict[str, int]:
        """Why hosts were left out before scheduling; of the ``names`` a request named only."""
        return self.db.reading(lambda c: candidates.funnel(c, needs, up_since=self.up_since(), names=names))

    def quota(self, project: str) -> tuple[dict[str, int], dict[str, int]]:
        """(limits, usage) of every type ``project`` has a limit for."""
        return self.db.reading(lambda c: quotas.project_quota(c, project))

    def set_quota(self, project: str, type_name: str, limit: int | None, actor: str) -> None:
        self.db.retrying(
            lambda c: quotas.set_quota(c, project, type_name, limit, now=self.clock(), actor=actor)
        )

    def list_quotas(self, project: str | None = None) -> list[dict[str, object]]:
        return self.db.reading(lambda c: quotas.list_quotas(c, project))

    def cursor_key(self) -> bytes:
        """The key that signs a member's capacity cursors (store/secrets.py), read once."""
        if self._cursor_key is None:
            text = self.db.retrying(lambda c: secrets.secret(c, secrets.CURSOR_KEY))
            self._cursor_key = bytes.fromhex(text)
        return self._cursor_key

    def claim(self, order: claims.ClaimOrder) -> tuple[schemas.Allocation, bool]:
        """One claim attempt in its own transaction; raises ``claims.LostRace`` on a lost race.

        A second claim of the same consumer inserts nothing (``ON CONFLICT DO NOTHING``) and
        answers the replay or the conflict; a unique index that caught the same device twice
        makes ``retrying`` run the claim again in a fresh transaction, which then loses the race
        in the domain's terms.
        """
        return self.db.retrying(
            lambda c: claims.claim(
                c, order, now=self.clock(), ttl=self.reservation_ttl, up_since=self.up_since()
            )
        )

    def claim_gang(
        self, orders: list[claims.ClaimOrder], gang: str | None = None
    ) -> tuple[list[schemas.Allocation], bool]:
        """Every instance of a gang in one transaction (hosts locked by name first); raises
        ``claims.LostRace`` and claims none when any device was taken meanwhile."""
        return self.db.retrying(
            lambda c: gangs.claim_gang(
                c, orders, gang=gang, now=self.clock(), ttl=self.reservation_ttl, up_since=self.up_since()
            )
        )

    def gang_replays(
        self,
        consumers: list[str],
        key: str | None,
        project: str,
        docs: dict[str, dict[str, Any]] | None = None,
    ) -> list[schemas.Allocation]:
        """The instances' live allocations made by this gang's claim (a conflict for any other)."""
        return self.db.reading(lambda c: gangs.live_of(c, consumers, key, project, docs))

    def release_gang(self, gang: str, project: str | None, actor: str) -> int:
        """Release every live allocation of a gang in one transaction; how many."""
        released = self.db.retrying(
            lambda c: gangs.release_gang(c, gang, project, now=self.clock(), actor=actor)
        )
        for consumer in released:
            self.settle_moves(consumer)  # as release(): a released consumer's pending move ends
        return len(released)

    def bound_through_arqs(self, consumer: str) -> bool:
        """Whether Nova holds the consumer's devices through bound ARQs (the Cyborg API)."""
        return self.db.reading(lambda c: claims.bound_through_arqs(c, consumer))

    def release(self, consumer: str, actor: str, *, on_host: str | None = None) -> bool:
        released = self.db.retrying(
            lambda c: claims.release(c, consumer, now=self.clock(), actor=actor, on_host=on_host)
        )
        self.settle_moves(consumer)  # a released consumer's pending move ends with it
        return released

    # ------------------------------------------------------------ moves (store/moves.py)
    def move_source(self, consumer: str, target: str) -> tuple[dict[str, Any], str, int, bool]:
        """(request document, project, allocation id, whether ``target`` is known) of the live
        allocation a move would move."""
        self.settle_moves(consumer)
        return self.db.reading(lambda c: moves.source_for_move(c, consumer, target))

    def move_replay(self, consumer: str, key: str | None, host: str) -> moves.Move | None:
        return self.db.reading(lambda c: moves.replay_of(c, consumer, key, host))

    def start_move(
        self, order: claims.ClaimOrder, consumer: str, key: str | None, source_id: int | None = None
    ) -> tuple[schemas.Allocation, moves.Move]:
        """Claim a move's target devices and record the move in one transaction (raises
        ``claims.LostRace`` like :meth:`claim`, ``moves.MoveReplay`` for a repeated start)."""
        return self.db.retrying(
            lambda c: moves.start(
                c,
                order,
                consumer=consumer,
                key=key,
                now=self.clock(),
                ttl=self.reservation_ttl,
                up_since=self.up_since(),
                source_id=source_id,
            )
        )

    def list_moves(self, consumer: str) -> list[moves.Move]:
        """The consumer's moves, newest first (a pending one first)."""
        self.settle_moves(consumer)
        return self.db.reading(lambda c: moves.list_moves(c, consumer))

    def commit_move(self, consumer: str, actor: str) -> tuple[moves.Move, bool]:
        self.settle_moves(consumer)
        return self.db.retrying(lambda c: moves.commit(c, consumer, now=self.clock(), actor=actor))

    def abort_move(self, consumer: str, actor: str) -> tuple[moves.Move, bool]:
        self.settle_moves(consumer)
        return self.db.retrying(lambda c: moves.abort(c, consumer, now=self.clock(), actor=actor))

    def settle_moves(self, consumer: str | None = None) -> int:
        """End the pending moves whose target or source was released (expiry, failed setup,
        release): each in its own transaction. The sweeper's pass, and before each move verb."""
        n = 0
        for who in self.db.reading(lambda c: moves.unsettled(c, consumer)):
            n += self.db.retrying(functools.partial(moves.settle, consumer=who, now=self.clock()))
        return n

    def audit(
        self, *, down_for: timedelta, repair: bool = False, actor: str = "audit"
    ) -> schemas.AuditReport:
        """Every inconsistency the audit finds; with ``repair``, the safe ones repaired in the
        same transaction as they were found (``store/audit.py``)."""

        def go(c: sa.Connection) -> schemas.AuditReport:
            now = self.clock()
            found = audit.run(c, now=now, down_for=down_for)
            repaired = audit.fix(c, found, now=now, actor=actor) if repair else []
            return schemas.AuditReport(
                at=now,
                checks=sorted(audit.CHECKS),
                findings=[
                    schemas.AuditFinding(
                        check=f.check,
                        message=f.message,
                        fixable=f.fixable,
                        repaired=f in repaired,
                        host=f.host,
                        device=f.device,
                        consumer=f.consumer,
                    )
                    for f in found
                ],
            )

        return self.db.retrying(go) if repair else self.db.reading(go)

    def expire_reservations(self) -> list[str]:
        stale = self.db.reading(lambda c: claims.expired_consumers(c, self.clock()))
        for consumer in stale:
            self.db.retrying(self._expire_one(consumer))
            failpoint("expire.after_commit")
        return stale

    def _expire_one(self, consumer: str) -> Callable[[sa.Connection], bool]:
        now = self.clock()

        def run(c: sa.Connection) -> bool:
            return claims.release(c, consumer, now=now, actor="server", why="expired", expired_before=now)

        return run

    # ------------------------------------------------------------ lifecycle work
    def work_for_host(
        self, host: str, instance: str | None = None, *, agent: bool = False
    ) -> schemas.WorkList:
        """``instance``: the asking agent process (its header); another process than the one
        whose report the server took is refused (``agent_conflict``), and so is an ``agent``
        token's call without the header while that process is live."""
        instance = hosts.checked_instance(instance)
        fence = self._fence(instance, agent)
        return self.db.reading(lambda c: work.work_for_host(c, host, instance, fence=fence))

    def apply_work_results(
        self,
        host: str,
        results: list[schemas.WorkResult],
        actor: str,
        instance: str | None = None,
        *,
        agent: bool = False,
    ) -> list[schemas.WorkOutcome]:
        instance = hosts.checked_instance(instance)
        fence = self._fence(instance, agent)
        return self.db.retrying(
            lambda c: work.apply_results(
                c, host, results, now=self.clock(), actor=actor, instance=instance, fence=fence
            )
        )

    def _fence(self, instance: str | None, agent: bool) -> datetime | None:
        """For an agent's call without its instance header: since when the recorded agent
        process must have been silent for the call to be served (``agent run --once`` after
        the daemon stopped); a live one holds the host."""
        return self.clock() - self.agent_takeover_after if agent and instance is None else None

    def clear_device(self, device_id: str, reason: str, actor: str) -> schemas.Device:
        return self.db.retrying(
            lambda c: work.clear_device(c, device_id, reason, now=self.clock(), actor=actor)
        )

    def allocation_devices(
        self, consumer: str
    ) -> list[tuple[schemas.Device, dict[str, object], dict[str, object]]]:
        return self.db.reading(lambda c: work.allocation_devices(c, consumer))

    def move_target_devices(
        self, consumer: str
    ) -> list[tuple[schemas.Device, dict[str, object], dict[str, object]]]:
        return self.db.reading(lambda c: work.move_target_devices(c, consumer))

    # ------------------------------------------------------------ tokens
    def create_token(self, body: schemas.TokenCreate, actor: str) -> schemas.TokenCreated:
        return self.db.retrying(lambda c: tokens.create_token(c, body, now=self.clock(), actor=actor))

    def list_tokens(self, *, revoked: bool = False) -> list[schemas.Token]:
        return self.db.reading(lambda c: tokens.list_tokens(c, revoked=revoked))

    def revoke_token(self, token_id: int, actor: str) -> schemas.Token:
        return self.db.retrying(lambda c: tokens.revoke(c, token_id, now=self.clock(), actor=actor))

    def lookup_token(self, secret: str) -> Principal | None:
        """The principal of an API token, or of a dashboard session started by a sign-in link."""
        return self.db.reading(lambda c: tokens.lookup(c, secret, now=self.clock()))

    def create_login_code(self, token_id: int, actor: str) -> tuple[str, datetime]:
        """A one-time sign-in code for a live token and its expiry (the code is shown once)."""
        return self.db.retrying(
            lambda c: tokens.create_login_code(c, token_id, now=self.clock(), actor=actor)
        )

    def use_login_code(self, code: str) -> str | None:
        """A new dashboard session's secret for a sign-in code, once; None if it cannot be used."""
        return self.db.retrying(lambda c: tokens.use_login_code(c, code, now=self.clock()))

    def end_session(self, secret: str) -> bool:
        """Sign a dashboard session out; False when ``secret`` is not a live session."""
        return self.db.retrying(lambda c: tokens.end_session(c, secret, now=self.clock()))
