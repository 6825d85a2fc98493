"""The wire contract: Pydantic models of what crosses the REST API.

Shared by the server (validation), the CLI and the agent (building requests). These are
apart from the database tables on purpose: the API can stay stable while storage changes.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, Self

import regex
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

from devassign.attribute_schema import schema_problem
from devassign.domain import (
    HEX4_RE,
    HOST_RE,
    LABEL_MAX,
    LABEL_RE,
    NAME_RE,
    PROJECT_MAX,
    PROJECT_RE,
    DeviceKind,
    DeviceState,
    Role,
    address_error,
    consumer_problem,
    label_problem,
    project_problem,
)

MAX_DEVICES_PER_REPORT = 20_000
HOST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
MAX_ATTRIBUTES = 64
# Largest values of the database's integer columns (PostgreSQL INTEGER and BIGINT).
MAX_INT32 = 2**31 - 1
MAX_INT64 = 2**63 - 1


def postable_text(text: str) -> str:
    """``text`` as every report and result can carry it: a lone surrogate (a name the host's
    filesystem gave as bytes that are no UTF-8, ``b'\\xe9th0'``) and a NUL written as escapes.
    For free text an agent composes from what the host shows (errors, health reasons): a value
    the server would refuse must not lose the whole report or result it is in."""
    if "\x00" not in text:
        try:
            text.encode("utf-8")
            return text
        except UnicodeEncodeError:
            pass
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


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


def _checked_by(problem_of: Callable[[str], str | None]) -> AfterValidator:
    """A validator from one of ``domain``'s ``*_problem`` rules: the rule's message is the error."""

    def check(value: str) -> str:
        problem = problem_of(value)
        if problem:
            raise ValueError(problem)
        return value

    return AfterValidator(check)


# Identifiers a caller chooses, each checked by its one rule in ``domain`` (docs/limits.md).
ConsumerId = Annotated[str, _checked_by(consumer_problem)]
ProjectName = Annotated[str, _checked_by(project_problem)]
Label = Annotated[str, _checked_by(label_problem)]


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


# ---------------------------------------------------------------- request params of a type

PARAM_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MAX_TYPE_PARAMS = 32
MAX_PARAM_VALUES = 256  # in ``allowed``, and in each project's list
MAX_PARAM_PROJECTS = 64
STRING_PARAM_LENGTH = 64  # a string param's ``max_length`` when its declaration gives none
MAX_STRING_PARAM = 1024
MAX_PATTERN = 256
# What handlers learn while they set a device up and read back at cleanup (the facts their
# setup() returns). A request must never supply one, so no type may declare it as a param.
FACT_NAMES = frozenset(
    {
        "mdev_uuid",
        "original_driver",
        "pf_ifname",
        "vf_index",
        "usb_bus_path",
        "usb_bus",
        "usb_device",
        "vgpu_type_id",
        "mig_gi",
        "mig_ci",
    }
)
# Params the built-in sriov_vf handler and the libvirt XML read, with the kind they must be
# declared as and the values they can take (a declaration without bounds gets these).
KNOWN_PARAMS: dict[str, dict[str, Any]] = {
    "mac": {"type": "mac"},
    "vlan": {"type": "integer", "min": 0, "max": 4094},
    "spoofchk": {"type": "boolean"},
    "trust": {"type": "boolean"},
    "link_state": {"type": "string", "allowed": ["auto", "enable", "disable"]},
    # A VF's guaranteed and capped transmit rates, Mbit/s; the guaranteed one takes that much
    # of its PF's bandwidth where the agent shares it (docs/partitions.md).
    "min_tx_rate_mbps": {"type": "integer", "min": 0, "max": 10_000_000},
    "max_tx_rate_mbps": {"type": "integer", "min": 0, "max": 10_000_000},
}
ParamKind = Literal["string", "integer", "boolean", "mac"]
ParamValue = StrictStr | StrictInt | StrictBool
# A declared pattern runs on members' values: a pattern such as ``(a+)+`` backtracks for an
# exponential time on a value like ``aaaa...b``, holding the GIL, so the whole server, while it
# does. ``regex`` stops a match after this long; the value is then refused.
PATTERN_TIMEOUT = 0.05


def _fullmatch(pattern: str, value: str) -> bool:
    try:
        return regex.fullmatch(pattern, value, timeout=PATTERN_TIMEOUT) is not None
    except TimeoutError:
        return False


_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_LIMITS = (("max_length", "string"), ("pattern", "string"), ("min", "integer"), ("max", "integer"))


class ParamSpec(Strict):
    """One request param a type accepts: its kind, its bounds, and the values each project may
    send. Every request's params are checked against these before anything is claimed."""

    type: ParamKind = Field(description="string, integer, boolean or mac (a unicast MAC address)")
    description: str = Field(default="", max_length=300)
    max_length: StrictInt | None = Field(
        default=None, ge=1, le=MAX_STRING_PARAM, description=f"string; default {STRING_PARAM_LENGTH}"
    )
    pattern: str | None = Field(
        default=None, min_length=1, max_length=MAX_PATTERN, description="string: a regex of the whole value"
    )
    min: StrictInt | None = Field(default=None, ge=-MAX_INT64, le=MAX_INT64, description="integer")
    max: StrictInt | None = Field(default=None, ge=-MAX_INT64, le=MAX_INT64, description="integer")
    allowed: list[ParamValue] | None = Field(
        default=None, max_length=MAX_PARAM_VALUES, description="The only values a project may send"
    )
    allowed_by_project: dict[str, list[ParamValue]] | None = Field(
        default=None,
        max_length=MAX_PARAM_PROJECTS,
        description="Per project, the only values it may send (instead of allowed); a project not "
        "listed may send those of allowed, or none when allowed is not given",
    )

    @model_validator(mode="after")
    def _coherent(self) -> Self:
        misplaced = [k for k, kind in _LIMITS if getattr(self, k) is not None and self.type != kind]
        if misplaced:
            raise ValueError(f"{', '.join(misplaced)}: not for {self.type} params")
        if self.type == "string" and self.max_length is None:
            self.max_length = STRING_PARAM_LENGTH
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern {self.pattern!r} is not a regular expression: {exc}") from None
            try:
                regex.compile(self.pattern)
            except regex.error as exc:
                raise ValueError(f"pattern {self.pattern!r} is not a regular expression: {exc}") from None
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        if self.allowed is not None:
            self.allowed = self._values(self.allowed, "allowed")
        if self.allowed_by_project is not None:
            for project, values in self.allowed_by_project.items():
                problem = project_problem(project)
                if problem:
                    raise ValueError(f"allowed_by_project: {problem}")
                self.allowed_by_project[project] = self._values(values, f"allowed_by_project.{project}")
        return self

    def _values(self, values: list[Any], where: str) -> list[Any]:
        out = []
        for value in values:
            normal, problem = self.check(value)
            if problem:
                raise ValueError(f"{where}: {value!r} is not {problem}")
            out.append(normal)
        return list(dict.fromkeys(out))

    def expected(self) -> str:
        """What a value of this param must be, in words."""
        if self.type == "integer":
            low = "" if self.min is None else f" from {self.min}"
            high = "" if self.max is None else f" to {self.max}" if low else f" up to {self.max}"
            return f"an integer{low}{high}"
        if self.type == "boolean":
            return "true or false"
        if self.type == "mac":
            return "a unicast MAC address like 52:54:00:12:34:56"
        matching = f" matching {self.pattern}" if self.pattern else ""
        return f"a string of at most {self.max_length} characters{matching}"

    def check(self, value: Any) -> tuple[Any, str | None]:
        """(the value normalised, None), or (the value, what is expected) if it does not fit."""
        if self.type == "integer":
            ok = type(value) is int and not (self.min is not None and value < self.min)
            ok = ok and not (self.max is not None and value > self.max)
        elif self.type == "boolean":
            ok = type(value) is bool
        elif self.type == "mac":
            value = value.lower() if isinstance(value, str) else value
            ok = isinstance(value, str) and bool(_MAC_RE.fullmatch(value))  # no trailing newline
            ok = ok and value != "00:00:00:00:00:00" and not int(value[:2], 16) & 1
        else:
            ok = isinstance(value, str) and len(value) <= (self.max_length or STRING_PARAM_LENGTH)
            ok = ok and (self.pattern is None or _fullmatch(self.pattern, value))
        return value, None if ok else self.expected()

    def permitted(self, project: str | None) -> list[Any] | None:
        """The values ``project`` may send; ``None``: any value of the kind."""
        if self.allowed_by_project is None:
            return self.allowed
        if project is not None and project in self.allowed_by_project:
            return self.allowed_by_project[project]
        return [] if self.allowed is None else self.allowed

    def seen_by(self, project: str | None) -> ParamSpec:
        """The declaration as a member of ``project`` sees it: its values, no other project's."""
        if self.allowed_by_project is None:
            return self
        return self.model_copy(update={"allowed": self.permitted(project), "allowed_by_project": None})


