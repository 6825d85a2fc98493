"""Query integers beyond 64 bits (``offset``, ``before``) were a 500 (OverflowError on
SQLite, "bigint out of range" on PostgreSQL), on the API and on the dashboard; now a 400."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient


@pytest.mark.parametrize(
    "path",
    [
        "/v1/devices?offset=9223372036854775808",
        "/v1/devices?offset=100000000000000000000",
        "/v1/events?before=9223372036854775808",
        "/v1/events?before=-99999999999999999999",
    ],
)
def test_huge_query_integers_are_400(api: TestClient, path: str) -> None:
    r = api.get(path)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request"
    assert ("offset" in err["message"] or "before" in err["message"]) and "than" in err["message"]


def test_largest_query_integers_answer(api: TestClient) -> None:
    assert api.get("/v1/devices", params={"offset": 2**63 - 1}).json() == []
    assert api.get("/v1/events", params={"before": 2**63 - 1}).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/ui/events?before=9223372036854775808",
        "/ui/events?before=-1",
        "/ui/devices?offset=99999999999999999999",
    ],
)
def test_huge_query_integers_on_the_dashboard_are_400_pages(api: TestClient, path: str) -> None:
    r = api.get(path)
    assert r.status_code == 400, r.text
    assert "bad query" in r.text
