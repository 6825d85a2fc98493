"""A short fuzzing run in the default test run: a few hundred schemathesis cases as an admin, a
member and an agent (stateless, stateful and hostile bodies), with a fixed seed. Any 5xx, any
response the OpenAPI document does not describe, any error without the stable error body and
any hostile body that is not refused with a 4xx fails it. The full run is
``python -m tests.fuzz`` (docs/reliability.md)."""

from __future__ import annotations

import pytest

from devassign.domain import Role
from devassign.server import views
from tests.fuzz.harness import run

SEED = 20260101


def test_a_short_fuzzing_run_finds_nothing() -> None:
    report = run(cases=300, db="sqlite", seed=SEED)
    assert report.total >= 300
    assert set(report.cases) == {"admin", "member", "agent"}
    for role, phases in report.cases.items():
        assert {"stateless", "stateful", "hostile"} <= set(phases), (role, phases)
    assert report.server_errors == 0 and not report.failures, report.text()


def test_the_harness_reports_a_route_that_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness is not blind: a route that raises is a 5xx in the report."""

    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("a bug planted by the test")

    monkeypatch.setattr(views, "list_types", broken)
    report = run(cases=60, db="sqlite", seed=SEED, roles=(Role.ADMIN,))
    assert report.server_errors > 0
    assert any(f.operation == "GET /v1/resource-types" for f in report.failures.values()), report.text()
