"""``devices.taint`` from the ``taints`` table: the one column the claim and the counts read.

Kept apart from ``store/taints.py`` so that applying a report (``store/inventory.py``) can mark
new devices under a tainted host or parent without an import cycle.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from devassign.store.schema import devices, taints

# Effects that keep a device from new claims, strongest first.
SCHEDULING_EFFECTS = ("Drain", "NoSchedule")


def live(now: datetime) -> Any:
    """Taints that have not expired at ``now``."""
    return sa.or_(taints.c.expires_at.is_(None), taints.c.expires_at > now)


def phrase(effect: str, reason: str, set_by: str) -> str:
    """``NoSchedule (maintenance: PSU swap, by admin)``."""
    return f"{marked(effect)}{reason}, by {set_by})"


def without_setter(text: str) -> str:
    """A taint's phrase without who set it (``NoSchedule (maintenance: PSU swap)``): what a
    member may read of it."""
    head, sep, who = text.rpartition(", by ")
    return f"{head})" if sep and who.endswith(")") and " " not in who else text


def marked(effect: str) -> str:
    """How ``devices.taint`` begins for a device whose strongest taint has ``effect``."""
    return f"{effect} ("


def applies(taint: Any, device_id: str, address: str, above: frozenset[str]) -> bool:
    """Whether ``taint`` (a row of ``taints``) covers the device; ``above``: the addresses of
    the devices it is part of (:func:`lineage`)."""
    if taint.device_id is not None:
        return bool(taint.device_id == device_id)
    if taint.parent is not None:
        return bool(taint.parent == address or taint.parent in above)
    return True  # the whole host


def lineage(rows: Iterable[Any]) -> dict[str, frozenset[str]]:
    """Per device address (rows of one host's devices with ``address``, ``parent``, ``pool``),
    every device it is part of: its parent and its pool, theirs, and so on.

    A taint on a GPU must reach a vGPU slot carved on one of its VFs (parent the VF, pool the
    GPU) and an mdev on a VF of an SR-IOV GPU (parent the VF, whose parent is the GPU), not only
    the devices that name the GPU directly. An address no device has (a PF no rule types)
    still counts as a parent.
    """
    up = {r.address: tuple(a for a in (r.parent, r.pool) if a) for r in rows}
    out: dict[str, frozenset[str]] = {}
    for address, direct in up.items():
        seen: set[str] = set()
        todo = list(direct)
        while todo:
            a = todo.pop()
            if a not in seen and a != address:
                seen.add(a)
                todo.extend(up.get(a, ()))
        out[address] = frozenset(seen)
    return out


def strongest(rows: Iterable[Any]) -> Any | None:
    """The taint that names a device's state: Drain over NoSchedule, then the newest."""
    best = None
    for t in rows:
        if t.effect not in SCHEDULING_EFFECTS:
            continue
        if best is None:
            best = t
            continue
        rank = SCHEDULING_EFFECTS.index(t.effect), -t.id
        if rank < (SCHEDULING_EFFECTS.index(best.effect), -best.id):
            best = t
    return best


class Covering:
    """One host's live taints indexed by what they name, so the taints covering a device are
    found through its lineage, not by asking every taint about every device (a host of 20,000
    devices with a hundred taints made each taint, report and expiry check two million pairs
    under the host's lock)."""

    def __init__(self, rows: Iterable[Any]) -> None:
        self.host: list[tuple[int, Any]] = []
        self.by_device: dict[str, list[tuple[int, Any]]] = {}
        self.by_parent: dict[str, list[tuple[int, Any]]] = {}
        for n, t in enumerate(rows):
            if t.device_id is not None:
                self.by_device.setdefault(t.device_id, []).append((n, t))
            elif t.parent is not None:
                self.by_parent.setdefault(t.parent, []).append((n, t))
            else:
                self.host.append((n, t))
        self.host_best = strongest(t for _, t in self.host)

    def of(self, device_id: str, address: str, above: frozenset[str]) -> list[Any]:
        """The taints that cover the device (as :func:`applies` says), in the rows' order."""
        found = [*self.host, *self._named(device_id, address, above)]
        found.sort(key=lambda nt: nt[0])
        return [t for _, t in found]

    def strongest_of(self, device_id: str, address: str, above: frozenset[str]) -> Any | None:
        """:func:`strongest` of the taints that cover the device, without listing the host's."""
        best = strongest(t for _, t in self._named(device_id, address, above))
        if best is None or self.host_best is None:
            return best or self.host_best
        return strongest((best, self.host_best))

    def _named(self, device_id: str, address: str, above: frozenset[str]) -> list[tuple[int, Any]]:
        """The taints on the device itself and on a device it is part of (not the host's)."""
        found = [*self.by_device.get(device_id, ()), *self.by_parent.get(address, ())]
        for a in above:
            if a != address:
                found.extend(self.by_parent.get(a, ()))
        return found


def mark_tainted(conn: sa.Connection, host_id: int, now: datetime) -> list[str]:
    """Recompute ``devices.taint`` of one host's devices; the ids whose mark changed.

    The caller holds the host's lock (every writer of a host's devices takes it first) and
    recounts the host's inventory afterwards, in the same transaction.
    """
    found = conn.execute(sa.select(taints).where(taints.c.host_id == host_id, live(now))).all()
    rows = conn.execute(
        sa.select(devices.c.id, devices.c.address, devices.c.parent, devices.c.pool, devices.c.taint).where(
            devices.c.host_id == host_id
        )
    ).all()
    above = lineage(rows) if any(t.parent is not None for t in found) else {}
    covering = Covering(found)
    changed: dict[str | None, list[str]] = {}
    for d in rows:
        best = covering.strongest_of(d.id, d.address, above.get(d.address, frozenset()))
        mark = None if best is None else phrase(best.effect, best.reason, best.set_by)
        if mark != d.taint:
            changed.setdefault(mark, []).append(d.id)
    for mark, ids in changed.items():
        conn.execute(devices.update().where(devices.c.id.in_(ids)).values(taint=mark))
    return [i for ids in changed.values() for i in ids]
