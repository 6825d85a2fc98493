"""Scorers rank feasible hosts; each returns a number in [0, 1] and never removes a host.

The policy (pack or spread, and the weights) is server configuration; the final score is
the weighted mean, so adding a scorer never changes the scale.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Literal, Protocol

from devassign.scheduler.fit import DEFAULT_BUDGET, FitResult
from devassign.scheduler.view import HostView


@dataclass(frozen=True, slots=True)
class Policy:
    """How to rank hosts. ``pack`` fills hosts up so whole hosts stay free; ``spread`` the reverse."""

    mode: Literal["pack", "spread"] = "pack"
    binpack_weight: float = 1.0
    numa_weight: float = 1.0
    fragmentation_weight: float = 0.5
    budget: int = DEFAULT_BUDGET  # search steps per host
    subset_size: int = 3  # pick at random among this many best (see pipeline.claim_order)
    max_placements: int = 10  # ranked placements returned to the claim
    max_closest: int = 3  # near misses reported with a 409


class Scorer(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def weight(self) -> float: ...

    def score(self, host: HostView, fit: FitResult) -> float: ...


@dataclass(frozen=True, slots=True)
class PackScorer:
    """Fewest free devices left after the claim: fill hosts that are already busy."""

    weight: float
    name: str = "pack"

    def score(self, host: HostView, fit: FitResult) -> float:
        return 1.0 - _free_after(host, fit)


@dataclass(frozen=True, slots=True)
class SpreadScorer:
    """Most free devices left after the claim: keep load even across hosts."""

    weight: float
    name: str = "spread"

    def score(self, host: HostView, fit: FitResult) -> float:
        return _free_after(host, fit)


@dataclass(frozen=True, slots=True)
class NumaScorer:
    """All the devices (and so each constraint group) on one NUMA node scores 1."""

    weight: float
    name: str = "numa"

    def score(self, host: HostView, fit: FitResult) -> float:
        nodes = Counter(d.numa_node for i in fit.device_ids() if (d := host.by_id[i]).numa_node is not None)
        if not nodes:
            return 1.0
        return max(nodes.values()) / sum(nodes.values())


@dataclass(frozen=True, slots=True)
class FragmentationScorer:
    """Prefer VFs of a PF already in use and vGPU slots on a GPU already partitioned, so
    untouched PFs and GPUs stay whole for those who need them whole."""

    weight: float
    name: str = "fragmentation"

    def score(self, host: HostView, fit: FitResult) -> float:
        children = [d for i in fit.device_ids() if (d := host.by_id[i]).parent]
        if not children:
            return 1.0
        return sum(1 for d in children if d.parent in host.used_parents) / len(children)


def scorers_for(policy: Policy) -> tuple[Scorer, ...]:
    balance: Scorer = (
        PackScorer(policy.binpack_weight) if policy.mode == "pack" else SpreadScorer(policy.binpack_weight)
    )
    return (
        balance,
        NumaScorer(policy.numa_weight),
        FragmentationScorer(policy.fragmentation_weight),
    )


def _free_after(host: HostView, fit: FitResult) -> float:
    if not host.devices:
        return 0.0
    left = host.free_count() - sum(1 for i in fit.device_ids() if i in host.free_ids)
    return max(0, left) / len(host.devices)