def _known(name: str, spec: ParamSpec) -> ParamSpec:
    """``spec`` held to what the built-in handlers read under ``name``, their bounds filled in."""
    known = KNOWN_PARAMS[name]
    if spec.type != known["type"]:
        raise ValueError(f"param {name!r} is read by the built-in handlers as {known['type']}: declare it so")
    values = [*(spec.allowed or []), *(v for vs in (spec.allowed_by_project or {}).values() for v in vs)]
    update: dict[str, Any] = {}
    if "min" in known:
        low, high = known["min"], known["max"]
        update = {"min": low if spec.min is None else spec.min, "max": high if spec.max is None else spec.max}
        if not low <= update["min"] <= update["max"] <= high or any(not low <= v <= high for v in values):
            raise ValueError(f"param {name!r}: its values lie within {low}..{high}")
    if "allowed" in known:
        if not set(values) <= set(known["allowed"]):
            raise ValueError(f"param {name!r}: its values are among {', '.join(known['allowed'])}")
        if spec.allowed is None and spec.allowed_by_project is None:
            update = {"allowed": list(known["allowed"])}
    return spec.model_copy(update=update) if update else spec


def checked_params(params: dict[str, ParamSpec] | None) -> dict[str, ParamSpec] | None:
    """A type's declared params as a whole: at most 32, well named, no fact, the known ones as
    the handlers read them. Raises ``ValueError`` naming the param."""
    if params is None:
        return None
    if len(params) > MAX_TYPE_PARAMS:
        raise ValueError(f"at most {MAX_TYPE_PARAMS} params per type ({len(params)} given)")
    out = {}
    for name, spec in params.items():
        if not PARAM_NAME_RE.fullmatch(name):
            raise ValueError(
                f"param name {name!r}: 1-64 characters, a lowercase letter, then lowercase letters, digits, _"
            )
        if name in FACT_NAMES:
            raise ValueError(
                f"param name {name!r} is reserved: the agent records it when it sets a device up, "
                "and no request may supply it"
            )
        out[name] = _known(name, spec) if name in KNOWN_PARAMS else spec
    return out


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
    params: dict[str, ParamSpec] = Field(
        default_factory=dict,
        description="The request params this type accepts, by name, e.g. {'vlan': {'type': 'integer', "
        "'min': 1, 'max': 4094}}; a request with any other param is refused",
    )

    @field_validator("attribute_schema")
    @classmethod
    def _attribute_schema(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        problem = None if v is None else schema_problem(v)
        if problem is not None:
            raise ValueError(f"not a JSON Schema its devices' attributes can be checked against: {problem}")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.fullmatch(v):
            raise ValueError("type names are 1-64 characters of letters, digits and _")
        return v

    _params = field_validator("params")(checked_params)


class ResourceTypeUpdate(Strict):
    description: str | None = Field(default=None, max_length=1000)
    config: dict[str, Any] | None = None
    params: dict[str, ParamSpec] | None = Field(
        default=None, description="Replaces the declared params; {}: the type accepts none"
    )

    _params = field_validator("params")(checked_params)


class StateCounts(BaseModel):
    """Devices of a type per state. ``total``: all but removed ones. ``available``: free devices
    of hosts that are up; ``down``: free devices of hosts that are down (not placeable until
    their host reports again)."""

    total: int = 0
    available: int = 0
    down: int = 0
    reserved: int = 0
    assigned: int = 0
    cleaning: int = 0
    quarantined: int = 0
    unhealthy: int = 0
    missing: int = 0
    removed: int = 0
    # Free devices that a NoSchedule or Drain taint keeps from new claims (not in ``available``).
    tainted: int = 0
    # Free devices their pool cannot give now: another mode runs on it, too little is left, or
    # it is held whole (not in ``available``).
    partitioned: int = 0


class ResourceType(BaseModel):
    name: str
    description: str
    handler: str | None
    config: dict[str, Any]
    attribute_schema: dict[str, Any] | None
    params: dict[str, ParamSpec] = Field(default_factory=dict)
    counts: StateCounts
    created_at: datetime


# ---------------------------------------------------------------- inventory reports


COUNTER_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MAX_COUNTERS = 32


def counters_problem(v: dict[str, int]) -> str | None:
    """Why a device's ``pool_counters`` or ``consumes`` are refused, or ``None``."""
    if len(v) > MAX_COUNTERS:
        return f"at most {MAX_COUNTERS} counters per device"
    for name, amount in v.items():
        if not COUNTER_RE.fullmatch(name):
            return f"counter {name[:80]!r}: names are lowercase letters, digits and _, starting with a letter"
        if not 0 <= amount <= MAX_INT32:
            return f"counter {name}: {amount} is not between 0 and {MAX_INT32}"
    return None


class DeviceFacts(Strict):
    """What an agent says a device is: its identity, topology and attributes, and for a
    partition its pool (docs/partitions.md). Defined once: the store keeps each of these as a
    column of the device, the API answers them, the agent's discovery fills them
    (:data:`DEVICE_FACTS`), and nothing copies them field by field."""

    address: str = Field(max_length=256)
    kind: DeviceKind
    vendor_id: str | None = None
    product_id: str | None = None
    numa_node: StrictInt | None = Field(default=None, ge=0, le=1024)
    iommu_group: StrictInt | None = Field(default=None, ge=0, le=MAX_INT32)
    driver: str | None = Field(default=None, max_length=128)
    parent: str | None = Field(default=None, max_length=256)
    attributes: dict[str, Any] = Field(default_factory=dict)
    pool: str | None = Field(
        default=None,
        max_length=256,
        description="The address of the device this one is carved from (default: its parent)",
    )
    pool_counters: dict[str, StrictInt] = Field(
        default_factory=dict,
        description="The pool's counters: name -> capacity (a GPU's framebuffer_mb, its MIG slices; a "
        "PF's bandwidth_mbps); the same on every device of one pool",
    )
    consumes: dict[str, StrictInt] = Field(
        default_factory=dict, description="What this device takes of its pool's counters while held"
    )
    mode: str | None = Field(
        default=None,
        max_length=128,
        description="Devices held from one pool at the same time share one mode (one vGPU type per GPU)",
    )

    @field_validator("pool_counters", "consumes")
    @classmethod
    def _counters(cls, v: dict[str, int]) -> dict[str, int]:
        problem = counters_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("vendor_id", "product_id")
    @classmethod
    def _hex4(cls, v: str | None) -> str | None:
        if v is not None and not HEX4_RE.fullmatch(v):
            raise ValueError("vendor and product ids are 4 lowercase hex digits without 0x")
        return v

    @field_validator("numa_node", mode="before")
    @classmethod
    def _no_numa(cls, v: Any) -> Any:
        """The kernel's ``numa_node`` of a machine without NUMA is -1: no node, as null (a
        report read straight from sysfs lost every device to this one value)."""
        return None if type(v) is int and v == -1 else v

    @field_validator("attributes")
    @classmethod
    def _attrs(cls, v: dict[str, Any]) -> dict[str, Any]:
        if len(v) > MAX_ATTRIBUTES:
            raise ValueError(f"at most {MAX_ATTRIBUTES} attributes per device")
        return v

    @model_validator(mode="after")
    def _pool(self) -> DeviceFacts:
        if (self.consumes or self.mode is not None or self.pool_counters) and self.pool is None:
            if self.parent is None:
                raise ValueError("a device with consumes, pool_counters or a mode needs a pool (or a parent)")
            self.pool = self.parent
        if self.pool == self.address:
            raise ValueError("a device cannot be its own pool")
        if self.parent == self.address:
            raise ValueError("a device cannot be its own parent")
        for k, amount in self.consumes.items():
            if amount > self.pool_counters.get(k, 0):
                have = self.pool_counters.get(k, 0)
                raise ValueError(f"consumes {amount} {k}, but its pool_counters give {have}")
        return self

    @model_validator(mode="after")
    def _address(self) -> DeviceFacts:
        problem = address_error(self.kind, self.address)
        if problem:
            raise ValueError(problem)
        return self


# The device's facts by name, in one place: the columns they are stored in, the fields the
# API answers, what discovery hands over.
DEVICE_FACTS: tuple[str, ...] = tuple(DeviceFacts.model_fields)


class ReportedDevice(DeviceFacts):
    """One device as an agent reports it (``PUT /v1/hosts/{host}/inventory``, docs/api.md):
    its facts, the type its rules gave it, and its health."""

    type: str = Field(max_length=64)
    healthy: StrictBool = True
    health_reason: str | None = Field(
        default=None, max_length=1000, description="Why the last failing health check failed"
    )
    health_recovering: StrictBool = Field(
        default=False,
        description="Unhealthy, but checks pass again and the agent waits for more before saying "
        "healthy: the server keeps the state it has (an operator's clear stands)",
    )


# An agent process's random id, chosen at its start: ``agent_instance`` in a report, this
# header on its other calls (heartbeats).
AGENT_INSTANCE_HEADER = "X-Devassign-Agent-Instance"
AGENT_INSTANCE_PATTERN = r"^[A-Za-z0-9_-]{8,64}$"


class Heartbeat(Strict):
    """A heartbeat's optional body: who sends it. A process of another machine (another host
    id) may not keep a host up or take its agent over by heartbeats."""

    host_id: str | None = Field(
        default=None, max_length=64, json_schema_extra={"pattern": HOST_ID_RE.pattern}
    )
    generation: StrictInt | None = Field(default=None, ge=0, le=MAX_INT64)

    @field_validator("host_id")
    @classmethod
    def _host_id(cls, v: str | None) -> str | None:
        if v is not None and not HOST_ID_RE.fullmatch(v):
            raise ValueError(
                "host_id is a letter or digit, then letters, digits, _ . : - (up to 64 characters)"
            )
        return v


class InventoryReport(Strict):
    generation: StrictInt = Field(
        ge=0,
        le=MAX_INT64,
        description="Increases with every report of this host; an older one is refused (409)",
    )
    host_id: str | None = Field(
        default=None,
        max_length=64,
        json_schema_extra={"pattern": HOST_ID_RE.pattern},
        description="The agent's stable host id (kept in its state file; the agent makes a UUID): a "
        "letter or digit, then letters, digits, _ . : -; it belongs to the host name it was first "
        "reported under: another name with it is refused (409 host_id_mismatch)",
    )
    agent_instance: str | None = Field(
        default=None,
        pattern=AGENT_INSTANCE_PATTERN,
        description="A random id the agent process chose at its start: a report from another "
        "instance while this host's agent was heard recently is refused (409 agent_conflict)",
    )
    devices: list[ReportedDevice] = Field(max_length=MAX_DEVICES_PER_REPORT)

    @field_validator("host_id")
    @classmethod
    def _host_id(cls, v: str | None) -> str | None:
        if v is not None and not HOST_ID_RE.fullmatch(v):
            if "\x00" in v:
                raise ValueError("host_id: NUL characters (\\u0000) are not allowed in text")
            raise ValueError(
                "host_id is a letter or digit, then letters, digits, _ . : - (up to 64 characters); "
                "the agent makes one (a UUID) in its state file"
            )
        return v


MAX_REPORTS_PER_BATCH = 1_000


class HostReport(Strict):
    host: str = Field(max_length=253, description="The host the report is for (letters, digits, _ . -)")
    report: InventoryReport

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        if not HOST_RE.fullmatch(v):
            raise ValueError(f"{v[:253]!r} is not a host name: letters, digits, _ . - (up to 253)")
        return v


class ReportBatch(Strict):
    """Many hosts' reports in one request (an admin's fleet load): each is applied as
    ``PUT /v1/hosts/{host}/inventory`` would apply it, and answered on its own."""

    reports: list[HostReport] = Field(min_length=1, max_length=MAX_REPORTS_PER_BATCH)

    @model_validator(mode="after")
    def _sizes(self) -> ReportBatch:
        names = [r.host for r in self.reports]
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"each host once per batch; twice: {', '.join(twice[:5])}")
        devices = sum(len(r.report.devices) for r in self.reports)
        if devices > MAX_DEVICES_PER_REPORT:
            raise ValueError(
                f"{devices} devices in one batch; at most {MAX_DEVICES_PER_REPORT}: "
                "send fewer hosts per batch"
            )
        return self


