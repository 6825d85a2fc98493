"""A resource type's optional attribute schema: a JSON Schema its devices' attributes meet.

An operator declares what a type's devices must say of themselves (``memory_mib`` an integer,
``physical_network`` one of two names); the schema is checked when the type is created, and a
reported device of the type whose attributes do not meet it is refused, visibly, like a device
of an unknown type. Schemas are self-contained: a ``$ref`` outside the schema is refused, so
checking one never makes the server fetch anything. Patterns run on a regex engine with a
backtracking limit, so a schema's pattern cannot stall the server on an agent's value.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

# A refusal's message at most this long: a schema error can quote a large value.
_MESSAGE_MAX = 300


def _no_remote(uri: str) -> Any:
    raise ValueError(f"{uri}: an attribute schema must be self-contained (no $ref outside it)")


@lru_cache(maxsize=256)
def _validator(text: str) -> Any:
    import jsonschema_rs  # only where a type has a schema: its import costs every command 30-80 ms

    return jsonschema_rs.validator_for(json.loads(text), retriever=_no_remote)


def _key(schema: dict[str, Any]) -> str:
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


def _short(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "invalid"
    return line if len(line) <= _MESSAGE_MAX else line[: _MESSAGE_MAX - 3] + "..."


def schema_problem(schema: dict[str, Any]) -> str | None:
    """Why ``schema`` is not a usable JSON Schema, or ``None``."""
    import jsonschema_rs

    try:
        jsonschema_rs.meta.validate(schema)
        _validator(_key(schema))
    except jsonschema_rs.ValidationError as exc:
        return _short(exc.message)
    except (jsonschema_rs.ReferencingError, ValueError) as exc:
        return _short(str(exc))
    return None


def attributes_problem(schema: dict[str, Any], attributes: dict[str, Any]) -> str | None:
    """How ``attributes`` fail ``schema`` (its first error, where), or ``None`` when they meet it."""
    import jsonschema_rs

    try:
        errors = _validator(_key(schema)).iter_errors(attributes)
        first = next(iter(errors), None)
    except (jsonschema_rs.ReferencingError, ValueError) as exc:  # a schema stored before the checks
        return _short(str(exc))
    if first is None:
        return None
    where = "/".join(str(p) for p in first.instance_path)
    return _short(f"{first.message}" + (f" (at attributes/{where})" if where else ""))
