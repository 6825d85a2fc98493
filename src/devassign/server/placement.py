"""Place and claim: the store finds candidates, the pure scheduler chooses, the store claims.

Each step is its own transaction. A lost race tries the next ranked host in a fresh
transaction; when every ranked host is lost, the candidates are read again (bounded). A
request that cannot be placed always says why: the SQL pre-filter's funnel plus the
scheduler's per-filter counts and the reasons of the closest hosts.

Selectors run only outside transactions: each verb charges its evaluations to a per-request
budget (``scheduler.budget``, a 400 past it), and the refit that a claim runs under the
host's lock (and on SQLite under the process's write lock) evaluates nothing, answering from
the results this request already has. Explain and capacity read at most ``max_devices``
devices and ``max_hosts`` hosts per call.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import prometheus_client

from devassign import errors, schemas
from devassign.domain import Role
from devassign.scheduler import (
    ClaimBody,
    Decision,
    Explanation,
    HostView,
    Placement,
    Policy,
    Quota,
    Request,
    RequestError,
    Snapshot,
    claim_order,
    explain,
    parse_claim,
    schedule,
)
from devassign.scheduler.budget import SelectorBudget, no_evaluation, selector_budget
from devassign.scheduler.capacity import capacity
from devassign.scheduler.params import has_params, request_doc
from devassign.scheduler.reasons import effects_only, funnel_sentence, tainted_phrase
from devassign.store import ClaimContext, Principal, Store
from devassign.store.claims import ClaimOrder, HostBusy, LostRace, OverQuota, Pick, Refit
from devassign.store.quotas import over_quota

log = logging.getLogger(__name__)

# Claim attempts that lost their host to a concurrent claim, per claim made: the collision rate.
LOST_RACES = prometheus_client.Counter(
    "devassign_claim_lost_races",
    "Claim attempts that lost a host to a concurrent claim: busy (its lock held, skipped) or "
    "taken (its devices taken meanwhile, or no longer fitting under its lock)",
    ["why"],
)


def _lost(exc: LostRace) -> None:
    LOST_RACES.labels("busy" if isinstance(exc, HostBusy) else "taken").inc()


def first_choices(request: Request, n: int = 1) -> dict[str, int]:
    """Devices per type that the request's first choices ask for (``n`` instances of it)."""
    first: dict[str, int] = defaultdict(int)
    for r in request.requests:
        first[r.first.type] += r.first.count * n
    return dict(first)


def plan_quota_refusal(
    request: Request, project: str, quota: Quota, *, n: int = 1, whose: str = "this claim"
) -> errors.DevassignError:
    """The ``403 quota_exceeded`` of a plan that no host fits within the quota: ``requested``
    is what the request's first choices add to each limited type."""
    asked = {t: k for t, k in first_choices(request, n).items() if t in quota.limits}
    return over_quota(project, quota.limits, quota.usage, asked, whose=whose)


@dataclass(frozen=True, slots=True)
class CapacityPage:
    """One page of a capacity walk: up to ``limit`` candidate hosts after the cursor ``after``
    (0: from the first); ``signature``: the one a member's cursor carries (server/views.py)."""

    after: int
    limit: int
    signature: str | None = None


@dataclass(frozen=True)
class PlacementConfig:
    policy: Policy = field(default_factory=Policy)
    candidate_limit: int = 8  # hosts read per attempt: enough to rank, few enough to be fast
    explain_limit: int = 200
    # Devices one explain or capacity call may read (all states): 10 hosts at the report's
    # limit of 20,000, or 10,000 hosts of 20; each costs memory and a pass of every check.
    max_devices: int = 200_000
    # Hosts one capacity call may count (named ones: the route's 1,000 at most).
    max_hosts: int = 10_000
    # Fresh candidate reads after every ranked host was lost to a race: each lost race means
    # another claim won, so keep going while a fresh read still finds a host that fits.
    attempts: int = 20


def parse(body: ClaimBody) -> Request:
    try:
        return parse_claim(body)
    except RequestError as exc:
        where = f" (at {exc.pointer})" if exc.pointer else ""
        raise errors.DevassignError(exc.code.value, exc.message + where, pointer=exc.pointer) from exc


