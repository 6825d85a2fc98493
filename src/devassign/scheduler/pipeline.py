"""The whole scheduling decision in one function: filters, fit, scorers, explanation.

Pure: it reads a ``Snapshot`` and returns a ``Decision``; the store persists the claim
(Nomad State/Planner, DRA "the caller persists"). ``schedule`` reads top to bottom.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from devassign.scheduler.candidates import Candidates
from devassign.scheduler.filters import (
    Filter,
    FreeCountFilter,
    HostListFilter,
    HostUpFilter,
    IommuGroupFilter,
    SelectorFilter,
)
from devassign.scheduler.fit import Chosen, FitResult, fit
from devassign.scheduler.quota import Quota
from devassign.scheduler.reasons import STAGE, Reason, ReasonCode
from devassign.scheduler.request import Request
from devassign.scheduler.scorers import Policy, scorers_for
from devassign.scheduler.view import Snapshot

DEFAULT_POLICY = Policy()


@dataclass(frozen=True, slots=True)
class Placement:
    """One host that fits, with the devices to claim per named request, best first."""

    host: str
    score: float
    scores: Mapping[str, float]
    chosen: tuple[Chosen, ...]
    steps: int

    def device_ids(self) -> tuple[str, ...]:
        """Every device the claim takes (chosen and IOMMU group mates), in request order."""
        return tuple(i for c in self.chosen for i in (*c.device_ids, *c.companion_ids))


@dataclass(frozen=True, slots=True)
class HostVerdict:
    """A host asked about: ``reason`` is ``None`` when it fits."""

    host: str
    reason: Reason | None

    @property
    def sentence(self) -> str:
        return f"{self.host}: {self.reason.message if self.reason else 'fits'}"


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why the decision is what it is; the body of a 409 and of ``POST /v1/explain``."""

    considered: int
    feasible: int
    removed: Mapping[str, int]  # reason code -> hosts it removed, in pipeline order
    hosts: tuple[HostVerdict, ...]  # the hosts asked about (request.hosts, or all on explain)
    closest: tuple[HostVerdict, ...]  # the failing hosts that came nearest

    def summary(self) -> str:
        """``no host fits: 12 hosts considered; not_enough_free: 7, ...``."""
        head = (
            f"{self.feasible} of {self.considered} hosts fit"
            if self.feasible
            else f"no host fits: {self.considered} {'host' if self.considered == 1 else 'hosts'} considered"
        )
        removed = ", ".join(f"{code}: {n}" for code, n in self.removed.items())
        return f"{head}; {removed}" if removed else head


@dataclass(frozen=True, slots=True)
class Decision:
    placements: tuple[Placement, ...]  # ranked, best first (see claim_order)
    explanation: Explanation
    steps: int  # search steps over all hosts

    @property
    def fits(self) -> bool:
        return bool(self.placements)


def schedule(
    request: Request,
    snapshot: Snapshot,
    policy: Policy = DEFAULT_POLICY,
    *,
    quota: Quota | None = None,
    explain_all: bool = False,
    rng: random.Random | None = None,
) -> Decision:
    """Rank the hosts of ``snapshot`` that can hold ``request``, and explain the others."""
    candidates = Candidates()  # per call: free/matching/usable devices per host, computed once
    filters: tuple[Filter, ...] = (
        HostListFilter(),  # hosts named in the request
        HostUpFilter(),  # down hosts (present only when asked about by name)
        FreeCountFilter(candidates),  # enough free devices of each type: counts only
        SelectorFilter(candidates),  # enough that the CEL selectors pick: runs CEL once per device
        IommuGroupFilter(candidates),  # enough whose whole IOMMU group is free
    )
    scorers = scorers_for(policy)
    quota_left = quota.left() if quota is not None else None
    total_weight = sum(s.weight for s in scorers) or 1.0

    verdicts: dict[str, Reason | None] = {}
    placements: list[Placement] = []
    steps = 0
    for host in snapshot.hosts:
        # Filters: the first that objects removes the host, with its reason.
        reason = next((r for f in filters if (r := f.check(host, request)) is not None), None)
        if reason is None:
            # Fit: choose the devices, within the step budget and the quota left.
            result: FitResult = fit(
                host, request, budget=policy.budget, candidates=candidates, quota_left=quota_left, rng=rng
            )
            steps += result.steps
            reason = result.reason
        if reason is not None or result.chosen is None:
            verdicts[host.name] = reason
            continue
        # Scorers: each in [0, 1], combined as a weighted mean.
        scores = {s.name: s.score(host, result) for s in scorers}
        total = sum(s.weight * scores[s.name] for s in scorers) / total_weight
        placements.append(Placement(host.name, total, scores, result.chosen, result.steps))
        verdicts[host.name] = None

    # Rank: best score first; the store's order breaks ties (it may randomize it).
    placements.sort(key=lambda p: -p.score)
    explanation = _explain(request, snapshot, verdicts, len(placements), policy, explain_all)
    return Decision(tuple(placements[: policy.max_placements]), explanation, steps)


def explain(request: Request, snapshot: Snapshot, policy: Policy = DEFAULT_POLICY) -> Decision:
    """``schedule`` with a verdict for every host in the snapshot (``POST /v1/explain``)."""
    return schedule(request, snapshot, policy, explain_all=True)


def claim_order(
    placements: Sequence[Placement],
    subset_size: int = DEFAULT_POLICY.subset_size,
    rng: random.Random | int | None = None,
) -> tuple[Placement, ...]:
    """The order a claim tries hosts in: one of the ``subset_size`` best at random first (so
    concurrent claims do not all race for the same host), then the rest by rank."""
    if not isinstance(rng, random.Random):
        rng = random.Random(rng)
    head = list(placements[:subset_size])
    rng.shuffle(head)
    return (*head, *placements[subset_size:])


def _explain(
    request: Request,
    snapshot: Snapshot,
    verdicts: Mapping[str, Reason | None],
    feasible: int,
    policy: Policy,
    explain_all: bool,
) -> Explanation:
    removed: dict[str, int] = {}
    for code in ReasonCode:
        n = sum(1 for r in verdicts.values() if r is not None and r.code is code)
        if n:
            removed[code.value] = n
    asked = list(request.hosts)
    if explain_all:
        asked += [h.name for h in snapshot.hosts if h.name not in request.hosts]
    hosts = tuple(
        HostVerdict(
            name,
            verdicts[name]
            if name in verdicts
            else Reason(ReasonCode.HOST_UNKNOWN, "is not a known host, or has no devices"),
        )
        for name in asked
    )
    misses = [
        (name, r)
        for name, r in verdicts.items()
        if r is not None and r.code is not ReasonCode.HOST_NOT_REQUESTED
    ]
    misses.sort(key=lambda m: (-STAGE[m[1].code], m[1].shortfall))
    closest = tuple(HostVerdict(n, r) for n, r in misses[: policy.max_closest])
    return Explanation(len(snapshot.hosts), feasible, removed, hosts, closest)
