"""Claim bodies in, one normalized immutable ``Request`` out.

Two spellings reach the server (docs/requests.md): the flavor short form
``hardware_resource:TYPE=N`` (a list of strings, or a flavor's extra-spec dict) and the full
JSON form with named requests, CEL selectors, ``first_available`` alternatives and
constraints. Both become the same ``Request`` here, so nothing after this module knows which
one the user wrote. Pydantic validates the shape; the checks that need the whole body (names,
constraints, selectors) follow and raise ``RequestError`` with a JSON pointer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from pydantic import ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError, field_validator

from devassign.domain import (
    CONSUMER_MAX,
    CONSUMER_RE,
    HOST_RE,
    NAME_RE,
    PROJECT_MAX,
    PROJECT_RE,
    SPEC_PREFIX,
    consumer_problem,
    project_problem,
)
from devassign.scheduler.errors import RequestError, RequestErrorCode
from devassign.scheduler.selector import Selector, compile_selector
from devassign.scheduler.shares import param_consumption
from devassign.schemas import ConsumerId, ProjectName, Strict

MAX_COUNT = 256
MAX_REQUESTS = 32
# A flavor's extra specs, as Nova bounds them (its flavor_extra_specs columns are 255 wide).
MAX_EXTRA_SPECS = 128
MAX_EXTRA_SPEC_LENGTH = 255
MAX_ALTERNATIVES = 8
MAX_PARAMS = 32
MAX_HOSTS = 1000

# Constraint attributes that are device fields; anything else lives under ``attributes.``.
DEVICE_FIELDS = (
    "numa_node",
    "iommu_group",
    "parent",
    "vendor_id",
    "product_id",
    "driver",
    "kind",
    "type",
    "address",
)
ALIASES: Mapping[str, str] = {
    "numa": "numa_node",
    "pf": "parent",
    "physical_function": "parent",
    "iommu": "iommu_group",
    "vendor": "vendor_id",
    "product": "product_id",
    "pcie_root": "attributes.pcie_root",
    "physical_network": "attributes.physical_network",
    "physnet": "attributes.physical_network",
}


# ---------------------------------------------------------------- the normalized request


@dataclass(frozen=True, slots=True)
class Alternative:
    """One way to satisfy a named request: ``count`` devices of ``type`` that ``selector`` picks."""

    type: str
    count: int
    selector: Selector | None = None
    # What each device takes of its pool beyond its own consumes, from the request's params
    # (a VF's guaranteed rate of its PF's bandwidth: scheduler/shares.py), as sorted pairs.
    extra: tuple[tuple[str, int], ...] = ()

    def describe(self) -> str:
        return f"{self.count} {self.type}"


@dataclass(frozen=True, slots=True)
class DeviceRequest:
    """A named request. ``alternatives[0]`` is its own type; the rest are ``first_available``."""

    name: str
    alternatives: tuple[Alternative, ...]

    @property
    def first(self) -> Alternative:
        return self.alternatives[0]


@dataclass(frozen=True, slots=True)
class Constraint:
    """Devices of the named requests share (``match``) or differ in (``distinct``) an attribute."""

    requests: tuple[str, ...]
    attribute: str  # a device field (numa_node) or "attributes.NAME"
    mode: Literal["match", "distinct"]


@dataclass(frozen=True, slots=True)
class Request:
    """What a consumer asks for, in one normalized shape (no Pydantic past this point)."""

    requests: tuple[DeviceRequest, ...]
    constraints: tuple[Constraint, ...] = ()
    hosts: tuple[str, ...] = ()
    consumer: str | None = None
    project: str | None = None
    idempotency_key: str | None = None

    def names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.requests)


# ---------------------------------------------------------------- the JSON body


class _Strict(Strict):
    """The wire models' rules (unknown fields refused, only storable values), frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class AlternativeBody(_Strict):
    type: str = Field(pattern=NAME_RE.pattern, description="Resource type, e.g. GPU_T4")
    # Strict: ``true`` or ``"2"`` or ``2.0`` is a mistake, not a count.
    count: StrictInt = Field(default=1, ge=1, le=MAX_COUNT)
    selector: str | None = Field(default=None, description="CEL over device")


