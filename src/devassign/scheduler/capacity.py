"""How many more instances of a request the cloud can hold now, per host and in total.

Fit, hold what was chosen, fit again, up to a bound: the same search that claims, so
capacity never promises what a claim would refuse (PF/VF exclusion and IOMMU groups
included).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from devassign.scheduler.filters import HostListFilter, HostUpFilter
from devassign.scheduler.fit import DEFAULT_BUDGET, fit
from devassign.scheduler.request import Request
from devassign.scheduler.view import Snapshot

DEFAULT_LIMIT_PER_HOST = 256


@dataclass(frozen=True, slots=True)
class Capacity:
    per_host: Mapping[str, int]  # every host considered, 0 included
    total: int
    truncated: bool  # some host reached the limit: it may hold more
    steps: int


def capacity(
    request: Request,
    snapshot: Snapshot,
    *,
    limit_per_host: int = DEFAULT_LIMIT_PER_HOST,
    budget: int = DEFAULT_BUDGET,
) -> Capacity:
    """Count placements host by host; ``request.hosts`` limits the hosts as for a claim."""
    checks = (HostListFilter(), HostUpFilter())
    per_host: dict[str, int] = {}
    truncated = False
    steps = 0
    for host in snapshot.hosts:
        if any(c.check(host, request) is not None for c in checks):
            continue
        n = 0
        view = host
        while n < limit_per_host:
            result = fit(view, request, budget=budget)
            steps += result.steps
            if result.chosen is None:
                break
            n += 1
            view = view.with_held(result.device_ids())
        else:
            truncated = True
        per_host[host.name] = n
    return Capacity(per_host, sum(per_host.values()), truncated, steps)
