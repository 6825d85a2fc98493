"""``PUT /v1/quotas/{project}/{type}`` with a limit beyond the INTEGER column (2**31 - 1) or a
project name longer than the column (64) was a 500 on PostgreSQL (and an OverflowError on
SQLite past 2**63); now a 400, and no quota is set."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient


@pytest.mark.parametrize(
    ("path", "limit", "fragment"),
    [
        ("/v1/quotas/p1/GPU", 2**31, "limit"),
        ("/v1/quotas/p1/GPU", 2**63, "limit"),
        ("/v1/quotas/p1/GPU", 2**70, "limit"),
        ("/v1/quotas/" + "p" * 65 + "/GPU", 1, "1-64 characters"),
    ],
)
def test_out_of_range_quota_is_400(api: TestClient, path: str, limit: int, fragment: str) -> None:
    assert api.post("/v1/resource-types", json={"name": "GPU"}).status_code == 201
    r = api.put(path, json={"limit": limit})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request" and fragment in err["message"], err["message"]
    assert api.get("/v1/quotas").json() == []


def test_largest_quota_is_taken(api: TestClient) -> None:
    assert api.post("/v1/resource-types", json={"name": "GPU"}).status_code == 201
    assert api.put("/v1/quotas/" + "p" * 64 + "/GPU", json={"limit": 2**31 - 1}).status_code == 204
    assert [q["limit"] for q in api.get("/v1/quotas").json()] == [2**31 - 1]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/quotas?project=" + "p" * 65,
        "/v1/quotas?project=-p",
        "/v1/allocations?project=a%20b",
    ],
)
def test_a_filter_that_cannot_be_a_project_is_400_not_an_empty_list(api: TestClient, path: str) -> None:
    """An empty list would read as "that project has none", when the name was mistyped."""
    r = api.get(path)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request" and "project" in err["message"], err["message"]
