"""Partitionable devices: one mechanism for everything carved out of something else.

A device others are carved from (a GPU, a PF) is a **pool**, named by the address each
partition reports as its ``pool``. Its named counters (a GPU's ``framebuffer_mb``, one counter
per MIG memory slice and ``mig_compute``; a PF's ``bandwidth_mbps``) come with every partition
(``pool_counters``), so the pool need not be a device anyone can claim. Each partition
reports what it ``consumes`` of its pool while held, and a ``mode``: partitions held from one
pool at the same time share one mode (a time-sliced GPU runs one vGPU type at a time; a GPU
runs vGPUs or MIG instances, not both). So a T4 offering
16 slots of 1B and 4 of 4Q is never handed out as 3x4Q + 2x8Q: after one 4Q its pool's mode
is 4Q and 12 GB of its 16 are left.

The same rules hold everywhere a device's freedom is decided: the scheduler's view (which
free devices count), its fit (devices chosen together), the inventory counts, and the claim,
which checks them again under the host's lock (store/claims.py). The pool itself is held
only when nothing is carved from it, and the reverse: a whole GPU and its partitions are
alternatives that exclude each other.

Devices are duck-typed (``address``, ``pool``, ``pool_counters``, ``consumes``, ``mode``):
the scheduler's ``DeviceView`` and the store's rows both fit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from devassign.domain import DeviceState

# Request params that take a pool's counter while the device is held: a VF's guaranteed
# transmit rate takes that much of its PF's bandwidth (a maximum rate caps, it reserves nothing).
PARAM_COUNTERS: dict[str, str] = {"min_tx_rate_mbps": "bandwidth_mbps"}


def param_consumption(params: Mapping[str, object]) -> dict[str, int]:
    """What a request's params take of its devices' pool (see :data:`PARAM_COUNTERS`)."""
    out: dict[str, int] = {}
    for param, counter in PARAM_COUNTERS.items():
        value = params.get(param)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            out[counter] = out.get(counter, 0) + value
    return out


class Shared(Protocol):
    @property
    def address(self) -> str: ...
    @property
    def pool(self) -> str | None: ...
    @property
    def mode(self) -> str | None: ...
    @property
    def consumes(self) -> Mapping[str, int] | None: ...
    @property
    def consumed(self) -> Mapping[str, int] | None: ...
    @property
    def pool_counters(self) -> Mapping[str, int] | None: ...


# The deepest chain of parents followed (a PF, its VF, a vGPU slot on the VF: two): a longer
# one, or a loop in what a report said, is cut there.
_MAX_DEPTH = 8


def ancestors(address: str, parent_of: Mapping[str, str]) -> tuple[str, ...]:
    """The parent of ``address``, its parent's parent, and so on (nearest first), as the host's
    devices name them (``parent_of``: address -> parent); a loop ends the chain."""
    out: list[str] = []
    at = parent_of.get(address)
    while at is not None and at != address and at not in out and len(out) < _MAX_DEPTH:
        out.append(at)
        at = parent_of.get(at)
    return tuple(out)


def parent_map(devices: Iterable[Any]) -> dict[str, str]:
    """address -> parent of the devices that name one: what :func:`ancestors` walks."""
    return {d.address: d.parent for d in devices if d.parent}


@dataclass(frozen=True, slots=True)
class Relatives:
    """Which free devices a held relative keeps from every claim: one with an ancestor held
    whole (a VF of a held PF, a vGPU slot on such a VF), or one something is carved from,
    however deep (the PF and the VF of a held slot; a held partition's pool). The one rule of
    the scheduler's view and of the counts (store/inventory.py)."""

    held: frozenset[str]  # addresses of the held devices
    used: frozenset[str]  # the ancestors and pools of the held devices
    parent_of: Mapping[str, str]  # every device's parent on the host (parent_map)

    @classmethod
    def of(cls, holding: Iterable[Any], parent_of: Mapping[str, str]) -> Relatives:
        """From the held devices and the host's parent links (``parent_map`` of every device on
        the host)."""
        held = list(holding)
        used: set[str] = set()
        for d in held:
            used.update(ancestors(d.address, parent_of))
            if d.pool:
                used.add(d.pool)
                used.update(ancestors(d.pool, parent_of))
        return cls(frozenset(d.address for d in held), frozenset(used), parent_of)

    def holding_back(self, d: Any) -> str | None:
        """Why the free device ``d`` is no claim's because of a relative, or ``None``."""
        if d.parent:
            for above in (d.parent, *ancestors(d.parent, self.parent_of)):
                if above in self.held:
                    return f"{above} is in use whole"
        if d.address in self.used:
            return f"a device carved from {d.address} is in use"
        return None


@dataclass
class Pools:
    """The pools of one host: their capacity, what their held partitions take, the modes in use,
    and which pools are themselves held (then nothing can be carved from them)."""

    capacity: dict[str, Mapping[str, int]] = field(default_factory=dict)
    used: dict[str, Counter[str]] = field(default_factory=dict)
    modes: dict[str, Counter[str]] = field(default_factory=dict)
    held: Counter[str] = field(default_factory=Counter)

    @classmethod
    def of(cls, devices: Iterable[Any], holding: Iterable[Any]) -> Pools:
        """From every device of a host (``devices``) and those someone holds (``holding``)."""
        out = cls()
        # Partitions of one pool name the counters they use (a GPU's framebuffer for its
        # vGPUs, its slices for MIG): the pool has them all. The last report's partitions say
        # what the pool has now; a missing one keeps the counters of an older report (a link
        # since renegotiated at a lower rate) and counts only where no reported one names
        # them. Reported partitions agree (a report must); were they not to, the least wins.
        reported: dict[str, dict[str, int]] = {}
        missing: dict[str, dict[str, int]] = {}
        for d in devices:
            if d.pool is not None:
                into = missing if getattr(d, "state", None) == DeviceState.MISSING.value else reported
                merged = into.setdefault(d.pool, {})
                for k, v in (d.pool_counters or {}).items():
                    merged[k] = min(merged.get(k, v), v)
        for pool in (*reported, *missing):
            out.capacity[pool] = {**missing.get(pool, {}), **reported.get(pool, {})}
        for d in holding:
            out.take(d, 1)
        return out

    def __bool__(self) -> bool:
        return bool(self.capacity)

    def take(self, d: Shared, n: int, extra: Mapping[str, int] | None = None) -> None:
        """Count ``d`` as held (``n=1``) or no longer held (``n=-1``): what it takes is what its
        claim recorded (``consumed``), else its own ``consumes``, plus ``extra`` (a request's
        params, :func:`param_consumption`) for a device being chosen."""
        if d.address in self.capacity:
            self.held[d.address] += n
        if d.pool is None:
            return
        used = self.used.setdefault(d.pool, Counter())
        for k, amount in _taking(d, extra).items():
            used[k] += n * amount
        if d.mode is not None:
            self.modes.setdefault(d.pool, Counter())[d.mode] += n

    def refusal(self, d: Shared, extra: Mapping[str, int] | None = None) -> str | None:
        """Why ``d`` (taking ``extra`` too) cannot be held now on top of what is held, or ``None``."""
        if d.address in self.capacity and self.carved(d.address):
            return f"partitions of {d.address} are in use"
        pool = d.pool
        if pool is None:
            return None
        if self.held[pool]:
            return f"{pool} is in use whole"
        if d.mode is not None:
            active = sorted(m for m, n in self.modes.get(pool, Counter()).items() if n > 0 and m != d.mode)
            if active:
                return f"{pool} runs {active[0]}, and holds one mode at a time"
        cap = self.capacity.get(pool, {})
        used = self.used.get(pool, Counter())
        for k, amount in sorted(_taking(d, extra, fresh=True).items()):
            left = cap.get(k, 0) - used[k]
            if amount > left:
                return f"{pool} has {max(left, 0)} of {cap.get(k, 0)} {k} left, it needs {amount}"
        return None

    def carved(self, pool: str) -> bool:
        """Whether anything carved from ``pool`` is held."""
        return any(n > 0 for n in self.used.get(pool, Counter()).values()) or any(
            n > 0 for n in self.modes.get(pool, Counter()).values()
        )

    def damage(self, d: Shared, free: Iterable[Shared]) -> int:
        """How much taking ``d`` costs the other free partitions of its pool: the sizes (summed
        consumes) of those that would no longer fit. The fit prefers the least, so small
        partitions go where they leave the largest ones possible (MIG fragmentation)."""
        if d.pool is None or not d.consumes:
            return 0
        self.take(d, 1)
        try:
            return sum(
                sum((e.consumes or {}).values())
                for e in free
                if e.pool == d.pool and e.address != d.address and self.refusal(e) is not None
            )
        finally:
            self.take(d, -1)


def _taking(d: Shared, extra: Mapping[str, int] | None, *, fresh: bool = False) -> dict[str, int]:
    """What ``d`` takes of its pool: its recorded consumption while held (unless ``fresh``: a
    device being chosen now), else its own ``consumes``, plus ``extra``."""
    recorded = None if fresh else getattr(d, "consumed", None)
    out = dict(recorded or d.consumes or {})
    for k, amount in (extra or {}).items():
        out[k] = out.get(k, 0) + amount
    return out


def copy_pools(pools: Pools) -> Pools:
    """A copy a search may change (the view's own stays as the store found it)."""
    return Pools(
        capacity=pools.capacity,
        used={k: Counter(v) for k, v in pools.used.items()},
        modes={k: Counter(v) for k, v in pools.modes.items()},
        held=Counter(pools.held),
    )


def overdrawn(pools: Pools, before: Pools | None = None) -> str | None:
    """Why the held devices of a host break a pool's rules (the claim's last check), or ``None``.

    With ``before`` (the pools without the devices just taken), only what those devices made
    worse: a pool can already be over its counters when held partitions outlived a change of
    their pool (a link renegotiated at a lower rate), and a claim that takes none of that
    counter must not be refused for it (the fit, which asks what each device takes, lets it).
    """
    for pool, used in sorted(pools.used.items()):
        cap = pools.capacity.get(pool, {})
        had = before.used.get(pool, Counter()) if before is not None else None
        for k, amount in sorted(used.items()):
            if amount > cap.get(k, 0) and (had is None or amount > had[k]):
                return f"{pool} would give {amount} {k}, it has {cap.get(k, 0)}"
    for pool, modes in sorted(pools.modes.items()):
        active = _active(modes)
        if len(active) > 1 and (before is None or not active <= _active(before.modes.get(pool, Counter()))):
            return f"{pool} would run {' and '.join(sorted(active))}, it holds one mode at a time"
    for pool in sorted(pools.capacity):
        both = pools.held[pool] and pools.carved(pool)
        if both and (before is None or not (before.held[pool] and before.carved(pool))):
            return f"{pool} would be held whole and in partitions"
    return None


def _active(modes: Counter[str]) -> set[str]:
    return {m for m, n in modes.items() if n > 0}
