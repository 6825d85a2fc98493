"""How many more instances of a request the cloud can hold now, per host and in total.

Fit, hold what was chosen, fit again, up to a bound: the same search that claims, so
capacity never promises what a claim would refuse (PF/VF exclusion and IOMMU groups
included). The search keeps its holds between instances (``fit.count_fits``), so a host
costs its classes of identical devices per instance, not all its devices; and a call stops
with a ``RequestError`` past ``max_steps`` search steps in all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from devassign.scheduler.errors import RequestError, RequestErrorCode
from devassign.scheduler.filters import HostListFilter, HostUpFilter
from devassign.scheduler.fit import DEFAULT_BUDGET, count_fits
from devassign.scheduler.request import Request
from devassign.scheduler.view import Snapshot

DEFAULT_LIMIT_PER_HOST = 256
# Search steps of one capacity call: a plain request takes a few per instance, so this is
# thousands of hosts at the per-host limit; only constraints that make every instance search
# long get near it.
MAX_STEPS = 2_000_000


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
    max_steps: int = MAX_STEPS,
) -> Capacity:
    """Count placements host by host; ``request.hosts`` limits the hosts as for a claim."""
    checks = (HostListFilter(), HostUpFilter())
    per_host: dict[str, int] = {}
    truncated = False
    steps = 0
    for host in snapshot.hosts:
        if any(c.check(host, request) is not None for c in checks):
            continue
        n, used = count_fits(host, request, limit=limit_per_host, budget=budget)
        steps += used
        if steps > max_steps:
            raise RequestError(
                RequestErrorCode.INVALID_BODY,
                f"capacity took more than {max_steps:,} search steps after {len(per_host) + 1} hosts; "
                "ask about fewer hosts (host=) or a simpler request",
            )
        truncated = truncated or n >= limit_per_host
        per_host[host.name] = n
    return Capacity(per_host, sum(per_host.values()), truncated, steps)
