"""The fit's search on hosts with very many classes of devices: a host of a thousand GPUs that
each differ in a constrained attribute (a serial, a per-device memory size) made every
cloud-wide request with that constraint a 500 (the search called itself once per class and
went past Python's recursion limit), for every tenant, until the host went away."""

from __future__ import annotations

import sys

from devassign.scheduler import DeviceView, HostView
from devassign.scheduler.fit import fit
from devassign.scheduler.reasons import ReasonCode
from tests.unit.scheduler.helpers import one, req


def _distinct_gpus(n: int) -> HostView:
    devices = tuple(
        DeviceView(
            id=f"0000:{0x10 + i // 32:02x}:{i % 32:02x}.0",
            address=f"0000:{0x10 + i // 32:02x}:{i % 32:02x}.0",
            kind="pci",
            type="GPU",
            numa_node=0,
            iommu_group=i,
            attributes={"memory_mib": 1000 + i},
        )
        for i in range(n)
    )
    return HostView("big", devices, True)


def test_a_thousand_distinct_devices_and_an_unmet_match_is_a_reason_not_a_crash() -> None:
    host = _distinct_gpus(1_500)
    request = req(
        one("GPU", name="g"),
        one("GPU", name="h"),
        constraints=[{"requests": ["g", "h"], "match": "attributes.memory_mib"}],
    )
    result = fit(host, request)
    assert result.chosen is None and result.reason is not None
    assert result.reason.code == ReasonCode.CONSTRAINT_UNSATISFIED, result.reason


def test_a_thousand_distinct_devices_still_fit_a_request_they_can_hold() -> None:
    host = _distinct_gpus(1_500)
    request = req(one("GPU", 2, name="g"), constraints=[{"requests": ["g"], "distinct": "address"}])
    result = fit(host, request)
    assert result.chosen is not None


def test_a_search_deeper_than_python_allows_is_out_of_steps_not_an_error() -> None:
    """Requests of many devices on distinct addresses: one call per device taken, here past a
    recursion limit lowered for the test (thirty-two requests of 256 go past the default);
    the host is reported as too large a search."""
    host = _distinct_gpus(700)
    request = req(
        *(one("GPU", 150, name=f"r{i}") for i in range(4)),
        constraints=[{"requests": [f"r{i}" for i in range(4)], "distinct": "address"}],
    )
    assert fit(host, request, budget=100_000).chosen is not None  # within the default limit
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(400)
    try:
        result = fit(host, request, budget=100_000)
    finally:
        sys.setrecursionlimit(limit)
    assert result.chosen is None and result.reason is not None
    assert result.reason.code == ReasonCode.SEARCH_BUDGET_EXHAUSTED
