"""The wire contract: Pydantic models of what crosses the REST API.

Shared by the server (validation), the CLI and the agent (building requests). These are
apart from the database tables on purpose: the API can stay stable while storage changes.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from devassign.domain import (
    HEX4_RE,
    HOST_RE,
    NAME_RE,
    DeviceKind,
    DeviceState,
    Role,
    address_error,
)

MAX_DEVICES_PER_REPORT = 20_000
MAX_ATTRIBUTES = 64
# Largest values of the database's integer columns (PostgreSQL INTEGER and BIGINT).
MAX_INT32 = 2**31 - 1
MAX_INT64 = 2**63 - 1


def value_problem(value: Any, where: str = "") -> str | None:
    """What makes ``value`` (decoded JSON) unstorable, or ``None``.

    PostgreSQL refuses NUL characters in text and JSON, no UTF-8 encoder takes a lone
    surrogate (``"\\ud800"``), and JSON has no NaN or Infinity (Python's decoder accepts
    them, and ``1e400``). Each would fail deep in the store or when the value is read back,
    so requests are checked once, here. Nested models have checked themselves already.
    """
    if isinstance(value, str):
        if "\x00" in value:
            return f"{where or 'text'}: NUL characters (\\u0000) are not allowed in text"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"{where or 'text'}: lone surrogate characters (\\ud800-\\udfff) are not valid text"
    elif isinstance(value, float):
        if not math.isfinite(value):
            return f"{where or 'number'}: NaN and Infinity are not JSON numbers; send a finite number"
    elif isinstance(value, dict):
        for key, item in value.items():
            label = str(key) if str(key).isprintable() else ascii(str(key))
            here = f"{where}.{label}" if where else label
            problem = value_problem(key, f"{here} (key)") or value_problem(item, here)
            if problem:
                return problem
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            problem = value_problem(item, f"{where}.{i}" if where else str(i))
            if problem:
                return problem
    return None


class Strict(BaseModel):
    """Refuse unknown fields (a typo in a request is an error, not silently ignored) and
    values the database cannot store (NUL, lone surrogates, NaN and Infinity)."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _storable(self) -> Self:
        for name in type(self).model_fields:
            problem = value_problem(getattr(self, name), name)
            if problem:
                raise ValueError(problem)
        return self


# ---------------------------------------------------------------- resource types


class ResourceTypeCreate(Strict):
    name: str = Field(description="Cloud-wide type name, [A-Za-z0-9_]+")
    description: str = Field(default="", max_length=1000)
    handler: str | None = Field(
        default=None,
        description="Lifecycle handler (entry point in devassign.handlers); "
        "null: the device's kind picks the built-in one",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
    )
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="Handler options, e.g. {'reset': 'none-ok', 'one_time_use': true}",
    )
    attribute_schema: dict[str, Any] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.fullmatch(v):
            raise ValueError("type names are 1-64 characters of letters, digits and _")
        return v


class ResourceTypeUpdate(Strict):
    description: str | None = Field(default=None, max_length=1000)
    config: dict[str, Any] | None = None


class StateCounts(BaseModel):
    total: int = 0
    available: int = 0
    reserved: int = 0
    assigned: int = 0
    cleaning: int = 0
    quarantined: int = 0
    unhealthy: int = 0
    missing: int = 0
    removed: int = 0


class ResourceType(BaseModel):
    name: str
    description: str
    handler: str | None
    config: dict[str, Any]
    attribute_schema: dict[str, Any] | None
    counts: StateCounts
    created_at: datetime


# ---------------------------------------------------------------- inventory reports


class ReportedDevice(Strict):
    """One device as an agent reports it (SPEC.md, ``PUT /v1/hosts/{host}/inventory``)."""

    address: str = Field(max_length=256)
    kind: DeviceKind
    type: str = Field(max_length=64)
    vendor_id: str | None = None
    product_id: str | None = None
    numa_node: int | None = Field(default=None, ge=0, le=1024)
    iommu_group: int | None = Field(default=None, ge=0, le=MAX_INT32)
    driver: str | None = Field(default=None, max_length=128)
    parent: str | None = Field(default=None, max_length=256)
    healthy: bool = True
    attributes: dict[str, Any] = Field(default_factory=dict)

    @field_validator("vendor_id", "product_id")
    @classmethod
    def _hex4(cls, v: str | None) -> str | None:
        if v is not None and not HEX4_RE.fullmatch(v):
            raise ValueError("vendor and product ids are 4 lowercase hex digits without 0x")
        return v

    @field_validator("attributes")
    @classmethod
    def _attrs(cls, v: dict[str, Any]) -> dict[str, Any]:
        if len(v) > MAX_ATTRIBUTES:
            raise ValueError(f"at most {MAX_ATTRIBUTES} attributes per device")
        return v

    @model_validator(mode="after")
    def _address(self) -> ReportedDevice:
        problem = address_error(self.kind, self.address)
        if problem:
            raise ValueError(problem)
        return self


