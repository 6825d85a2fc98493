"""A device below an unhealthy device is unhealthy with it.

The agent checks every device on its own (a GPU's config space, a slot's parent still there),
so a GPU that fails its check while its vGPU slots and MIG instances pass would leave the
slots free to claim: slices of a broken GPU. The server sees the whole report and carries the
verdict down the ``parent`` and ``pool`` links, however deep (a PF, its VF, a slot on the VF),
before the report is applied; the counts, the scheduler, the claim and the holders' events
then all follow from one stored state. A device failing its own check keeps its own reason.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    out = []
    for dev in reported:
        source = _unhealthy_above(dev, by_address) if dev.healthy or dev.health_recovering else None
        if source is None:
            out.append(dev)
            continue
        why = _above_reason(source.address, source.health_reason)
        recovering = source.health_recovering and (dev.healthy or dev.health_recovering)
        out.append(dev.model_copy(update={"healthy": False, "health_reason": why[:1000],
                                          "health_recovering": recovering}))  # fmt: skip
    return out


def _above_reason(address: str, reason: str | None) -> str:
    """A device's health reason when one above it fails: the same from a report and the store."""
    return f"{address} above it is unhealthy: {reason or 'its health check fails'}"


def _unhealthy_above(dev: ReportedDevice, by_address: dict[str, ReportedDevice]) -> ReportedDevice | None:
    """The nearest device above ``dev`` that fails its check, else the nearest recovering one."""
    recovering: ReportedDevice | None = None
    seen = {dev.address}
    todo = [a for a in (dev.parent, dev.pool) if a is not None]
    while todo:
        address = todo.pop(0)
        if address in seen:
            continue
        seen.add(address)
        up = by_address.get(address)
        if up is None:
            continue
        if not up.healthy:
            if not up.health_recovering:
                return up
            recovering = recovering or up
        todo.extend(a for a in (up.parent, up.pool) if a is not None)
    return recovering


_ABOVE = sa.select(
    devices.c.address, devices.c.parent, devices.c.pool, devices.c.healthy, devices.c.health_reason
).where(
    devices.c.host_id == sa.bindparam("host_id"),
    devices.c.address.in_(sa.bindparam("addresses", expanding=True)),
)


def stored_unhealthy_above(conn: sa.Connection, host_id: int, row: Any) -> str | None:
    """Why a device above ``row`` (a devices row) is unhealthy as stored, in the words a report
    gives (:func:`with_inherited_health`), or ``None``: a cleanup that ends between two reports,
    or an operator's clear, must not make a slot of a failing GPU free."""
    seen = {row.address}
    todo = [a for a in (row.parent, row.pool) if a is not None]
    while todo:
        found = conn.execute(_ABOVE, {"host_id": host_id, "addresses": sorted(set(todo) - seen)}).all()
        seen.update(todo)
        todo = []
        for up in sorted(found, key=lambda r: r.address):
            if not up.healthy:
                return _above_reason(up.address, up.health_reason)
            todo.extend(a for a in (up.parent, up.pool) if a is not None and a not in seen)
    return None
