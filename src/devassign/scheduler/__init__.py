"""The pure scheduler: a request and a read-only snapshot in, a ranked choice out.

Start at ``pipeline.schedule`` (and README.md in this folder). Nothing here touches a
database: the store builds the ``Snapshot`` and persists the claim.

The names below are loaded on first use, not with the package: the CLI reads a phrase or two
from :mod:`~devassign.scheduler.reasons`, and importing the whole scheduler (the CEL library
among it) made every ``devassign`` command start a tenth of a second slower. ``fit`` and
``capacity`` are also submodules' names, so their functions are imported from the submodules
(``from devassign.scheduler.fit import fit``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from devassign.scheduler.capacity import Capacity
    from devassign.scheduler.errors import RequestError, RequestErrorCode
    from devassign.scheduler.fit import Chosen, FitResult
    from devassign.scheduler.pipeline import (
        Decision,
        Explanation,
        HostVerdict,
        Placement,
        claim_order,
        explain,
        schedule,
    )
    from devassign.scheduler.quota import Quota, QuotaExcess, QuotaVerdict, check_quota
    from devassign.scheduler.reasons import Reason, ReasonCode
    from devassign.scheduler.request import (
        Alternative,
        ClaimBody,
        Constraint,
        DeviceRequest,
        Request,
        parse_claim,
        parse_extra_specs,
        parse_specs,
        request_from_specs,
    )
    from devassign.scheduler.scorers import Policy
    from devassign.scheduler.selector import Selector, compile_selector
    from devassign.scheduler.view import DeviceView, HostView, Snapshot

# Each name this package offers, and the submodule that defines it.
_WHERE = {
    "Capacity": "capacity",
    "RequestError": "errors",
    "RequestErrorCode": "errors",
    "Chosen": "fit",
    "FitResult": "fit",
    "Decision": "pipeline",
    "Explanation": "pipeline",
    "HostVerdict": "pipeline",
    "Placement": "pipeline",
    "claim_order": "pipeline",
    "explain": "pipeline",
    "schedule": "pipeline",
    "Quota": "quota",
    "QuotaExcess": "quota",
    "QuotaVerdict": "quota",
    "check_quota": "quota",
    "Reason": "reasons",
    "ReasonCode": "reasons",
    "Alternative": "request",
    "ClaimBody": "request",
    "Constraint": "request",
    "DeviceRequest": "request",
    "Request": "request",
    "parse_claim": "request",
    "parse_extra_specs": "request",
    "parse_specs": "request",
    "request_from_specs": "request",
    "Policy": "scorers",
    "Selector": "selector",
    "compile_selector": "selector",
    "DeviceView": "view",
    "HostView": "view",
    "Snapshot": "view",
}

__all__ = [
    "Alternative",
    "Capacity",
    "Chosen",
    "ClaimBody",
    "Constraint",
    "Decision",
    "DeviceRequest",
    "DeviceView",
    "Explanation",
    "FitResult",
    "HostVerdict",
    "HostView",
    "Placement",
    "Policy",
    "Quota",
    "QuotaExcess",
    "QuotaVerdict",
    "Reason",
    "ReasonCode",
    "Request",
    "RequestError",
    "RequestErrorCode",
    "Selector",
    "Snapshot",
    "check_quota",
    "claim_order",
    "compile_selector",
    "explain",
    "parse_claim",
    "parse_extra_specs",
    "parse_specs",
    "request_from_specs",
    "schedule",
]


def __getattr__(name: str) -> Any:
    """Load a name from its submodule the first time it is asked for."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