class HostRename(Strict):
    new_name: str = Field(
        max_length=253,
        description="The host's new name (letters, digits, _ . -); its agent needs a token for it",
    )

    @field_validator("new_name")
    @classmethod
    def _new_name(cls, v: str) -> str:
        if not HOST_RE.fullmatch(v):
            raise ValueError("host names are letters, digits, _ . - (up to 253)")
        return v


class RefusedDevice(BaseModel):
    address: str
    code: str
    reason: str


class HealthCheck(BaseModel):
    """How an agent checks the health of a free device of one type: the type's handler and
    its config, as a setup of that type would get them."""

    handler: str | None
    config: dict[str, Any]


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
    # Per reported type: what the agent runs to check its free devices.
    checks: dict[str, HealthCheck] = {}


# ---------------------------------------------------------------- hosts and devices


TaintEffect = Literal["NoSchedule", "Drain", "None"]


class Taint(BaseModel):
    """A taint on one device (``device_id``), a parent and its children (``parent``), or a
    whole host (neither). NoSchedule: no new claims; Drain: no new claims and the holders are
    asked to move (event ``drain_requested``); None: informational."""

    id: int
    host: str
    device_id: str | None = None
    device: str | None = None  # the device's address, for a device's taint
    parent: str | None = None
    effect: TaintEffect
    reason: str
    set_by: str
    created_at: datetime
    expires_at: datetime | None = None