class RequestBody(AlternativeBody):
    name: str = Field(pattern=NAME_RE.pattern)
    # Strict: a value keeps the JSON type it was sent with (``true`` is never 1, ``1.0`` never 1).
    params: dict[str, StrictStr | StrictInt | StrictBool] = Field(
        default_factory=dict,
        max_length=MAX_PARAMS,
        description="Setup parameters for this request's devices, "
        "e.g. {'mac': '52:54:00:12:34:56', 'vlan': 100}",
    )
    first_available: list[AlternativeBody] = Field(
        default_factory=list,
        max_length=MAX_ALTERNATIVES,
        description="Tried in order when this request's own type does not fit",
    )

    @field_validator("params")
    @classmethod
    def _vlan(cls, v: dict[str, str | int | bool]) -> dict[str, str | int | bool]:
        vlan = v.get("vlan")
        if vlan is not None and (
            isinstance(vlan, bool) or not isinstance(vlan, int) or not 0 <= vlan <= 4094
        ):
            raise ValueError(f"vlan {vlan!r} is not an integer from 0 to 4094")
        return v


class ConstraintBody(_Strict):
    requests: list[str] | None = Field(default=None, description="Names; omitted: all requests")
    match: str | None = Field(default=None, description="e.g. numa_node, parent, pcie_root")
    distinct: str | None = Field(default=None, description="e.g. iommu_group")


class ClaimBody(_Strict):
    """``POST /v1/claims`` and ``POST /v1/explain`` (docs/requests.md)."""

    # The lengths of the database columns (consumers.uuid, allocations.project, idempotency_key);
    # the alphabets of domain.CONSUMER_RE and PROJECT_RE (docs/limits.md).
    consumer: ConsumerId | None = Field(
        default=None,
        min_length=1,
        max_length=CONSUMER_MAX,
        description="The instance the devices are for: a letter or digit, then letters, digits, _ . : -",
        json_schema_extra={"pattern": CONSUMER_RE.pattern},  # checked below, with a better message
    )
    project: ProjectName | None = Field(
        default=None,
        min_length=1,
        max_length=PROJECT_MAX,
        description="A letter or digit, then letters, digits, _ . -",
        json_schema_extra={"pattern": PROJECT_RE.pattern},
    )
    requests: list[RequestBody] = Field(default_factory=list, max_length=MAX_REQUESTS)
    constraints: list[ConstraintBody] = Field(default_factory=list, max_length=MAX_REQUESTS)
    hosts: list[str] = Field(default_factory=list, max_length=MAX_HOSTS)
    extra_specs: dict[str, StrictStr | StrictInt] = Field(
        default_factory=dict,
        max_length=MAX_EXTRA_SPECS,
        description=f"A flavor's extra specs (at most {MAX_EXTRA_SPECS}; keys and values of at most "
        f"{MAX_EXTRA_SPEC_LENGTH} characters); hardware_resource:TYPE keys count, others are kept as sent",
    )
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=128)

    @field_validator("extra_specs")
    @classmethod
    def _extra_specs(cls, v: dict[str, str | int]) -> dict[str, str | int]:
        """Bounded as Nova bounds them: the claim stores them with its allocation for good."""
        for key, value in v.items():
            if len(key) > MAX_EXTRA_SPEC_LENGTH or len(str(value)) > MAX_EXTRA_SPEC_LENGTH:
                raise ValueError(
                    f"extra spec {key[:40]!r}: keys and values are at most {MAX_EXTRA_SPEC_LENGTH} characters"
                )
        return v


# ---------------------------------------------------------------- parsing


