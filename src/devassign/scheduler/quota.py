"""Project quotas per resource type: a pure check the server runs before it claims.

With ``first_available`` a request may fit the quota through one alternative and not
another, so the check looks for any choice of alternatives within the limits; the scheduler
is then given what is left (``Quota.left``) and only takes alternatives that fit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from devassign.scheduler.request import Request

MAX_CHOICES = 4096


@dataclass(frozen=True, slots=True)
class Quota:
    """``limits``: type -> most devices the project may hold (absent: unlimited);
    ``usage``: type -> devices it holds now (reserved or assigned)."""

    limits: Mapping[str, int]
    usage: Mapping[str, int] = field(default_factory=dict)

    def left(self) -> dict[str, int]:
        """Type -> how many more the project may take (only limited types)."""
        return {t: max(0, n - self.usage.get(t, 0)) for t, n in self.limits.items()}


@dataclass(frozen=True, slots=True)
class QuotaExcess:
    type: str
    limit: int
    used: int
    requested: int

    def sentence(self) -> str:
        return f"{self.type}: limit {self.limit}, {self.used} in use, {self.requested} requested"


@dataclass(frozen=True, slots=True)
class QuotaVerdict:
    """``ok``, or the numbers for the 403 (for the request's first choices)."""

    ok: bool
    excess: tuple[QuotaExcess, ...] = ()

    def message(self) -> str:
        return "over quota: " + "; ".join(e.sentence() for e in self.excess)


def check_quota(request: Request, quota: Quota) -> QuotaVerdict:
    """Whether some choice of alternatives stays within every limit."""
    left = quota.left()
    steps = 0

    def choose(i: int, want: dict[str, int]) -> bool:
        nonlocal steps
        steps += 1
        if steps > MAX_CHOICES:
            return False
        if i == len(request.requests):
            return True
        for alt in request.requests[i].alternatives:
            n = want.get(alt.type, 0) + alt.count
            if alt.type in left and n > left[alt.type]:
                continue
            want[alt.type] = n
            if choose(i + 1, want):
                return True
            want[alt.type] = n - alt.count
        return False

    if choose(0, {}):
        return QuotaVerdict(True)
    first: dict[str, int] = {}
    for r in request.requests:
        first[r.first.type] = first.get(r.first.type, 0) + r.first.count
    excess = tuple(
        QuotaExcess(t, quota.limits[t], quota.usage.get(t, 0), n)
        for t, n in first.items()
        if t in left and n > left[t]
    )
    if not excess:  # only the alternatives' mix is over: report every limited type asked for
        excess = tuple(
            QuotaExcess(t, quota.limits[t], quota.usage.get(t, 0), n) for t, n in first.items() if t in left
        )
    return QuotaVerdict(False, excess)
