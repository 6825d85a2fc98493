"""A claim's request params, checked against the params its types declare.

The handlers on the hosts run as root and read a request's params, so a type accepts only the
params it declares (``schemas.ParamSpec``): an undeclared name (a fact such as ``mdev_uuid``),
a value of the wrong kind or out of bounds, or one the project may not use is refused before
anything is claimed. Pure: the declarations come with the claim's first read (the types' rows),
so the check costs no round trip, and a claim without params skips it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from devassign.scheduler.errors import RequestError, RequestErrorCode
from devassign.scheduler.request import ClaimBody
from devassign.schemas import FACT_NAMES, ParamSpec

# Each type's declared params as the store holds them (decoded JSON); ``None``: none declared.
Declared = Mapping[str, Mapping[str, Any] | None]


def has_params(body: ClaimBody) -> bool:
    return any(r.params for r in body.requests)


def request_doc(body: ClaimBody, declared: Declared, project: str | None) -> dict[str, Any]:
    """The claim as it is stored (``body`` as JSON), each request's params checked against every
    type the request may get (its own, then its ``first_available`` ones) and normalised.

    Raises ``RequestError`` naming the request and the param, and what is accepted instead.
    """
    doc = body.model_dump(mode="json", exclude_none=True)
    if not has_params(body):
        return doc
    for i, r in enumerate(body.requests):
        if not r.params:
            continue
        types = list(dict.fromkeys([r.type, *(a.type for a in r.first_available)]))
        doc["requests"][i]["params"] = {
            name: _checked(name, value, types, declared, project, f"requests/{i} ({r.name})", i)
            for name, value in r.params.items()
        }
    return doc


def _checked(
    name: str, value: Any, types: list[str], declared: Declared, project: str | None, where: str, i: int
) -> Any:
    pointer = f"/requests/{i}/params/{name.replace('~', '~0').replace('/', '~1')}"

    def refuse(message: str) -> RequestError:
        return RequestError(RequestErrorCode.INVALID_BODY, f"{where}: {message}", pointer)

    if name in FACT_NAMES:
        raise refuse(
            f"param {name!r} is recorded by the agent when it sets a device up; a request cannot supply it"
        )
    for type_name in types:
        specs = declared.get(type_name) or {}
        raw = specs.get(name) if isinstance(specs, Mapping) else None
        if raw is None:
            accepted = ", ".join(sorted(specs)) if isinstance(specs, Mapping) else ""
            raise refuse(
                f"type {type_name} accepts no param {name!r}; "
                + (f"it accepts {accepted}" if accepted else "it accepts no params")
            )
        spec = _spec(json.dumps(raw, sort_keys=True))
        if isinstance(spec, str):
            raise refuse(f"type {type_name} declares param {name!r} in a form no longer valid ({spec})")
        value, expected = spec.check(value)
        if expected is not None:
            raise refuse(f"param {name!r} of type {type_name} is {expected}, not {json.dumps(value)}")
        permitted = spec.permitted(project)
        if permitted is not None and not any(type(v) is type(value) and v == value for v in permitted):
            values = ", ".join(json.dumps(v) for v in permitted) or "none"
            raise refuse(
                f"param {name!r} of type {type_name}: {json.dumps(value)} is not allowed for project "
                f"{project}; allowed: {values}"
            )
    return value


@functools.lru_cache(maxsize=1024)
def _spec(text: str) -> ParamSpec | str:
    """A stored declaration, parsed once per distinct text (an error message if it is invalid)."""
    try:
        return ParamSpec.model_validate_json(text)
    except ValidationError as exc:
        return str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