def _needs(request: Request) -> tuple[dict[str, int], list[str]]:
    """Types every placement needs (with counts), and types of which any one may do."""
    needs: dict[str, int] = defaultdict(int)
    any_of: list[str] = []
    for r in request.requests:
        if len(r.alternatives) == 1:
            needs[r.first.type] += r.first.count
        else:
            any_of.extend(a.type for a in r.alternatives)
    return dict(needs), any_of


def explanation_body(
    exp: Explanation, funnel: dict[str, int] | None, taints: Sequence[str] = ()
) -> dict[str, Any]:
    return {
        "summary": exp.summary(),
        "considered": exp.considered,
        "feasible": exp.feasible,
        "removed": dict(exp.removed),
        "funnel": funnel or {},
        "taints": list(taints),
        "hosts": [
            {
                "host": v.host,
                "fits": v.reason is None,
                "reason": v.reason.code.value if v.reason else None,
                "message": v.sentence,
            }
            for v in exp.hosts
        ],
        "closest": [
            {"host": v.host, "reason": v.reason.code.value if v.reason else None, "message": v.sentence}
            for v in exp.closest
        ],
    }


def policy_body(policy: Policy) -> dict[str, Any]:
    """How hosts are ranked (``devassign server --policy`` and the weights): the keys of
    ``weights`` are the scorers' names, as in each placement's ``scores``."""
    return {
        "mode": policy.mode,
        "weights": {
            policy.mode: policy.binpack_weight,
            "numa": policy.numa_weight,
            "fragmentation": policy.fragmentation_weight,
        },
    }


# How each verb names hosts: capacity's query parameter, explain's body field.
_HOSTS = {"capacity": "host=, admins", "explain": "hosts, admins"}


@contextlib.contextmanager
def _budgeted(*, remember: bool = False) -> Iterator[SelectorBudget]:
    """Charge this block's selector evaluations to one budget; past it, a 400."""
    try:
        with selector_budget(SelectorBudget(remember=remember)) as budget:
            yield budget
    except RequestError as exc:
        raise errors.DevassignError(exc.code.value, exc.message) from exc


def _check_params(body: ClaimBody, *, instances: int = 1) -> None:
    """A MAC address belongs to one NIC: refuse one MAC for several devices, also for the
    ``instances`` of a gang, each of which gets the body's requests (its params included)."""
    for i, r in enumerate(body.requests):
        if "mac" not in r.params:
            continue
        if r.count > 1:
            raise errors.DevassignError(
                errors.INVALID_REQUEST,
                f"requests/{i} ({r.name}): a MAC address is for one device; ask for count 1 per NIC "
                "that needs a MAC (one named request each)",
            )
        if instances > 1:
            raise errors.DevassignError(
                errors.INVALID_REQUEST,
                f"requests/{i} ({r.name}): a MAC address is for one device, and a gang gives each of "
                f"its {instances} instances the same params; claim the instances that need a MAC "
                "one by one",
            )


