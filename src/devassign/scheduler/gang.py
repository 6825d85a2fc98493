"""Gangs: place N instances of one request at once, all or none (pure, no database).

A gang is N consumers that each get their own allocation of the same request (64 instances
of 8 GPUs). ``plan`` assigns instances to the snapshot's hosts greedily: the hosts are ranked
once by ``schedule`` (one instance each), then filled in policy order -- *pack* takes as many
instances as a host holds before the next host, *spread* deals one instance per host per
round. A host's later instances are chosen with the earlier ones' devices held, so instances
never share a device: by one search kept from instance to instance (``fit.Instances``, work
that grows with instances + devices), or, for requests with alternatives and hosts with pools,
by scheduling again on a view of the host with them held (``HostView.with_held``), within
:data:`MAX_VIEW_DEVICES`.

Constraints between instances (``Layout``): at most K per host (``distinct_hosts`` is K = 1),
and one value of a device attribute for all of them (``same="rack"``). Hosts carry no
attributes of their own: a host's value is the one value its devices report for that
attribute (an agent's matching rule can add ``rack = "r12"`` to every device it types); a
host whose devices report none, or several, cannot take part in such a gang.

When not all fit, the plan says how many did and why the next one does not, with the
scheduler's own explanation of that next instance (``63 of 64 instances fit; the 64th ...``).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from devassign.scheduler.fit import FitResult, Instances
from devassign.scheduler.pipeline import (
    DEFAULT_POLICY,
    Decision,
    Explanation,
    HostVerdict,
    Placement,
    schedule,
)
from devassign.scheduler.quota import Quota
from devassign.scheduler.reasons import STAGE, Reason, ReasonCode, ordinal
from devassign.scheduler.request import Request
from devassign.scheduler.scorers import Policy, scorers_for
from devassign.scheduler.view import HostView, Snapshot

MAX_INSTANCES = 1000  # instances per gang (the body's limit; docs/requests.md)


@dataclass(frozen=True, slots=True)
class Layout:
    """Constraints between a gang's instances: ``max_per_host`` (None: no limit) and ``same``
    (a device attribute whose value all instances' hosts share, e.g. ``rack``)."""

    max_per_host: int | None = None
    same: str | None = None

    @property
    def attribute(self) -> str | None:
        return self.same.removeprefix("attributes.") if self.same else None


@dataclass(frozen=True, slots=True)
class GangPlan:
    """Where each instance goes (``placements``, in instance order), or how far it got."""

    wanted: int
    placements: tuple[Placement, ...]
    # Why the next instance fits nowhere (when not all fit); else the first instance's view.
    explanation: Explanation
    message: str
    steps: int
    group: Any = None  # the value of ``Layout.same`` the instances share, when set

    @property
    def fits(self) -> bool:
        return len(self.placements) == self.wanted

    @property
    def placed(self) -> int:
        return len(self.placements)

    def per_host(self) -> dict[str, int]:
        return dict(Counter(p.host for p in self.placements))


def host_value(host: HostView, attribute: str) -> tuple[bool, Any]:
    """(known, value): the one value of ``attribute`` the host's devices report."""
    values = {
        repr(d.attributes[attribute]): d.attributes[attribute]
        for d in host.devices
        if attribute in d.attributes
    }
    if len(values) == 1:
        return True, next(iter(values.values()))
    return False, sorted(values)


def plan(
    request: Request,
    count: int,
    snapshot: Snapshot,
    policy: Policy = DEFAULT_POLICY,
    *,
    layout: Layout = Layout(),  # frozen, never mutated
    quota: Quota | None = None,
    rng: random.Random | None = None,
) -> GangPlan:
    """Assign ``count`` instances of ``request`` to hosts of ``snapshot``, or say how far it got."""
    ranking = replace(policy, max_placements=max(len(snapshot.hosts), 1))
    first = schedule(request, snapshot, ranking, quota=quota, explain_all=True, rng=rng)
    verdicts: dict[str, Reason | None] = {v.host: v.reason for v in first.explanation.hosts}
    attribute = layout.attribute
    outside: dict[str, Reason] = {}
    groups: dict[str, tuple[Any, list[Placement]]] = {}
    if attribute is None:
        groups[""] = (None, list(first.placements))
    else:
        for p in first.placements:
            known, value = host_value(snapshot.by_name[p.host], attribute)
            if not known:
                what = (
                    f"several values of {attribute} ({', '.join(map(str, value))})"
                    if value
                    else "no " + attribute
                )
                outside[p.host] = Reason(
                    ReasonCode.CONSTRAINT_UNSATISFIED,
                    f"its devices report {what}: a gang with the same {attribute} needs exactly one",
                )
                continue
            groups.setdefault(repr(value), (value, []))[1].append(p)
    best: tuple[_Filled, Any] | None = None
    views = [0]  # devices of the host views built for further instances, all groups (MAX_VIEW_DEVICES)
    for value, ranked in groups.values():
        filled = _fill(request, count, snapshot, ranked, ranking, layout, quota, rng, views)
        if len(filled.placements) == count:
            best = (filled, value)
            break
        if best is None or len(filled.placements) > len(best[0].placements):
            best = (filled, value)
    if best is None:  # no host fits even one instance
        best = (_Filled([], {}, first.steps), None)
    filled, value = best
    steps = first.steps + filled.steps
    if len(filled.placements) == count:
        message = f"{count} of {count} instances fit on {len(set(p.host for p in filled.placements))} hosts"
        if attribute is not None:
            message += f" with {attribute}={value}"
        return GangPlan(count, tuple(filled.placements), first.explanation, message, steps, value)
    # Why the next instance fits nowhere: every host's reason as the plan left it.
    for name, why in filled.after.items():
        verdicts[name] = why
    for name, why in outside.items():
        verdicts[name] = why
    far = set(outside)
    if attribute is not None and value is not None:
        for other, ranked in groups.values():
            if other != value:
                for p in ranked:
                    far.add(p.host)
                    verdicts[p.host] = Reason(
                        ReasonCode.CONSTRAINT_UNSATISFIED,
                        f"has {attribute}={other}; the gang's instances share {attribute}={value}",
                    )
    explanation = _explanation(request, snapshot, verdicts, policy, far=far)
    placed = len(filled.placements)
    message = f"{placed} of {count} instances fit"
    if attribute is not None and value is not None:
        message += f" with the same {attribute} ({attribute}={value}, the most of {len(groups)} values)"
    elif attribute is not None:
        message += f" (no fitting host reports one {attribute})"
    message += f"; the {ordinal(placed + 1)} fits on no host: {explanation.summary()}"
    return GangPlan(count, tuple(filled.placements), explanation, message, steps, value)


@dataclass
class _Filled:
    placements: list[Placement]
    after: dict[str, Reason]  # hosts that fitted once, and why they take no more
    steps: int


def _fill(
    request: Request,
    count: int,
    snapshot: Snapshot,
    ranked: Sequence[Placement],
    policy: Policy,
    layout: Layout,
    quota: Quota | None,
    rng: random.Random | None,
    views: list[int],
) -> _Filled:
    """Greedy: pack fills each host in rank order; spread deals one per host per round.
    ``views``: the plan's count of devices in host views built (shared by its groups)."""
    cap = min(layout.max_per_host or count, count)
    left = dict(quota.left()) if quota is not None else {}
    taken: Counter[str] = Counter()
    after: dict[str, Reason] = {}
    steps = [0]
    out: list[Placement] = []

    def quota_now() -> Quota | None:
        """The project's quota with the gang's instances so far counted as used: a later
        instance then takes an alternative that still has room (``first_available``)."""
        if quota is None:
            return None
        used = Counter(quota.usage)
        used.update(taken)
        return Quota(quota.limits, dict(used))

    streams = {
        p.host: _instances(
            request, snapshot.by_name[p.host], p, policy, cap, after, steps, views, rng, quota_now
        )
        for p in ranked
    }

    def take(p: Placement) -> bool:
        """Count the instance against the quota left; False (and stop) when it would exceed it."""
        want = _types_of(snapshot.by_name[p.host], p)
        now = quota_now()
        over = _over(now, want) if now is not None else []
        if over:
            after[p.host] = Reason(
                ReasonCode.OVER_QUOTA,
                f"the gang would exceed the project's quota of {', '.join(over)} "
                f"({', '.join(f'{t}: {left[t]} left' for t in over)})",
            )
            return False
        taken.update(want)
        out.append(p)
        return True

    if policy.mode == "spread":
        live = list(streams.items())
        while live and len(out) < count:
            still = []
            for name, stream in live:
                if len(out) == count:
                    break
                p = next(stream, None)
                if p is not None and take(p):
                    still.append((name, stream))
            live = still
    else:
        for stream in streams.values():
            for p in stream:
                if len(out) == count or not take(p):
                    break
            if len(out) == count:
                break
    return _Filled(out, after, steps[0])


# Devices of the host views one plan may build for the instances it places after the first
# on a host (each a view of the whole host): a bound on a plan's work, whatever the gang's size
# and its hosts'. Instances of single-alternative requests on hosts without pools share one
# search instead and build at most two views a host; this bounds the others.
MAX_VIEW_DEVICES = 500_000


def _instances(
    request: Request,
    host: HostView,
    first: Placement,
    policy: Policy,
    cap: int,
    after: dict[str, Reason],
    steps: list[int],
    views: list[int],
    rng: random.Random | None,
    quota_now: Callable[[], Quota | None],
) -> Iterator[Placement]:
    """The instances one host takes in turn: each scheduled on the host with the earlier
    instances' devices held and within the quota the gang has left (``first``, the plan's
    first look at the host, while that still fits it); why it takes no more goes into
    ``after``."""
    quota = quota_now()
    extra: dict[str, dict[str, int]] = {}
    if quota is None or not _over(quota, _types_of(host, first)):
        yield first
        held = list(first.device_ids())
        extra.update(_params_taking(request, first))
        start = 1
    else:
        held, start = [], 0
    if start >= cap:
        _full(after, host.name, cap)
        return
    k = start
    charge = True  # whether the next view counts against the plan's MAX_VIEW_DEVICES
    if not host.pools and all(len(r.alternatives) == 1 for r in request.requests):
        # One search over the host with the first instance held, its holds kept from one
        # instance to the next: no view of the whole host per instance.
        instances = Instances(host.with_held(held, extra) if held else host, request, policy.budget, rng)
        scorers = scorers_for(policy)
        total_weight = sum(s.weight for s in scorers) or 1.0
        while k < cap:
            now = quota_now()
            chosen, used = instances.next(now.left() if now is not None else None)
            steps[0] += used
            if chosen is None:
                break
            result = FitResult(host.name, chosen, None, used)
            scores = {s.name: s.score(host, result) for s in scorers}
            total = sum(s.weight * scores[s.name] for s in scorers) / total_weight
            p = Placement(host.name, total, scores, chosen, used)
            held.extend(p.device_ids())
            extra.update(_params_taking(request, p))
            k += 1
            yield p
        if k == cap:
            _full(after, host.name, cap)
            return
        # Why no more comes from one view of the host with every instance so far held, not
        # charged to the plan (this host built no other); were the search and that view to
        # disagree, the instances go on a view at a time.
        charge = False
    while True:
        if charge:
            if views[0] + len(host.devices) > MAX_VIEW_DEVICES:
                after[host.name] = Reason(
                    ReasonCode.SEARCH_BUDGET_EXHAUSTED,
                    f"the plan gave up after host views of {MAX_VIEW_DEVICES:,} devices in all "
                    "(too many instances on too large hosts; ask for fewer instances, or "
                    "max_per_host)",
                )
                return
            views[0] += len(host.devices)
        charge = True
        decision = _next_on(request, host, held, extra, policy, quota_now, rng, steps)
        if not decision.fits:
            _refused(after, host.name, decision, k)
            return
        p = decision.placements[0]
        held.extend(p.device_ids())
        extra.update(_params_taking(request, p))
        k += 1
        yield p
        if k == cap:
            _full(after, host.name, cap)
            return


def _next_on(
    request: Request,
    host: HostView,
    held: list[str],
    extra: dict[str, dict[str, int]],
    policy: Policy,
    quota_now: Callable[[], Quota | None],
    rng: random.Random | None,
    steps: list[int],
) -> Decision:
    """The next instance scheduled on a view of ``host`` with ``held`` reserved."""
    view = host.with_held(held, extra) if held else host
    decision = schedule(request, Snapshot((view,)), policy, quota=quota_now(), rng=rng)
    steps[0] += decision.steps
    return decision


def _refused(after: dict[str, Reason], host: str, decision: Decision, k: int) -> None:
    """Why ``host`` takes no instance more than the ``k`` it holds."""
    why = next((v.reason for v in decision.explanation.closest if v.reason), None)
    why = why or Reason(ReasonCode.NOT_ENOUGH_FREE, "has no room for another instance")
    if k:
        why = Reason(why.code, f"holds {k} of the gang's instances; another: {why.message}", why.shortfall)
    after[host] = why


def _full(after: dict[str, Reason], host: str, cap: int) -> None:
    after[host] = Reason(
        ReasonCode.CONSTRAINT_UNSATISFIED,
        f"holds {cap} of the gang's instances, the most one host may ({cap} per host)",
    )


def _params_taking(request: Request, p: Placement) -> dict[str, dict[str, int]]:
    """Per chosen device, what its request's params take of its pool beyond its own
    ``consumes`` (a VF's guaranteed rate of its PF): held by the next instance's view too, or
    the plan puts more instances on a PF than it carries and every claim of it fails."""
    by_name = {r.name: r for r in request.requests}
    out: dict[str, dict[str, int]] = {}
    for c in p.chosen:
        r = by_name.get(c.name)
        taking = dict(r.alternatives[c.alternative].extra) if r is not None else {}
        if taking:
            out.update((i, taking) for i in c.device_ids)
    return out


def _over(quota: Quota, want: Mapping[str, int]) -> list[str]:
    """The limited types of which ``want`` is more than ``quota`` has left."""
    left = quota.left()
    return [t for t, n in want.items() if t in left and n > left[t]]


def _types_of(host: HostView, p: Placement) -> Counter[str]:
    """Devices per type an instance takes (IOMMU group mates count as their own type)."""
    return Counter(host.by_id[i].type for i in p.device_ids() if i in host.by_id)


def _explanation(
    request: Request,
    snapshot: Snapshot,
    verdicts: Mapping[str, Reason | None],
    policy: Policy,
    *,
    far: set[str],
) -> Explanation:
    """The next instance's explanation: hosts removed per reason and the closest misses (those
    only ``far`` from the gang's ``same`` value come last: they say little about the next one)."""
    removed: dict[str, int] = {}
    for code in ReasonCode:
        n = sum(1 for r in verdicts.values() if r is not None and r.code is code)
        if n:
            removed[code.value] = n
    misses = [
        (n, r) for n, r in verdicts.items() if r is not None and r.code is not ReasonCode.HOST_NOT_REQUESTED
    ]
    misses.sort(key=lambda m: (m[0] in far, -STAGE[m[1].code], m[1].shortfall))
    feasible = sum(1 for r in verdicts.values() if r is None)
    closest = tuple(HostVerdict(n, r) for n, r in misses[: policy.max_closest])
    unknown = Reason(ReasonCode.HOST_UNKNOWN, "is not a known host, or has no devices")
    asked = tuple(HostVerdict(n, verdicts.get(n, unknown)) for n in request.hosts)
    return Explanation(len(snapshot.hosts), feasible, removed, asked, closest)
