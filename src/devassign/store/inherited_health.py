"""A device below an unhealthy device is unhealthy with it.

The agent checks every device on its own (a GPU's config space, a slot's parent still there),
so a GPU that fails its check while its vGPU slots and MIG instances pass would leave the
slots free to claim: slices of a broken GPU. The server sees the whole report and carries the
verdict down the ``parent`` and ``pool`` links, however deep (a PF, its VF, a slot on the VF),
before the report is applied; the counts, the scheduler, the claim and the holders' events
then all follow from one stored state. A device failing its own check keeps its own reason.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa

from devassign.schemas import ReportedDevice
from devassign.store.schema import devices


def with_inherited_health(reported: Sequence[ReportedDevice]) -> list[ReportedDevice]:
    """The report's devices, those below an unhealthy one made unhealthy with its reason (or
    recovering with it, while the device above is recovering)."""
    by_address: dict[str, ReportedDevice] = {}
    for dev in reported:
        by_address.setdefault(dev.address, dev)
    if all(d.healthy for d in by_address.values()):
        return list(reported)
    failing = _nearest_above(by_address, lambda d: not d.healthy and not d.health_recovering)
    recovering = _nearest_above(by_address, lambda d: not d.healthy and d.health_recovering)
    out = []
    for dev in reported:
        above = failing.get(dev.address) or recovering.get(dev.address)
        if above is None or not (dev.healthy or dev.health_recovering):
            out.append(dev)  # nothing above fails, or its own check fails: its own reason
            continue
        source = by_address[above]
        why = _above_reason(source.address, source.health_reason)
        still = source.health_recovering and (dev.healthy or dev.health_recovering)
        out.append(dev.model_copy(update={"healthy": False, "health_reason": why[:1000],
                                          "health_recovering": still}))  # fmt: skip
    return out


_INHERITED = re.compile(r"\S+ above it is unhealthy: ")


def _above_reason(address: str, reason: str | None) -> str:
    """A device's health reason when one above it fails: the same from a report and the store."""
    return f"{address} above it is unhealthy: {reason or 'its health check fails'}"


def _nearest_above(
    by_address: dict[str, ReportedDevice], source: Callable[[ReportedDevice], bool]
) -> dict[str, str]:
    """For each device with a ``source`` device above it (along ``parent`` and ``pool``, however
    deep), the address of the nearest such device. One breadth-first walk down from every
    source at once, so each device is reached once: a report of one long chain of devices was
    walked up from every device in turn, minutes of a server's time for a hostile agent's
    20,000-device report. Links that loop or leave the report end the walk."""
    below: dict[str, list[str]] = {}
    for dev in by_address.values():
        for up in {dev.parent, dev.pool} - {None, dev.address}:
            below.setdefault(up, []).append(dev.address)  # type: ignore[arg-type]
    sources = [a for a, d in by_address.items() if source(d)]
    found: dict[str, str] = {}
    queue = deque(sources)
    queued = set(sources)
    is_source = set(sources)
    while queue:
        address = queue.popleft()
        via = address if address in is_source else found[address]
        for child in below.get(address, ()):
            if child in found or child == via:
                continue
            found[child] = via
            if child not in queued:
                queued.add(child)
                queue.append(child)
    return found


_LINKS = sa.select(
    devices.c.address, devices.c.parent, devices.c.pool, devices.c.healthy, devices.c.health_reason
).where(devices.c.host_id == sa.bindparam("host_id"))
_ABOVE = _LINKS.where(devices.c.address.in_(sa.bindparam("addresses", expanding=True)))
# Levels read one statement each; real devices are a few deep (a PF, its VF, a slot on it).
# Past this, the host's links are read at once: a hostile agent's chain of 20,000 devices
# would otherwise cost a statement per level on every cleanup result.
_LEVELS_BY_STATEMENT = 4


def stored_unhealthy_above(conn: sa.Connection, host_id: int, row: Any) -> str | None:
    """Why a device above ``row`` (a devices row) is unhealthy as stored, in the words a report
    gives (:func:`with_inherited_health`), or ``None``: a cleanup that ends between two reports,
    or an operator's clear, must not make a slot of a failing GPU free."""
    seen = {row.address}
    todo = [a for a in (row.parent, row.pool) if a is not None]
    level = 0
    links: dict[str, Any] | None = None
    while todo:
        level += 1
        wanted = sorted(set(todo) - seen)
        if links is None and level > _LEVELS_BY_STATEMENT:
            links = {r.address: r for r in conn.execute(_LINKS, {"host_id": host_id})}
        if links is not None:
            found = [links[a] for a in wanted if a in links]
        else:
            found = list(conn.execute(_ABOVE, {"host_id": host_id, "addresses": wanted}))
        seen.update(todo)
        todo = []
        for up in sorted(found, key=lambda r: r.address):
            if not up.healthy:
                inherited = up.health_reason and _INHERITED.match(up.health_reason)
                # The nearest unhealthy device may be so through one above it: that one is named.
                return str(up.health_reason) if inherited else _above_reason(up.address, up.health_reason)
            todo.extend(a for a in (up.parent, up.pool) if a is not None and a not in seen)
    return None
