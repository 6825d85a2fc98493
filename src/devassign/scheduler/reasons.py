"""Why a host was refused: a fixed set of codes (never rename the values) and sentences.

Every rejection names one of these, so "why not compute-7?" always has an answer, and the
sentence says it in the user's words: ``needs 2 NIC_VF_1G on one NUMA node, has 1 on node 0
and 1 on node 1``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class ReasonCode(StrEnum):
    HOST_NOT_REQUESTED = "host_not_requested"
    HOST_UNKNOWN = "host_unknown"
    HOST_DOWN = "host_down"
    NOT_ENOUGH_FREE = "not_enough_free"
    SELECTOR_MISMATCH = "selector_mismatch"
    IOMMU_GROUP_BUSY = "iommu_group_busy"
    OVER_QUOTA = "over_quota"
    CONSTRAINT_UNSATISFIED = "constraint_unsatisfied"
    DEVICE_CONFLICT = "device_conflict"
    SEARCH_BUDGET_EXHAUSTED = "search_budget_exhausted"


# Pipeline order: a host refused later came closer to fitting (used to rank "closest hosts").
STAGE: Mapping[ReasonCode, int] = {code: i for i, code in enumerate(ReasonCode)}


@dataclass(frozen=True, slots=True)
class Reason:
    """One refusal: its code, a sentence, and how many devices short (to rank near misses)."""

    code: ReasonCode
    message: str
    shortfall: int = 0


_MATCH_PHRASES = {
    "numa_node": "on one NUMA node",
    "iommu_group": "in one IOMMU group",
    "parent": "under one parent device",
    "attributes.pcie_root": "under one PCIe root",
}
_DISTINCT_PHRASES = {
    "numa_node": "on different NUMA nodes",
    "iommu_group": "in different IOMMU groups",
    "parent": "under different parent devices",
    "attributes.pcie_root": "under different PCIe roots",
}


def short_name(attribute: str) -> str:
    return attribute.removeprefix("attributes.")


def constraint_phrase(attribute: str, mode: str) -> str:
    """``on one NUMA node``, ``in different IOMMU groups``, ``with the same physnet``."""
    if mode == "match":
        return _MATCH_PHRASES.get(attribute, f"with the same {short_name(attribute)}")
    return _DISTINCT_PHRASES.get(attribute, f"with different {short_name(attribute)}")


def value_phrase(attribute: str, value: Any, n: int) -> str:
    """``1 on node 0``, ``2 in group 12``, ``3 without a NUMA node``."""
    if value is None:
        missing = {"numa_node": "a NUMA node", "iommu_group": "an IOMMU group"}
        return f"{n} without {missing.get(attribute, short_name(attribute))}"
    if attribute == "numa_node":
        return f"{n} on node {value}"
    if attribute == "iommu_group":
        return f"{n} in group {value}"
    if attribute == "parent":
        return f"{n} under {value}"
    return f"{n} with {short_name(attribute)}={value}"


def distribution(attribute: str, counts: Mapping[Any, int]) -> str:
    """``1 on node 0 and 1 on node 1`` (values in order, the unknown last)."""
    if not counts:
        return "none free"
    keys = sorted(counts, key=lambda v: (v is None, str(type(v)), v if v is not None else 0))
    return join_and(value_phrase(attribute, k, counts[k]) for k in keys)


def join_and(parts: Iterable[str]) -> str:
    items = list(parts)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def join_or(parts: Sequence[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " or " + parts[-1]


# The funnel's counts of up hosts short of a type only because of ... (store/candidates.py),
# in the order a refusal says them; taints first, above, with what they are.
_SHORT_ONLY_BECAUSE = (
    # A slot of a GPU that runs another mode or is held whole, or a GPU one of whose slots is
    # held: what is held of the GPU (or PF) they share.
    (
        "partitioned",
        "of what is held of their GPU or PF: it runs another mode, has too little left, or is "
        "held whole or in part",
    ),
    ("unhealthy", "devices failed their health checks"),
    ("cleaning", "devices are being cleaned (free once done)"),
    (
        "quarantined",
        "devices are quarantined after a failed cleanup (an operator clears them: `devassign device clear`)",
    ),
)


def funnel_sentence(funnel: Mapping[str, Any], taints: Sequence[str] = ()) -> str:
    """``2 hosts down, 3 up hosts with too few free GPU_A100``: the hosts the inventory
    pre-filter removed before scheduling, and why (for the server's refusals and the CLI).
    ``taints``: phrases of :func:`tainted_phrase`, which say what the taints are."""
    parts = []
    down = int(funnel.get("down") or 0)
    if down:
        parts.append(f"{down} {'host' if down == 1 else 'hosts'} down")
    for key, n in funnel.items():
        if key.startswith("lacking_") and n:
            type_name = key.removeprefix("lacking_")
            text = f"{n} up {'host' if n == 1 else 'hosts'} with too few free {type_name}"
            tainted = int(funnel.get(f"tainted_{type_name}") or 0)
            held = []
            if tainted:
                which = [t for t in taints if (m := _TAINTED_TYPE.match(t)) and m[1] == type_name]
                held.append(f"{tainted} of them only because {join_and(which) or 'devices are tainted'}")
            for kind, why in _SHORT_ONLY_BECAUSE:
                n_held = int(funnel.get(f"{kind}_{type_name}") or 0)
                if n_held:
                    held.append(f"{n_held} of them only because {why}")
            if held:
                text += f" ({'; '.join(held)})"
            parts.append(text)
    return ", ".join(parts)


def tainted_phrase(type_name: str, tainted: Iterable[tuple[str, int]]) -> str:
    """``2 NIC_VF_1G devices are tainted NoSchedule (maintenance: PSU swap, by admin)``."""
    return join_and(
        f"{n} {type_name} {'device is' if n == 1 else 'devices are'} tainted {taint}" for taint, n in tainted
    )


def effects_only(sentence: str) -> str:
    """Taint phrases with their effects alone: ``2 NIC_VF_1G devices are tainted NoSchedule``.
    What a member reads of taints: their reasons are free text an operator or a host's agent
    wrote (host names, racks, tickets), for operators only. Counts of one type and effect
    are added up, so a phrase cannot say "tainted NoSchedule" twice."""
    counts: dict[tuple[str, str], int] = {}
    for n, type_name, effect in _TAINT_EFFECT.findall(sentence):
        counts[(type_name, effect)] = counts.get((type_name, effect), 0) + int(n)
    return join_and(
        f"{n} {type_name} {'device is' if n == 1 else 'devices are'} tainted {effect}"
        for (type_name, effect), n in counts.items()
    )


_TAINTED_TYPE = re.compile(r"\d+ (\S+) devices? (?:is|are) tainted ")
_TAINT_EFFECT = re.compile(r"(\d+) (\S+) devices? (?:is|are) tainted (NoSchedule|Drain|None)\b")
# The taint clause that ends a host's sentence (filters append it after "; ").
TAINTED = re.compile(r"; (\d+ \S+ devices? (?:is|are) tainted .*)$")


def ordinal(n: int) -> str:
    """``1st``, ``2nd``, ``3rd``, ``11th``, ``64th``."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