def parse_claim(body: Mapping[str, Any] | ClaimBody) -> Request:
    """Validate a claim or explain body (decoded JSON, or an already parsed ``ClaimBody``)."""
    if not isinstance(body, ClaimBody):
        try:
            body = ClaimBody.model_validate(body)
        except ValidationError as exc:
            raise _from_validation(exc) from None
    requests = [_request(r, f"/requests/{i}") for i, r in enumerate(body.requests)]
    from_specs = parse_extra_specs(body.extra_specs, pointer="/extra_specs")
    named = {r.alternatives[0].type: r.name for r in requests}
    for r in from_specs:
        if r.name in named:
            raise RequestError(
                RequestErrorCode.INVALID_SPEC,
                f"{SPEC_PREFIX}{r.name} asks for a type request {named[r.name]!r} asks for too; "
                "give the total in one place",
                f"/extra_specs/{_escape(SPEC_PREFIX + r.name)}",
            )
    requests += from_specs
    if not requests:
        raise RequestError(
            RequestErrorCode.NO_REQUESTS,
            'nothing requested: give requests, or extra_specs like {"hardware_resource:GPU_A100": "1"}',
            "/requests",
        )
    seen: set[str] = set()
    for i, r in enumerate(requests):
        if r.name in seen:
            raise RequestError(
                RequestErrorCode.DUPLICATE_NAME,
                f"request name {r.name!r} is used twice; give each request its own name",
                f"/requests/{i}/name",
            )
        seen.add(r.name)
    if len(requests) > MAX_REQUESTS:
        raise RequestError(RequestErrorCode.INVALID_BODY, f"at most {MAX_REQUESTS} requests", "/requests")
    names = tuple(r.name for r in requests)
    constraints = tuple(_constraint(c, names, f"/constraints/{i}") for i, c in enumerate(body.constraints))
    for i, h in enumerate(body.hosts):
        if not HOST_RE.fullmatch(h):
            raise RequestError(RequestErrorCode.INVALID_BODY, f"{h!r} is not a host name", f"/hosts/{i}")
    return Request(
        requests=tuple(requests),
        constraints=constraints,
        hosts=tuple(dict.fromkeys(body.hosts)),
        consumer=body.consumer,
        project=body.project,
        idempotency_key=body.idempotency_key,
    )


def parse_specs(specs: Iterable[str]) -> list[DeviceRequest]:
    """``["hardware_resource:NIC_VF_1G=1", ...]`` (the CLI's repeatable ``--spec``)."""
    pairs: dict[str, str | int] = {}
    for i, spec in enumerate(specs):
        key, sep, value = spec.partition("=")
        if not sep or not key.startswith(SPEC_PREFIX):
            raise RequestError(
                RequestErrorCode.INVALID_SPEC,
                f"{spec!r} is not a device spec; write hardware_resource:TYPE=COUNT, "
                "e.g. hardware_resource:NIC_VF_1G=1",
                f"/specs/{i}",
            )
        if key in pairs:
            raise RequestError(
                RequestErrorCode.INVALID_SPEC,
                f"{key} is given twice; give each type once with the total count",
                f"/specs/{i}",
            )
        pairs[key] = value
    if len(pairs) > MAX_REQUESTS:
        raise RequestError(
            RequestErrorCode.INVALID_SPEC,
            f"{len(pairs)} device specs; at most {MAX_REQUESTS} types in one request",
            "/specs",
        )
    return parse_extra_specs(pairs, pointer="/specs")


def parse_extra_specs(extra_specs: Mapping[str, str | int], pointer: str = "") -> list[DeviceRequest]:
    """A flavor's extra specs: ``hardware_resource:TYPE`` keys count; other namespaces are
    the flavor's business (``hw:cpu_policy``) and are left alone.

    A cloud sends the same few flavors again and again, so the result (immutable requests)
    is remembered per flavor; a refused one raises again each time (nothing is remembered)."""
    if len(extra_specs) > MAX_REMEMBERED_SPECS:
        return list(_parse_extra_specs(tuple(extra_specs.items()), pointer))
    return list(_remembered_specs(tuple(extra_specs.items()), pointer))


MAX_REMEMBERED_SPECS = 32  # keys: a flavor with more is parsed every time


def _parse_extra_specs(items: tuple[tuple[str, str | int], ...], pointer: str) -> tuple[DeviceRequest, ...]:
    out: list[DeviceRequest] = []
    for key, value in items:
        where = f"{pointer}/{_escape(key)}"
        namespace, _, type_name = key.partition(":")
        if namespace != SPEC_PREFIX[:-1]:
            if namespace.strip().lower().startswith("hardware"):  # " hardware_resource:" too
                raise RequestError(
                    RequestErrorCode.INVALID_SPEC,
                    f"{key!r} looks like a device spec but is misspelt; write hardware_resource:TYPE",
                    where,
                )
            continue
        if not NAME_RE.fullmatch(type_name):
            raise RequestError(
                RequestErrorCode.INVALID_SPEC,
                f"{type_name!r} in {key!r} is not a type name (letters, digits and _)",
                where,
            )
        text = str(value).strip()
        # isdigit() alone takes "²" and "٣", which int() refuses or reads as another number;
        # a count of thousands of digits is refused before int() (which refuses over 4,300).
        if not (text.isascii() and text.isdigit()) or len(text) > 6 or not 1 <= int(text) <= MAX_COUNT:
            raise RequestError(
                RequestErrorCode.INVALID_SPEC,
                f"{key}={value!r}: the count must be a whole number from 1 to {MAX_COUNT}",
                where,
            )
        out.append(DeviceRequest(type_name, (Alternative(type_name, int(text)),)))
    return tuple(out)