class Placer:
    def __init__(self, store: Store, config: PlacementConfig | None = None) -> None:
        self.store = store
        self.config = config or PlacementConfig()
        self.rng = random.Random()
        # Claims this process is placing right now: a burst is when more than a few are (claim).
        self._in_flight = 0
        # Hosts this process's claims are claiming on right now (a burst tries others first).
        self._claiming: Counter[str] = Counter()
        self._in_flight_lock = threading.Lock()

    @contextlib.contextmanager
    def _flying(self) -> Iterator[int]:
        """Count this claim in flight; yields how many are (this one included)."""
        with self._in_flight_lock:
            self._in_flight += 1
            now = self._in_flight
        try:
            yield now
        finally:
            with self._in_flight_lock:
                self._in_flight -= 1

    # ------------------------------------------------------------ helpers
    def _type_ids(self, request: Request) -> tuple[dict[int, int], list[int]]:
        needs, any_of = _needs(request)
        ids = self.store.type_ids([*needs, *any_of])
        _refuse_unknown([*needs, *any_of], ids)
        return {ids[t]: n for t, n in needs.items()}, [ids[t] for t in any_of]

    def _snapshot(self, request: Request, limit: int) -> Snapshot:
        needs, any_of = self._type_ids(request)
        return self.store.candidates(
            needs,
            any_of=any_of,
            names=list(request.hosts),
            spread=self.config.policy.mode == "spread",
            limit=limit,
        )

    def _quota(self, project: str) -> Quota | None:
        """The project's quota as it is now: every limit (group mates count as their own type)."""
        limits, usage = self.store.quota(project)
        return Quota(limits, usage) if limits else None

    def funnel(self, request: Request, *, operator: bool) -> tuple[dict[str, int], list[str]]:
        """An explanation's before-scheduling counts: of the hosts an operator's request names
        (it can go nowhere else), else of every host. A member's answer never depends on the
        hosts named (a move's target): made up, down, tainted or full read the same to a member.
        With them, what the taints are that alone make hosts lack devices (for a member
        their effects alone: who set them and why is for operators)."""
        names = request.hosts if operator else ()
        found = self.store.funnel(_needs(request)[0], names)
        held = [k.removeprefix("tainted_") for k in found if k.startswith("tainted_")]
        if not held:
            return found, []
        phrases = []
        for type_name, pairs in self.store.taint_texts(held, names).items():
            counts: Counter[str] = Counter()
            for text, n in pairs:
                counts[text] += n
            phrase = tainted_phrase(type_name, counts.most_common())
            phrases.append(phrase if operator else effects_only(phrase))
        return found, phrases

    def _named_verdicts(self, request: Request, decision: Decision, quota: Quota | None) -> Decision:
        """A refused claim that names hosts says each one's own reason, as explain does: the
        candidate read leaves out the named hosts that are down or short of free devices,
        which would otherwise read as unknown. Only on the refusal, never on the way to a claim."""
        if not request.hosts:
            return decision
        try:  # the hosts named, read as explain reads them
            snapshot = self._bounded_snapshot(request, want=self.config.explain_limit, verb="explain")
        except errors.DevassignError:
            return decision  # too large to read again for a sentence: the first answer stands
        full = schedule(request, snapshot, self.config.policy, quota=quota)
        return decision if full.fits else full  # freed since: the refusal read stands

    def _quota_refusal(
        self, request: Request, project: str, quota: Quota, snapshot: Snapshot
    ) -> errors.DevassignError:
        """The ``403`` of a claim the quota alone refuses. Where its own types are within the
        limits, the IOMMU group mates that come along passed them: ``requested`` is then what
        the best placement without the quota would add to each limited type, mates included."""
        refusal = plan_quota_refusal(request, project, quota)
        if any(quota.usage.get(t, 0) + n > quota.limits[t] for t, n in refusal.extra["requested"].items()):
            return refusal
        unbounded = schedule(request, snapshot, self.config.policy)
        if not unbounded.fits:
            return refusal
        best = unbounded.placements[0]
        host = snapshot.by_name[best.host]
        adds = Counter(host.by_id[i].type for i in best.device_ids() if i in host.by_id)
        asked = {t: n for t, n in adds.items() if t in quota.limits}
        if not asked:
            return refusal
        found = over_quota(project, quota.limits, quota.usage, asked)
        mates = {host.by_id[i].type for c in best.chosen for i in c.companion_ids if i in host.by_id}
        if not mates & set(asked):  # an alternative over the quota, not the mates of one
            return found
        note = " (the IOMMU group mates that come with the devices count against the quota too)"
        return errors.DevassignError(found.code, found.message + note, **found.extra)

    def _no_valid_host(
        self, request: Request, decision: Decision, why: str, caller: Principal
    ) -> errors.DevassignError:
        body = explanation_body(
            decision.explanation, *self.funnel(request, operator=caller.role is not Role.MEMBER)
        )
        closest = "; ".join(c["message"] for c in body["closest"])
        before = funnel_sentence(body["funnel"], body["taints"])
        asked = "; ".join(h["message"] for h in body["hosts"] if not h["fits"])
        if before and not decision.explanation.considered:
            message = f"{why}: no host fits: {before}"  # not "0 hosts considered": this is why
        elif asked and not decision.explanation.considered:
            message = f"{why}: no host fits: {asked}"  # the hosts named: unknown, no devices
        else:
            message = f"{why}: {decision.explanation.summary()}" + (f"; {before}" if before else "")
        if closest:
            message += f"; closest: {closest}"
        return errors.DevassignError(errors.NO_VALID_HOST, message, explanation=body)

    # ------------------------------------------------------------ the verbs
    def claim(
        self, body: ClaimBody, caller: Principal, *, stored: bool = False
    ) -> tuple[schemas.Allocation, bool]:
        """Place and claim; returns (allocation, created) -- created is False for a replay.
        ``stored``: the body is an allocation's stored request (a move), whose params were
        checked when it was claimed and stay as they were (a declaration applies to later
        claims)."""
        request = parse(body)
        _check_params(body)
        if not request.consumer:
            raise errors.DevassignError(
                errors.INVALID_REQUEST, "a claim needs a consumer (the instance UUID)"
            )
        project = _project(request, caller)
        needs, any_of = _needs(request)
        types = sorted({a.type for r in request.requests for a in r.alternatives})
        with self._flying() as in_flight:
            # A burst: more claims in flight in this process than the few best hosts. They all
            # read the same best hosts (in *pack* mode the few partly used ones) and raced for
            # them, which serialised them (docs/benchmarks.md). So each reads the equal hosts
            # of every rank in a random order and may take any fitting host it read from its
            # first try: the claims spread. *Pack* fills the partly used hosts again after.
            burst = in_flight > self.config.policy.subset_size
            ctx = self.store.prepare_claim(
                consumer=request.consumer,
                key=request.idempotency_key,
                project=project,
                types=types,
                needs=needs,
                any_of=any_of,
                names=list(request.hosts),
                spread=self.config.policy.mode == "spread",
                limit=self.config.candidate_limit,
                rotate_all=burst,
            )
            _refuse_unknown(types, ctx.type_ids)
            quota = Quota(ctx.limits, ctx.usage) if ctx.limits else None
            doc = body.model_dump(mode="json", exclude_none=True)
            if not stored:
                try:
                    doc = _checked_doc(body, ctx.params, project)
                except errors.DevassignError:
                    # A retry of a claim made before its type's params were declared otherwise
                    # answers the allocation it made (the same request, word for word).
                    replay = self._replay_of(request, project, doc)
                    if replay is None:
                        raise
                    return replay, False
            # Remember every selector result: the refit under a lock may only look them up.
            with _budgeted(remember=True):
                outcome = self._place(request, project, doc, caller, ctx, quota, burst=burst)
        if not isinstance(outcome, errors.DevassignError):
            return outcome
        # A replay of a claim that was made (and now holds the capacity and the quota it
        # needs) answers that allocation, not the refusal.
        replay = self.store.existing_claim(request.consumer, request.idempotency_key, project, doc)
        if replay is not None:
            return replay, False
        raise outcome

    def _replay_of(self, request: Request, project: str, doc: dict[str, Any]) -> schemas.Allocation | None:
        """The live allocation ``doc`` replays (same consumer, key, project and request), else None."""
        if request.idempotency_key is None or request.consumer is None:
            return None
        try:
            return self.store.existing_claim(request.consumer, request.idempotency_key, project, doc)
        except errors.DevassignError:
            return None

    def _place(
        self,
        request: Request,
        project: str,
        doc: dict[str, Any],
        caller: Principal,
        ctx: ClaimContext,
        quota: Quota | None,
        *,
        burst: bool = False,
    ) -> tuple[schemas.Allocation, bool] | errors.DevassignError:
        """Schedule and claim, reading afresh after lost races: the allocation, or the refusal.

        A claim that the quota refused under its lock (:class:`OverQuota`: another claim of the
        project committed since the read, or a refit took other devices) is planned again at
        once with the quota read afresh: another alternative may fit it, else the fresh plan
        is the 403."""
        assert request.consumer is not None
        decision: Decision | None = None
        refusal: errors.DevassignError | None = None
        over: OverQuota | None = None  # the last attempt's, when the quota refused it
        for attempt in range(self.config.attempts):
            snapshot = ctx.snapshot if attempt == 0 and ctx.snapshot is not None else None
            if snapshot is None:
                # After lost races, look wider: the best hosts are where everyone else is racing.
                snapshot = self._snapshot(request, self.config.candidate_limit * min(attempt + 1, 4))
            decision = schedule(request, snapshot, self.config.policy, quota=quota, rng=self.rng)
            if not decision.fits:
                if (
                    quota is not None
                    and "over_quota" in decision.explanation.removed
                    and len(decision.explanation.removed) == 1
                ):
                    refusal = self._quota_refusal(request, project, quota, snapshot)
                else:
                    decision = self._named_verdicts(request, decision, quota)
                    refusal = self._no_valid_host(request, decision, "no host can hold this request", caller)
                break
            # First attempt: one of the few best at random; after a lost race, or in a burst,
            # any fitting host.
            wide = attempt > 0 or burst
            subset = len(decision.placements) if wide else self.config.policy.subset_size
            try:
                return self._claim_ranked(
                    decision, subset, snapshot, request, project, doc, caller, ctx, quota, burst=burst
                )
            except OverQuota as exc:
                over = exc
                quota = self._quota(project)
                continue
            except LostRace:
                over = None
            # Every ranked host was lost: back off a little before reading afresh.
            time.sleep(self.rng.uniform(0, 0.002 * (attempt + 1)))
        else:
            assert decision is not None
            refusal = (
                over.error
                if over is not None
                else self._no_valid_host(
                    request, decision, "every fitting host was taken by concurrent claims", caller
                )
            )
        assert refusal is not None
        return refusal

    def _claim_ranked(
        self,
        decision: Decision,
        subset: int,
        snapshot: Snapshot,
        request: Request,
        project: str,
        doc: dict[str, Any],
        caller: Principal,
        ctx: ClaimContext,
        quota: Quota | None,
        *,
        burst: bool,
    ) -> tuple[schemas.Allocation, bool]:
        """Claim on one of the decision's hosts; raises ``LostRace`` when every one was lost,
        :class:`OverQuota` at once when the quota refused the devices taken on one.

        Each ranked host is tried at most twice. First as the snapshot saw it, skipping a host
        another claim holds; then, for the hosts that were busy or lost, under the host's lock
        with a fresh look at its devices (a refit), in rank order. Concurrent claims so spread
        over the hosts, and a host that still fits is not given up.
        """
        again = []
        order = claim_order(decision.placements, subset, self.rng)
        if burst:  # hosts another claim of this process is on now: last (stable sort)
            with self._in_flight_lock:
                order = tuple(sorted(order, key=lambda p: p.host in self._claiming))
        for placement in order:
            try:
                return self._claim_on(placement, request, project, doc, caller, ctx)
            except OverQuota:
                raise
            except LostRace as exc:
                _lost(exc)
                log.debug("claim of %s on %s lost a race: %s", request.consumer, placement.host, exc)
                again.append(placement)
        refit = self._refit(request, quota)
        lost: LostRace | None = None
        for placement in again:
            # The refit runs under the host's lock and evaluates no selector: give it the
            # results for every device of the host now, while no lock is held.
            _know_selectors(request, snapshot.by_name.get(placement.host))
            try:
                return self._claim_on(placement, request, project, doc, caller, ctx, refit=refit)
            except OverQuota:
                raise
            except LostRace as exc:
                _lost(exc)
                log.debug("refit of %s on %s failed: %s", request.consumer, placement.host, exc)
                lost = exc
        raise lost or LostRace("every ranked host was lost")

    def _claim_on(
        self,
        placement: Placement,
        request: Request,
        project: str,
        doc: dict[str, Any],
        caller: Principal,
        ctx: ClaimContext,
        *,
        refit: Refit | None = None,
    ) -> tuple[schemas.Allocation, bool]:
        """One claim attempt on one host, in its own transaction (raises ``LostRace``).

        Without ``refit`` it skips a host another transaction holds (``HostBusy``); with one it
        waits for the host's lock and chooses again on what it then sees.
        """
        chosen = [Pick(c.name, c.device_ids, c.companion_ids) for c in placement.chosen]
        assert request.consumer is not None  # claim() refused a request without one
        order = ClaimOrder(
            host=placement.host,
            chosen=chosen,
            consumer=request.consumer,
            project=project,
            key=request.idempotency_key,
            request_doc=doc,
            actor=caller.name,
            type_names={i: t for t, i in ctx.type_ids.items()},
            # The store checks the quota for the devices it takes (a refit's, group mates
            # included) whenever the project has a limit for one of their types by then.
            wait=refit is not None,
            refit=refit,
            # What each named request's params take of its devices' pools (a VF's guaranteed
            # rate): recorded with the devices, checked against the pools under the lock.
            consumption={r.name: dict(r.first.extra) for r in request.requests if r.first.extra},
        )
        with self._in_flight_lock:
            self._claiming[placement.host] += 1
        try:
            return self.store.claim(order)
        finally:
            with self._in_flight_lock:
                self._claiming[placement.host] -= 1
                if not self._claiming[placement.host]:
                    del self._claiming[placement.host]

    def _refit(self, request: Request, quota: Quota | None) -> Refit:
        def refit(view: HostView) -> list[Pick] | None:
            # Called inside the claim's transaction, holding the host's row lock (and on
            # SQLite the write lock of the whole process): no selector runs here. A device
            # whose result is not known yet (new since the read) does not match this time.
            with no_evaluation():
                decision = schedule(request, Snapshot((view,)), self.config.policy, quota=quota)
            if not decision.fits:
                return None
            return [Pick(c.name, c.device_ids, c.companion_ids) for c in decision.placements[0].chosen]

        return refit

    def _bounded_snapshot(self, request: Request, *, want: int, verb: str) -> Snapshot:
        """The hosts ``verb`` looks at, reading at most ``max_devices`` devices.

        Named hosts are counted before they are read. Otherwise the candidate query reads at
        most as many hosts as the largest hosts of the cloud allow; ``want`` is how many the
        verb would like (explain: the best ``explain_limit``; capacity: all of them, which
        is a 400 when more are candidates than may be read).
        """
        cfg = self.config
        if request.hosts:
            self._type_ids(request)  # unknown types are a 400 here too
            named = set(request.hosts)
            devices = sum(n for _, n in self.store.host_sizes(names=sorted(named)))
            if devices > cfg.max_devices:
                raise errors.DevassignError(
                    errors.INVALID_REQUEST,
                    f"{verb} would read {devices:,} devices on the {len(named)} hosts named, at most "
                    f"{cfg.max_devices:,} per call; name fewer hosts ({_HOSTS[verb]}) and add up the answers",
                )
            return self.store.snapshot_of(list(request.hosts))
        paging = " or page through them (limit=, then after= the answer's next)" if verb == "capacity" else ""
        too_many = errors.DevassignError(
            errors.INVALID_REQUEST,
            f"{verb} reads at most {cfg.max_hosts:,} hosts and {cfg.max_devices:,} devices per call, "
            f"and more hosts than fit in that are candidates; name the hosts ({_HOSTS[verb]}; up to "
            f"1,000 a call){paging} and add up the answers",
        )
        # The candidate read's own filter (enough of every needed type, host up), counted on
        # the kept counts before a device is read: 10,000 hosts read only to refuse cost seconds.
        needs, any_of = self._type_ids(request)
        if want > cfg.max_hosts and needs and not any_of and self.store.count_enough(needs) > cfg.max_hosts:
            raise too_many
        # The hosts the call may read: as many as the largest hosts of the cloud allow.
        room, devices = 0, 0
        largest = self.store.host_sizes(largest=min(want, cfg.max_hosts) + 1)
        for _, n in largest:
            if devices + n > cfg.max_devices:
                break
            room, devices = room + 1, devices + n
        read = min(want, room)
        snapshot = self._snapshot(request, read)
        maybe_more = len(snapshot.hosts) >= read and read < len(largest)
        if want > cfg.max_hosts and (maybe_more or len(snapshot.hosts) > cfg.max_hosts):
            raise too_many
        return snapshot

    def explain(
        self, body: ClaimBody, caller: Principal, *, snapshot: Snapshot | None = None
    ) -> dict[str, Any]:
        """Would it fit, where, and why not (on ``snapshot`` when given, else on the hosts the
        request names or the candidate hosts)."""
        request = parse(body)
        _check_params(body)  # what the claim refuses, explain does not call a fit
        if snapshot is None:
            snapshot = self._bounded_snapshot(request, want=self.config.explain_limit, verb="explain")
        if has_params(body):
            types = [a.type for r in request.requests for a in r.alternatives]
            _checked_doc(body, self.store.type_params(types), _project(request, caller))
        quota = self._quota(_project(request, caller)) if (request.project or caller.project) else None
        with _budgeted():
            decision = (
                explain(request, snapshot, self.config.policy)
                if quota is None
                else schedule(request, snapshot, self.config.policy, quota=quota, explain_all=True)
            )
        body_out = explanation_body(
            decision.explanation, *self.funnel(request, operator=caller.role is not Role.MEMBER)
        )
        body_out["fits"] = decision.fits
        body_out["placements"] = [
            {
                "host": p.host,
                "score": round(p.score, 4),
                "scores": {k: round(v, 4) for k, v in p.scores.items()},
                "devices": {
                    c.name: {"type": c.type, "ids": list(c.device_ids), "group_mates": list(c.companion_ids)}
                    for c in p.chosen
                },
            }
            for p in decision.placements
        ]
        body_out["steps"] = decision.steps
        body_out["policy"] = policy_body(self.config.policy)
        return body_out

    def capacity(
        self, body: ClaimBody, caller: Principal, page: CapacityPage | None = None
    ) -> dict[str, Any]:
        """How many more instances fit: on the hosts named, on every candidate host (at most
        ``max_hosts``), or on one ``page`` of the candidate hosts (``next`` is the cursor of
        the page after it, None after the last). Params are checked as the claim checks them:
        a request the claim refuses is not counted as fitting."""
        request = parse(body)
        _check_params(body)
        project = _project(request, caller)  # a member names its own project or none
        if has_params(body):
            types = [a.type for r in request.requests for a in r.alternatives]
            _checked_doc(body, self.store.type_params(types), project)
        cursor: int | None = None
        if page is None:
            snapshot = self._bounded_snapshot(request, want=self.config.max_hosts + 1, verb="capacity")
        elif request.hosts:
            raise errors.DevassignError(
                errors.INVALID_REQUEST,
                "capacity counts either the hosts named or a page of the candidate hosts: leave out "
                "the hosts, or limit and after",
            )
        else:
            needs, any_of = self._type_ids(request)
            snapshot, cursor = self.store.candidate_page(
                needs, any_of=any_of, after=page.after, limit=page.limit, max_devices=self.config.max_devices
            )
        with _budgeted():
            found = capacity(request, snapshot)
        answer: dict[str, Any] = {
            "total": found.total,
            "per_host": dict(sorted(found.per_host.items())),
            "truncated": found.truncated,
        }
        # Free devices of up hosts (of the hosts named, when some are) that a taint keeps out of
        # the count above, per type (when any).
        tainted = self.store.tainted_counts(
            sorted({a.type for r in request.requests for a in r.alternatives}), request.hosts
        )
        if any(tainted.values()):
            answer["tainted"] = tainted
        if page is not None:
            answer["next"] = None if cursor is None else str(cursor)
        return answer


