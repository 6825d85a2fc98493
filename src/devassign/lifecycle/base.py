"""What every handler shares: the device it acts on, its errors and its health answer.

The device is a small value built from the server's ``schemas.Device`` plus what the
allocation asked for (MAC, VLAN) and what an earlier setup recorded (the driver it took the
device from, the mdev UUID it created), so a handler re-run after an agent restart knows
everything the first run knew. The two never mix: a tenant once named another tenant's mdev
in its request params and had it handed over (and then removed), because one lookup read
facts, then params. Facts come only from the agent's journal and the host.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from devassign.domain import DeviceKind
from devassign.lifecycle.host import HostOps
from devassign.schemas import FACT_NAMES, Device

# What a setup learned and the agent must keep for the cleanup (e.g. ``original_driver``).
Facts = dict[str, Any]
# The facts the built-in handlers record: never read from a request's params (the same names
# no resource type may declare as a param).
FACT_KEYS = FACT_NAMES
TypeConfig = Mapping[str, Any]


class HandlerError(Exception):
    """A setup, cleanup or health step failed; the message says what and on which device."""


@dataclass(frozen=True)
class HealthResult:
    ok: bool
    reason: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


# A free device's health ``details`` key: the failure is what an assignment left on it (a
# MIG instance, a vGPU type), which its cleanup removes, so a cleanup that passes ends it.
LEFTOVER = "leftover"
# A free partition's health ``details`` key: something the agent did not make (a MIG instance,
# a vGPU type set by hand) runs on its parent, so the parent (a GPU, and the GPU above a VF)
# must not be handed out whole either while it is there.
PARENT_IN_USE = "parent_in_use"
# For a free MIG slot's health check, the agent gives the placements of the slots it holds (or
# has an action in flight for, or set up and has not cleaned yet) on the same GPU:
# ``[start, memory slices]`` pairs.
MIG_HELD = "mig_held"
# Likewise for a free mdev slot: the mdevs this agent holds (or has an action in flight for,
# or set up and has not cleaned yet) on the same parent, ``{"uuids": [...], "slots": [...]}``.
MDEV_HELD = "mdev_held"
# And for a free vGPU (17+) slot: the VFs whose vGPU this agent holds (or has an action in
# flight for, or set up and has not cleaned yet) anywhere on the host.
VGPU_HELD = "vgpu_held"
# And for a free MIG slot: whether this agent holds its GPU whole (on vfio-pci for a consumer).
PARENT_HELD_WHOLE = "parent_held_whole"


@dataclass(frozen=True)
class LifecycleDevice:
    """One device as a handler sees it.

    ``facts`` are what an earlier setup of this device on this host returned (from the
    agent's journal), ``params`` what the allocation asked for. :meth:`known` reads facts and
    the discovered attributes; :meth:`requested` reads params and refuses fact keys, so a
    request can never pose as something the host told us. ``companions`` are the other
    addresses this consumer holds on the host, so a multi-function IOMMU group can be set up
    one function at a time.
    """

    address: str
    kind: DeviceKind
    type: str
    parent: str | None = None
    driver: str | None = None
    vendor_id: str | None = None
    product_id: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    consumer: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    facts: Mapping[str, Any] = field(default_factory=dict)
    companions: frozenset[str] = frozenset()

    def known(self, key: str, default: Any = None) -> Any:
        """What the host said: a recorded fact, else a discovered attribute."""
        for source in (self.facts, self.attributes):
            if source.get(key) is not None:
                return source[key]
        return default

    def requested(self, key: str, default: Any = None) -> Any:
        """What the allocation asked for; never a fact (a handler bug if it asks for one)."""
        if key in FACT_KEYS:
            raise HandlerError(f"{key} is a fact a setup records, never a request parameter")
        value = self.params.get(key)
        return default if value is None else value

    @classmethod
    def from_schema(
        cls,
        device: Device,
        *,
        params: Mapping[str, Any] | None = None,
        facts: Mapping[str, Any] | None = None,
        companions: frozenset[str] = frozenset(),
    ) -> LifecycleDevice:
        return cls(
            address=device.address,
            kind=device.kind,
            type=device.type,
            parent=device.parent,
            driver=device.driver,
            vendor_id=device.vendor_id,
            product_id=device.product_id,
            attributes=dict(device.attributes),
            consumer=device.consumer,
            params=dict(params or {}),
            facts=dict(facts or {}),
            companions=companions,
        )


class Handler(Protocol):
    """A per-type lifecycle handler, loaded by name from the ``devassign.handlers`` entry points.

    Every method is idempotent: the agent re-runs whatever was in flight when it restarts.
    Failures raise :class:`HandlerError`.
    """

    def setup(self, device: LifecycleDevice, config: TypeConfig, ops: HostOps) -> Facts: ...

    def cleanup(self, device: LifecycleDevice, config: TypeConfig, ops: HostOps) -> None: ...

    def health(self, device: LifecycleDevice, config: TypeConfig, ops: HostOps) -> HealthResult: ...


def config_choice(config: TypeConfig, key: str, default: str, allowed: tuple[str, ...]) -> str:
    """A string option of the type's config, refused loudly when misspelt."""
    value = config.get(key, default)
    if value not in allowed:
        raise HandlerError(f"type config {key}={value!r}: expected one of {', '.join(allowed)}")
    return str(value)


def config_bool(config: TypeConfig, key: str, default: bool) -> bool:
    value = config.get(key, default)
    if not isinstance(value, bool):
        raise HandlerError(f"type config {key}={value!r}: expected true or false")
    return value