class InventoryReport(Strict):
    generation: int = Field(
        ge=0,
        le=MAX_INT64,
        description="Increases with every report of this host; an older one is refused (409)",
    )
    host_id: str | None = Field(
        default=None,
        max_length=64,
        description="The agent's stable host id (kept in its state file)",
    )
    devices: list[ReportedDevice] = Field(max_length=MAX_DEVICES_PER_REPORT)


class RefusedDevice(BaseModel):
    address: str
    code: str
    reason: str


class InventoryResult(BaseModel):
    host: str
    generation: int
    accepted: int
    added: list[str]
    updated: list[str]
    removed: list[str]
    missing: list[str]
    refused: list[RefusedDevice]
    warnings: list[str]


# ---------------------------------------------------------------- hosts and devices


class Host(BaseModel):
    name: str
    host_id: str | None
    status: Literal["up", "down"]
    generation: int
    last_report_at: datetime | None
    last_seen_at: datetime | None
    device_count: int
    created_at: datetime


class Device(BaseModel):
    id: str
    host: str
    address: str
    kind: DeviceKind
    type: str
    state: DeviceState
    healthy: bool
    vendor_id: str | None
    product_id: str | None
    numa_node: int | None
    iommu_group: int | None
    driver: str | None
    parent: str | None
    attributes: dict[str, Any]
    consumer: str | None
    quarantine_reason: str | None = None
    state_changed_at: datetime
    created_at: datetime


# ---------------------------------------------------------------- allocations and events


class AllocatedDevice(BaseModel):
    id: str
    address: str
    type: str
    kind: DeviceKind
    state: DeviceState
    request: str | None = None


class Allocation(BaseModel):
    consumer: str
    project: str
    host: str
    state: str
    devices: list[AllocatedDevice]
    created_at: datetime
    expires_at: datetime | None
    released_at: datetime | None


class Event(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    host: str | None
    device: str | None
    consumer: str | None
    type: str | None
    message: str
    detail: dict[str, Any]


# ---------------------------------------------------------------- tokens


class TokenCreate(Strict):
    role: Role
    host: str | None = None
    project: str | None = Field(default=None, min_length=1, max_length=64)
    name: str | None = Field(default=None, max_length=128)

    @model_validator(mode="after")
    def _scope(self) -> TokenCreate:
        if self.role is Role.AGENT and not self.host:
            raise ValueError("an agent token is bound to one host: give host")
        if self.role is Role.MEMBER and not self.project:
            raise ValueError("a member token belongs to a project: give project")
        if self.host is not None and not HOST_RE.fullmatch(self.host):
            raise ValueError("host names are letters, digits, _ . - (up to 253)")
        return self


class TokenCreated(BaseModel):
    token: str
    id: int
    name: str
    role: Role
    host: str | None
    project: str | None


class Token(BaseModel):
    """A token as listed: never its secret (only a hash of it is stored)."""

    id: int
    name: str
    role: Role
    host: str | None
    project: str | None
    created_at: datetime
    revoked_at: datetime | None


# ---------------------------------------------------------------- agent work (setup and cleanup)


class WorkItem(BaseModel):
    """One thing an agent must do to a device of its host: set it up, or clean it."""

    action: Literal["setup", "cleanup"]
    device: Device
    handler: str | None
    config: dict[str, Any]
    params: dict[str, Any]
    facts: dict[str, Any]
    companions: list[str]


class WorkList(BaseModel):
    host: str
    items: list[WorkItem]


class WorkResult(Strict):
    device_id: str = Field(max_length=36)
    action: Literal["setup", "cleanup"]
    ok: bool
    error: str | None = Field(default=None, max_length=4000)
    facts: dict[str, Any] = Field(default_factory=dict)
    consumer: str | None = Field(
        default=None,
        max_length=255,
        description="The consumer the work item named; a result for an older holder is ignored",
    )


class WorkResults(Strict):
    results: list[WorkResult] = Field(max_length=10_000)


class WorkOutcome(BaseModel):
    device_id: str
    applied: bool
    state: DeviceState | None
    note: str


class DeviceClear(Strict):
    reason: str = Field(default="", max_length=1000)


# ---------------------------------------------------------------- errors


class ErrorDetail(BaseModel):
    """A stable ``code`` (``devassign.errors``), a message saying what to fix, and extras
    (``current_generation``, ``explanation``, ``limits``...) for some codes."""

    model_config = ConfigDict(extra="allow")
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail
