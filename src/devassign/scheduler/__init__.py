"""The pure scheduler: a request and a read-only snapshot in, a ranked choice out.

Start at ``pipeline.schedule`` (and README.md in this folder). Nothing here touches a
database: the store builds the ``Snapshot`` and persists the claim.
"""

from __future__ import annotations

from devassign.scheduler.capacity import Capacity, capacity
from devassign.scheduler.errors import RequestError, RequestErrorCode
from devassign.scheduler.fit import Chosen, FitResult, fit
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
    "capacity",
    "check_quota",
    "claim_order",
    "compile_selector",
    "explain",
    "fit",
    "parse_claim",
    "parse_extra_specs",
    "parse_specs",
    "request_from_specs",
    "schedule",
]
