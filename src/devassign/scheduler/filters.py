"""Host filters: small objects with one question each, cheapest first.

``check(host, request)`` answers ``None`` (keep) or a ``Reason`` (remove, and why). A request
with ``first_available`` alternatives passes a filter when any alternative does; the
sentence then names every alternative.
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol

from devassign.domain import DeviceState
from devassign.scheduler.candidates import AltCandidates, Candidates
from devassign.scheduler.reasons import Reason, ReasonCode, join_and, join_or, tainted_phrase
from devassign.scheduler.request import DeviceRequest, Request
from devassign.scheduler.view import HostView

# Devices in use named in one refusal's sentence; the rest are counted without a name.
MAX_BLOCKED_PHRASES = 3


class Filter(Protocol):
    name: str

    def check(self, host: HostView, request: Request) -> Reason | None: ...


class HostListFilter:
    """``hosts`` in the request limits where it may go."""

    name = "hosts"

    def check(self, host: HostView, request: Request) -> Reason | None:
        if request.hosts and host.name not in request.hosts:
            return Reason(ReasonCode.HOST_NOT_REQUESTED, "not one of the hosts the request names")
        return None


class HostUpFilter:
    """A host asked about by name may be down; candidates from the store are always up."""

    name = "up"

    def check(self, host: HostView, request: Request) -> Reason | None:
        if not host.up:
            return Reason(ReasonCode.HOST_DOWN, "is down (no report received recently)")
        return None


class FreeCountFilter:
    """Enough free devices of each type, before any selector runs (counts only)."""

    name = "free"

    def __init__(self, candidates: Candidates) -> None:
        self.candidates = candidates

    def check(self, host: HostView, request: Request) -> Reason | None:
        for r in request.requests:
            cands = [self.candidates.of(host, a) for a in r.alternatives]
            if all(c.free < a.count for a, c in zip(r.alternatives, cands, strict=True)):
                return _per_alternative(ReasonCode.NOT_ENOUGH_FREE, r, cands, "free", host)
        # Requests without alternatives share each type's pool: their sum must fit too.
        pooled: dict[str, list[DeviceRequest]] = {}
        for r in request.requests:
            if len(r.alternatives) == 1:
                pooled.setdefault(r.first.type, []).append(r)
        for type_name, members in pooled.items():
            need = sum(r.first.count for r in members)
            have = len(host.free_by_type.get(type_name, ()))
            if len(members) > 1 and need > have:
                names = join_and(r.name for r in members)
                text = f"needs {need} {type_name} (for {names} together), has {have} free"
                tainted = host.tainted_by_type.get(type_name)
                if tainted:
                    text += f"; {tainted_phrase(type_name, sorted(tainted.items()))}"
                return Reason(ReasonCode.NOT_ENOUGH_FREE, text, need - have)
        return None


class SelectorFilter:
    """Enough free devices that the request's CEL selector picks."""

    name = "selector"

    def __init__(self, candidates: Candidates) -> None:
        self.candidates = candidates

    def check(self, host: HostView, request: Request) -> Reason | None:
        for r in request.requests:
            if all(a.selector is None for a in r.alternatives):
                continue
            cands = [self.candidates.of(host, a) for a in r.alternatives]
            if all(c.matching < a.count for a, c in zip(r.alternatives, cands, strict=True)):
                return _per_alternative(ReasonCode.SELECTOR_MISMATCH, r, cands, "matching")
        return None


class IommuGroupFilter:
    """A device is usable only with its whole IOMMU group free (VFIO takes groups whole)."""

    name = "iommu"

    def __init__(self, candidates: Candidates) -> None:
        self.candidates = candidates

    def check(self, host: HostView, request: Request) -> Reason | None:
        for r in request.requests:
            cands = [self.candidates.of(host, a) for a in r.alternatives]
            if all(len(c.usable) < a.count for a, c in zip(r.alternatives, cands, strict=True)):
                return _per_alternative(ReasonCode.IOMMU_GROUP_BUSY, r, cands, "usable")
        return None


# Devices of a type out of service for now, and how each comes back: said with "has N free".
_OUT_OF_SERVICE = (
    (DeviceState.CLEANING, "being cleaned: free once their cleanup passes"),
    (DeviceState.QUARANTINED, "quarantined after a failed cleanup: an operator clears them (`device clear`)"),
    (DeviceState.UNHEALTHY, "unhealthy: their health checks failed"),
    (DeviceState.MISSING, "missing from the host's last report"),
)


def _out_of_service(host: HostView, type_name: str) -> str:
    """`` (1 more quarantined after a failed cleanup: ...)`` per state, for a refusal: read
    only when a host is refused, never on a claim's way."""
    states = Counter(d.state for d in host.devices if d.type == type_name)
    return "".join(f" ({states[s]} more {why})" for s, why in _OUT_OF_SERVICE if states[s])


def _per_alternative(
    code: ReasonCode, r: DeviceRequest, cands: list[AltCandidates], stage: str, host: HostView | None = None
) -> Reason:
    """One sentence for a request that failed at ``stage`` under every alternative."""
    alts = r.alternatives
    shortfall = min(a.count - _have(c, stage) for a, c in zip(alts, cands, strict=True))
    wants = join_or([a.describe() for a in alts])
    if len(alts) == 1:
        a, c = alts[0], cands[0]
        if stage == "free":
            text = f"needs {wants}, has {c.free} free"
            if c.blocked:
                # Which device is in use, for the first few (a host of eight GPUs names three).
                shown = c.blocked_why[:MAX_BLOCKED_PHRASES]
                for why, n in shown:
                    text += f" ({n} more held back: {why})"
                rest = c.blocked - sum(n for _, n in shown)
                if rest:
                    text += f" ({rest} more held back: a parent or child device is in use)"
            for why, n in c.partitioned:
                text += f" ({n} more held back: {why})"
            if host is not None:
                text += _out_of_service(host, a.type)
            if c.tainted:
                text += f"; {tainted_phrase(a.type, c.tainted)}"
        elif stage == "matching":
            assert a.selector is not None
            text = f"needs {wants} matching {a.selector.source}, has {c.free} free, {c.matching} matching"
        else:
            groups = ", ".join(str(g) for g in c.busy_groups)
            plural = "s" if len(c.busy_groups) > 1 else ""
            text = (
                f"needs {wants} with whole IOMMU groups free, has {len(c.usable)} "
                f"(group{plural} {groups} not wholly free: a member is held, tainted, unhealthy "
                "or being cleaned)"
            )
        return Reason(code, text, shortfall)
    word = {"free": "free", "matching": "matching their selectors", "usable": "usable"}[stage]
    haves = join_and(f"{_have(c, stage)} {a.type}" for a, c in zip(alts, cands, strict=True))
    text = f"needs {wants}, has {haves} {word}"
    if stage == "usable":
        text = f"needs {wants} with whole IOMMU groups free, has {haves}"
    tainted = [tainted_phrase(a.type, c.tainted) for a, c in zip(alts, cands, strict=True) if c.tainted]
    if stage == "free" and tainted:
        text += f"; {join_and(tainted)}"
    return Reason(code, text, shortfall)


def _have(c: AltCandidates, stage: str) -> int:
    return {"free": c.free, "matching": c.matching, "usable": len(c.usable)}[stage]
