"""What devassign says Placement should hold: one provider per host and type, its inventory
and traits (docs/openstack.md, "Placement mirror"). Pure: no I/O."""

from __future__ import annotations

import re
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

MANAGED_TRAIT = "CUSTOM_DEVASSIGN_MANAGED"
NAME_PREFIX = "devassign:"
# Provider UUIDs are uuid5(this namespace, "HOST/TYPE"): found again after a crash mid-creation.
UUID_NAMESPACE = uuid.UUID("5b1f7e36-7c1a-4e8e-9a53-0d6f1c2a9e41")
FREE_STATE = "available"
BLOCKING_TAINTS = frozenset({"NoSchedule", "Drain"})
_NOT_TRAIT = re.compile(r"[^A-Z0-9_]")


def resource_class(type_name: str) -> str:
    """Placement's resource class of a devassign type: ``CUSTOM_`` and the name in upper case."""
    return "CUSTOM_" + _NOT_TRAIT.sub("_", type_name.upper())


def _trait(*parts: str) -> str:
    return "CUSTOM_DEVASSIGN_" + _NOT_TRAIT.sub("_", "_".join(parts).upper())


def provider_uuid(host: str, type_name: str) -> str:
    return str(uuid.uuid5(UUID_NAMESPACE, f"{host}/{type_name}"))


def provider_name(host: str, type_name: str) -> str:
    return f"{NAME_PREFIX}{host}:{type_name}"


def _consumer_key(consumer: str) -> str:
    """A consumer as Placement spells it (a UUID in lower case with hyphens), else as it is."""
    try:
        return str(uuid.UUID(consumer))
    except ValueError:
        return consumer


@dataclass
class Desired:
    """What one (host, type) provider should say, before Placement's allocations are known."""

    host: str
    type: str
    total: int = 0
    free: int = 0
    held: Counter[str] = field(default_factory=Counter)  # consumer -> devices it holds here
    traits: frozenset[str] = frozenset()

    @property
    def uuid(self) -> str:
        return provider_uuid(self.host, self.type)

    @property
    def name(self) -> str:
        return provider_name(self.host, self.type)

    def reserved(self, placement_allocations: dict[str, int]) -> int:
        """Units kept from Placement: all but devassign's free devices and the devices held by
        consumers that Placement already counts against this provider."""
        known = sum(min(n, placement_allocations.get(c, 0)) for c, n in self.held.items())
        return max(0, min(self.total, self.total - self.free - known))


def desired_state(
    devices: Iterable[dict[str, Any]], hosts: dict[str, str], only: set[str] | None = None
) -> dict[tuple[str, str], Desired]:
    """(host, type) -> Desired from devassign's devices and hosts' status (``up``/``down``).

    Traits: the managed trait, and vendor, product and NUMA node when every device of the
    provider shares them (a provider's trait holds for all its units)."""
    out: dict[tuple[str, str], Desired] = {}
    facts: dict[tuple[str, str], dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for d in devices:
        host, type_name, state = str(d["host"]), str(d["type"]), str(d["state"])
        if state == "removed" or (only is not None and host not in only):
            continue
        want = out.setdefault((host, type_name), Desired(host, type_name))
        want.total += 1
        blocked = any(t.get("effect") in BLOCKING_TAINTS for t in d.get("taints") or [])
        if state == FREE_STATE and hosts.get(host) == "up" and not blocked:
            want.free += 1
        elif d.get("consumer"):
            want.held[_consumer_key(str(d["consumer"]))] += 1
        seen = facts[(host, type_name)]
        seen["vendor"].add(str(d.get("vendor_id")))
        seen["product"].add(str(d.get("product_id")))
        seen["numa"].add(str(d.get("numa_node")))
    for key, want in out.items():
        traits = {MANAGED_TRAIT}
        for fact, values in facts[key].items():
            if len(values) == 1 and "None" not in values:
                traits.add(_trait(fact, next(iter(values))))
        want.traits = frozenset(traits)
    return out