MAX_TAINT_EXPIRY = timedelta(days=3650)


class TaintCreate(Strict):
    """``expires_at`` (an absolute time) or ``expires_in`` (seconds, or an ISO 8601 duration
    such as ``PT2H``), not both; neither: until untainted. ``parent`` only on a host's taints:
    that parent device and every device under it."""

    effect: TaintEffect
    reason: str = Field(min_length=1, max_length=1000)
    expires_at: datetime | None = None
    expires_in: timedelta | None = None
    parent: str | None = Field(default=None, min_length=1, max_length=256)

    @field_validator("reason")
    @classmethod
    def _said(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("say why: the reason cannot be blank")
        return v.strip()

    @field_validator("expires_in", mode="before")
    @classmethod
    def _not_a_flag(cls, v: Any) -> Any:
        if isinstance(v, bool):  # true would be one second: a Drain gone at once
            raise ValueError("expires_in is seconds or an ISO 8601 duration (PT2H), not true or false")
        return v

    @model_validator(mode="after")
    def _one_expiry(self) -> Self:
        if self.expires_at is not None and self.expires_in is not None:
            raise ValueError("give expires_at or expires_in, not both")
        if self.expires_in is not None and self.expires_in <= timedelta(0):
            raise ValueError("expires_in must be positive")
        if self.expires_in is not None and self.expires_in > MAX_TAINT_EXPIRY:
            raise ValueError("expires_in: at most 3650 days; leave it out for a taint until untainted")
        if self.expires_at is not None and self.expires_at.tzinfo is None:
            raise ValueError("expires_at needs a time zone (e.g. 2026-12-04T18:00:00Z)")
        if self.expires_at is not None:
            # The same instant in UTC: the store keeps times without their offset.
            try:
                self.expires_at = self.expires_at.astimezone(UTC)
            except OverflowError:
                raise ValueError("expires_at is out of range (years 1 to 9999 in UTC)") from None
        return self


class Host(BaseModel):
    name: str
    host_id: str | None
    status: Literal["up", "down"]
    generation: int
    last_report_at: datetime | None
    last_seen_at: datetime | None
    device_count: int
    created_at: datetime
    taints: list[Taint] = []


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
    health_reason: str | None = None
    pool: str | None = None
    pool_counters: dict[str, int] = {}
    consumes: dict[str, int] = {}
    mode: str | None = None
    state_changed_at: datetime
    created_at: datetime
    # The device's active taints: its own, its parent's and its host's.
    taints: list[Taint] = []


# ---------------------------------------------------------------- allocations and events


class AllocatedDevice(BaseModel):
    id: str
    address: str
    type: str
    kind: DeviceKind
    # None in a released allocation once the device has left it (cleaned; maybe another's now)
    state: DeviceState | None
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
    release_reason: str | None = Field(
        default=None,
        description="Why it was released: released (a release call), expired (never set up in time), "
        "device_missing (a reserved device left its host's report before its setup), setup_failed, "
        "moved, arq_unbound; null while live",
    )
    release_detail: str | None = Field(
        default=None, description="For setup_failed: which device and what the host's agent said"
    )


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
    project: ProjectName | None = Field(
        default=None,
        min_length=1,
        max_length=PROJECT_MAX,
        description="A letter or digit, then letters, digits, _ . -",
        json_schema_extra={"pattern": PROJECT_RE.pattern},  # checked below, with a better message
    )
    name: Label | None = Field(
        default=None,
        min_length=1,
        max_length=LABEL_MAX,
        description="A label shown as the actor of the token's events; omitted: made from the "
        "role, scope and id. A letter or digit, then letters, digits, _ . : @ # -",
        json_schema_extra={"pattern": LABEL_RE.pattern},
    )

    @model_validator(mode="after")
    def _scope(self) -> TokenCreate:
        if self.role is Role.AGENT and not self.host:
            raise ValueError("an agent token is bound to one host: give host")
        if self.role is Role.MEMBER and not self.project:
            raise ValueError("a member token belongs to a project: give project")
        if self.role is Role.MONITOR and (self.host or self.project):
            raise ValueError("a monitor token only reads /metrics: leave out host and project")
        # A scope the role ignores would be listed as if it limited the token: refused.
        if self.role is Role.ADMIN and (self.host or self.project):
            raise ValueError(
                "an admin token is never limited to a host or a project: leave out host and project "
                "(an agent token is --role agent --host H; a tenant's, --role member --project P)"
            )
        if self.role is Role.MEMBER and self.host:
            raise ValueError("a member token belongs to a project, never a host: leave out host")
        if self.role is Role.AGENT and self.project:
            raise ValueError("an agent token is bound to a host, never a project: leave out project")
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
    """One thing an agent must do to a device of its host: set it up, or clean it.

    ``facts`` are what this host's agent posted from the device's last setup (the agent
    prefers its own journal); ``cleared``: an operator cleared the device after a failed
    cleanup, so the cleanup works from what the host shows now, not from recorded facts.
    """

    action: Literal["setup", "cleanup"]
    device: Device
    handler: str | None
    config: dict[str, Any]
    params: dict[str, Any]
    facts: dict[str, Any]
    companions: list[str]
    cleared: bool = False
    ticket: str = Field(
        default="",
        description="Which round of work on the device this is; the result names it, and a result "
        "of an earlier round (resent, or late after the device moved on) is ignored",
    )
    type_changed: bool = Field(
        default=False,
        description="A cleanup of a device that was set up and whose type's config changed after "
        "the device was claimed: an agent without its own record of the handler and config that "
        "set the device up refuses the cleanup (the device is quarantined), as the type's new "
        "cleanup may not undo the old setup",
    )


# What a setup's facts may be: a few small values (a driver name, an mdev UUID), never a
# payload; stored per device and handed back with every cleanup.
WORK_FACTS_MAX_KEYS = 32
WORK_FACTS_MAX_BYTES = 4096
WORK_FACT_KEY_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def work_facts_problem(facts: dict[str, Any]) -> str | None:
    """Why a work result's ``facts`` are refused, or ``None``."""
    unstorable = value_problem(facts, "facts")
    if unstorable:
        return unstorable
    if len(facts) > WORK_FACTS_MAX_KEYS:
        return f"facts: at most {WORK_FACTS_MAX_KEYS} keys, not {len(facts)}"
    for key in facts:
        if not isinstance(key, str) or not WORK_FACT_KEY_RE.fullmatch(key):
            return f"facts: key {str(key)[:80]!r} must be 1-64 lowercase letters, digits and _"
    try:
        size = len(json.dumps(facts, allow_nan=False, separators=(",", ":")).encode("utf-8"))
    except (TypeError, ValueError) as exc:
        return f"facts: not plain JSON: {exc}"
    if size > WORK_FACTS_MAX_BYTES:
        return f"facts: at most {WORK_FACTS_MAX_BYTES} bytes of JSON, not {size}"
    return None


class WorkList(BaseModel):
    host: str
    items: list[WorkItem]


class WorkResult(Strict):
    device_id: str = Field(max_length=36)
    action: Literal["setup", "cleanup"]
    ok: StrictBool
    error: str | None = Field(default=None, max_length=4000)
    facts: dict[str, Any] = Field(
        default_factory=dict,
        description=f"What a setup learned: at most {WORK_FACTS_MAX_KEYS} keys, "
        f"{WORK_FACTS_MAX_BYTES} bytes of JSON",
    )
    consumer: str | None = Field(
        default=None,
        max_length=255,
        description="The consumer the work item named; a result for an older holder is ignored",
    )
    ticket: str | None = Field(
        default=None,
        max_length=64,
        description="The work item's ticket: a result of an earlier round of work on the device is "
        "ignored. Without one (nor a consumer) the result applies to the device's current round",
    )
    healthy: StrictBool = Field(
        default=True,
        description="The health check run after a cleanup: a device that fails it is unhealthy, "
        "never available, whatever the cleanup said",
    )
    health_reason: str | None = Field(default=None, max_length=1000)
    health_recovering: StrictBool = False

    @field_validator("facts")
    @classmethod
    def _small_facts(cls, v: dict[str, Any]) -> dict[str, Any]:
        problem = work_facts_problem(v)
        if problem:
            raise ValueError(problem)
        return v


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


class HostReportOutcome(BaseModel):
    """One host's answer in a batch: ``status`` is what its own ``PUT`` would have answered,
    with the ``result`` (2xx) or the ``error``."""

    host: str
    status: int
    result: InventoryResult | None = None
    error: ErrorDetail | None = None


class ReportBatchResult(BaseModel):
    applied: int
    failed: int
    results: list[HostReportOutcome]


# ---------------------------------------------------------------- audit


class AuditFinding(BaseModel):
    check: str
    message: str
    fixable: bool
    repaired: bool = False
    host: str | None = None
    device: str | None = None
    consumer: str | None = None


class AuditReport(BaseModel):
    """What ``GET /v1/audit`` found (empty ``findings``: consistent); ``checks`` ran."""

    at: datetime
    checks: list[str]
    findings: list[AuditFinding]