def _know_selectors(request: Request, view: HostView | None) -> None:
    """Evaluate the request's selectors on every device of ``view`` of a requested type (any
    state; cached per class of identical devices), so a refit finds each result known."""
    if view is None:
        return
    for r in request.requests:
        for alt in r.alternatives:
            if alt.selector is not None:
                for d in view.devices:
                    if d.type == alt.type:
                        alt.selector.matches(d)


def _checked_doc(body: ClaimBody, declared: dict[str, Any], project: str) -> dict[str, Any]:
    """The claim as stored, its params checked against what their types declare (else a 400)."""
    try:
        return request_doc(body, declared, project)
    except RequestError as exc:
        message = f"{exc.message} (at {exc.pointer})"
        raise errors.DevassignError(exc.code.value, message, pointer=exc.pointer) from exc


def _refuse_unknown(types: list[str], known: dict[str, int]) -> None:
    unknown = sorted(set(types) - set(known))
    if unknown:
        raise errors.DevassignError(
            errors.TYPE_NOT_FOUND,
            f"unknown resource type {', '.join(unknown)}: `devassign types` lists the catalog",
        )


def _project(request: Request, caller: Principal) -> str:
    """A member claims for its own project; an admin for the project it names."""
    if caller.project is not None and caller.role.value == "member":
        if request.project and request.project != caller.project:
            raise errors.DevassignError(
                errors.FORBIDDEN,
                f"a member of {caller.project!r} cannot claim for project {request.project!r}",
            )
        return caller.project
    return request.project or "default"
