"""Which free devices each alternative of a request could take on a host, computed once.

Filters, the fit and the explanations all ask the same questions (how many free, how many
match the selector, how many with a wholly free IOMMU group); one ``Candidates`` object per
scheduling call answers each once per host, so a CEL selector runs at most once per device shape.
"""

from __future__ import annotations

from dataclasses import dataclass

from devassign.scheduler.request import Alternative
from devassign.scheduler.view import DeviceView, HostView


@dataclass(frozen=True, slots=True)
class AltCandidates:
    """For one alternative on one host: the counts that explain a refusal, and the usable."""

    free: int
    blocked: int  # available, but a parent or child device is held
    matching: int  # free and selected by the selector
    usable: tuple[DeviceView, ...]  # matching, and their whole IOMMU group is free
    busy_groups: tuple[int, ...]  # groups that kept a matching device out
    # Available but tainted: (taint phrase, how many), for the explanation.
    tainted: tuple[tuple[str, int], ...] = ()
    # Available, but their pool cannot give them now: (why, how many) (scheduler/shares.py).
    partitioned: tuple[tuple[str, int], ...] = ()
    # Of ``blocked``: (the phrase naming the parent or child in use, how many).
    blocked_why: tuple[tuple[str, int], ...] = ()


class Candidates:
    """A per-call cache (the snapshot changes between calls); what depends on one host's view
    alone is also kept on the view itself (``HostView.memo``)."""

    __slots__ = ("_alts",)

    def __init__(self) -> None:
        self._alts: dict[tuple[str, Alternative], AltCandidates] = {}

    def of(self, host: HostView, alt: Alternative) -> AltCandidates:
        key = (host.name, alt)
        found = self._alts.get(key)
        if found is None:
            if alt.selector is None:
                # A pure function of the view and the type: kept on the view (bounded by the
                # types it holds), which the store hands to the next claims while it is unchanged.
                found = host.memo.get(alt.type)
                if found is None:
                    found = host.memo[alt.type] = self._compute(host, alt)
            else:
                found = self._compute(host, alt)
            self._alts[key] = found
        return found

    def _compute(self, host: HostView, alt: Alternative) -> AltCandidates:
        free = host.free_by_type.get(alt.type, ())
        matching = free if alt.selector is None else tuple(d for d in free if self._match(alt, d))
        usable: list[DeviceView] = []
        busy: set[int] = set()
        free_ids = host.free_ids
        for d in matching:
            if all(m.id in free_ids for m in host.group_of(d)):
                usable.append(d)
            elif d.iommu_group is not None:
                busy.add(d.iommu_group)
        return AltCandidates(
            free=len(free),
            blocked=host.blocked_by_type.get(alt.type, 0),
            matching=len(matching),
            usable=tuple(usable),
            busy_groups=tuple(sorted(busy)),
            tainted=tuple(sorted(host.tainted_by_type.get(alt.type, {}).items())),
            partitioned=tuple(sorted(host.partitioned_by_type.get(alt.type, {}).items())),
            blocked_why=tuple(sorted(host.blocked_why_by_type.get(alt.type, {}).items())),
        )

    def _match(self, alt: Alternative, device: DeviceView) -> bool:
        assert alt.selector is not None
        return alt.selector.matches(device)