_remembered_specs = lru_cache(maxsize=1024)(_parse_extra_specs)


def request_from_specs(
    specs: Iterable[str],
    *,
    consumer: str | None = None,
    project: str | None = None,
    hosts: Iterable[str] = (),
) -> Request:
    """A whole ``Request`` from short-form strings (each request is named after its type)."""
    requests = parse_specs(specs)
    if not requests:
        raise RequestError(
            RequestErrorCode.NO_REQUESTS,
            "nothing requested: give at least one hardware_resource:TYPE=COUNT",
            "/specs",
        )
    hosts = tuple(dict.fromkeys(hosts))
    for i, h in enumerate(hosts):
        if not HOST_RE.fullmatch(h):
            raise RequestError(RequestErrorCode.INVALID_BODY, f"{h!r} is not a host name", f"/hosts/{i}")
    for field, problem in (
        ("consumer", consumer_problem(consumer) if consumer is not None else None),
        ("project", project_problem(project) if project is not None else None),
    ):
        if problem:
            raise RequestError(RequestErrorCode.INVALID_BODY, f"{field}: {problem}", f"/{field}")
    return Request(tuple(requests), hosts=hosts, consumer=consumer, project=project)


def canonical_attribute(name: str, pointer: str = "") -> str:
    """``numa_node`` stays, ``pcie_root`` becomes ``attributes.pcie_root``, typos are refused."""
    name = ALIASES.get(name, name)
    if name in DEVICE_FIELDS:
        return name
    head, _, rest = name.partition(".")
    if head == "attributes" and rest and all(c.isalnum() or c in "_-." for c in rest):
        return name
    raise RequestError(
        RequestErrorCode.UNKNOWN_ATTRIBUTE,
        f"{name!r} is not a device attribute; use one of {', '.join(DEVICE_FIELDS)}, "
        f"an alias ({', '.join(sorted(ALIASES))}) or attributes.NAME",
        pointer,
    )


# ---------------------------------------------------------------- helpers


def _request(body: RequestBody, pointer: str) -> DeviceRequest:
    extra = tuple(sorted(param_consumption(body.params).items()))
    alternatives = [_alternative(body, body.name, pointer, extra)]
    for j, alt in enumerate(body.first_available):
        alternatives.append(_alternative(alt, body.name, f"{pointer}/first_available/{j}", extra))
    return DeviceRequest(body.name, tuple(alternatives))


def _alternative(
    body: AlternativeBody, name: str, pointer: str, extra: tuple[tuple[str, int], ...] = ()
) -> Alternative:
    selector = None
    if body.selector is not None:
        selector = compile_selector(body.selector, f"{pointer}/selector", name)
    return Alternative(body.type, body.count, selector, extra)


def _constraint(body: ConstraintBody, names: tuple[str, ...], pointer: str) -> Constraint:
    if (body.match is None) == (body.distinct is None):
        raise RequestError(
            RequestErrorCode.INVALID_CONSTRAINT,
            'a constraint gives exactly one of match or distinct, e.g. {"requests": '
            '["gpu", "nic"], "match": "numa_node"}',
            pointer,
        )
    members = tuple(dict.fromkeys(body.requests)) if body.requests else names
    for k, member in enumerate(members):
        if member not in names:
            raise RequestError(
                RequestErrorCode.INVALID_CONSTRAINT,
                f"constraint names request {member!r}, which is not in this claim "
                f"(requests: {', '.join(names)})",
                f"{pointer}/requests/{k}",
            )
    if body.match is not None:
        return Constraint(members, canonical_attribute(body.match, f"{pointer}/match"), "match")
    assert body.distinct is not None
    attribute = canonical_attribute(body.distinct, f"{pointer}/distinct")
    return Constraint(members, attribute, "distinct")


def _from_validation(exc: ValidationError) -> RequestError:
    first = exc.errors()[0]
    pointer = "".join(f"/{_escape(str(p))}" for p in first["loc"])
    field_name = ".".join(str(p) for p in first["loc"]) or "body"
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field; check the spelling (see /openapi.json)"
    elif first["type"] == "string_pattern_mismatch":
        message = "names are 1-64 characters of letters, digits and _"
    return RequestError(RequestErrorCode.INVALID_BODY, f"{field_name}: {message}", pointer)


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")
