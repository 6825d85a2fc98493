"""Nova extra-spec validators for the ``hardware_resource`` namespace.

Nova's API checks a flavor's extra specs when they are set, through validators that packages
declare in the ``nova.api.extra_spec_validators`` entry-point group: a module whose
``register()`` returns ``ExtraSpecValidator`` objects. Once devassign is installed next to
nova-api, ``openstack flavor set --property hardware_resource:GPU_A100=two`` is refused there
and then, instead of failing every boot of the flavor later; so is a misspelt namespace such
as ``hardware_resources:GPU_A100``, which Nova would otherwise keep and devassign ignore.
"""

from __future__ import annotations

from typing import Any

from devassign.domain import NAME_RE

NAMESPACE = "hardware_resource"
# A count from 1 to 256 in plain digits, as devassign's requests take it (docs/requests.md).
COUNT_PATTERN = r"([1-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-6])"
TYPE_PATTERN = NAME_RE.pattern.removeprefix("^").removesuffix("$")
# Namespaces that start like ours but are not it: refused as misspellings, as devassign does.
# No ":" inside: Nova takes what comes before the first ":" of a name pattern as its namespace.
MISSPELT_PATTERN = r"[Hh][Aa][Rr][Dd][Ww][Aa][Rr][Ee](?!(?<=hardware)_resource\b)[A-Za-z0-9_.-]*"


def register() -> list[Any]:
    """The validators, for Nova's ``nova.api.extra_spec_validators`` entry point."""
    from nova import exception  # type: ignore[import-not-found, unused-ignore]
    from nova.api.validation.extra_specs import base  # type: ignore[import-not-found, unused-ignore]

    class MisspeltValidator(base.ExtraSpecValidator):  # type: ignore[misc]
        """Matches any ``hardware...:`` key that is not ``hardware_resource:`` and refuses it."""

        def validate(self, name: str, value: str) -> None:
            raise exception.ValidationError(
                f"Validation failed; {name!r} looks like a devassign device spec but is misspelt; "
                f"write {NAMESPACE}:TYPE=COUNT, e.g. {NAMESPACE}:NIC_VF_1G=1."
            )

    return [
        base.ExtraSpecValidator(
            name=f"{NAMESPACE}:{{type}}",
            description=(
                "How many devices of the devassign resource type {type} the instance gets "
                "(1-256), assigned directly through devassign."
            ),
            value={"type": str, "pattern": COUNT_PATTERN, "description": "a count from 1 to 256"},
            parameters=[
                {
                    "name": "type",
                    "pattern": TYPE_PATTERN,
                    "description": "a devassign resource type: 1-64 letters, digits and _",
                }
            ],
        ),
        MisspeltValidator(
            name="{namespace}:{rest}",
            description="A misspelling of the hardware_resource namespace: always refused.",
            value={"type": str},
            parameters=[
                {"name": "namespace", "pattern": MISSPELT_PATTERN},
                {"name": "rest", "pattern": r".*"},
            ],
        ),
    ]
