"""Capacity a page of candidate hosts at a time: the pages of a walk add up to the answer for
the whole cloud, each page reads only its own hosts, and a region too large for one answer
can still be counted."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from devassign import schemas
from devassign.domain import Role
from devassign.server.placement import PlacementConfig, Placer
from devassign.store import Store
from tests.conftest import Clock, vf

NIC = "hardware_resource:NIC_VF_1G=2"


def _report(api: TestClient, host: str, devices: list[dict[str, Any]], headers: dict[str, str]) -> None:
    r = api.put(f"/v1/hosts/{host}/inventory", json={"generation": 1, "devices": devices}, headers=headers)
    assert r.status_code == 200 and not r.json()["refused"], r.text


def _vfs(n: int, type_: str = "NIC_VF_1G") -> list[dict[str, Any]]:
    return [vf(f"0000:3b:02.{i}", type=type_) for i in range(n)]


@pytest.fixture
def who(store: Store) -> dict[str, dict[str, str]]:
    def token(role: Role, **scope: str) -> dict[str, str]:
        secret = store.create_token(schemas.TokenCreate(role=role, **scope), "test").token
        return {"Authorization": f"Bearer {secret}"}

    return {"admin": token(Role.ADMIN), "member": token(Role.MEMBER, project="p1")}


@pytest.fixture
def cloud(secure_api: TestClient, who: dict[str, dict[str, str]], clock: Clock) -> TestClient:
    """Nine hosts: NIC VFs in varied numbers (one with too few to be a candidate), GPUs on
    some, one host down, one whose VFs' PF is held by a claim (a candidate by its counts that
    holds nothing)."""
    admin = who["admin"]
    for t in ("NIC_VF_1G", "NIC_PF", "GPU"):
        assert secure_api.post("/v1/resource-types", json={"name": t}, headers=admin).status_code == 201
    _report(secure_api, "gone", _vfs(8), admin)
    clock.advance(120)  # "gone" is down from now on
    for i, n in enumerate((5, 2, 1, 7, 4, 3)):
        gpus = [vf(f"0000:af:00.{g}", type="GPU", kind="pci", parent=None) for g in range(i % 3)]
        _report(secure_api, f"c{i}", _vfs(n) + gpus, admin)
    pf = vf("0000:3b:00.0", type="NIC_PF", kind="sriov_pf", parent=None)
    _report(secure_api, "held-pf", [pf, *_vfs(6)], admin)
    claim = {"consumer": "vm-pf", "hosts": ["held-pf"], "extra_specs": {"hardware_resource:NIC_PF": "1"}}
    assert secure_api.post("/v1/claims", json=claim, headers=admin).status_code == 201
    return secure_api


def _walk(
    api: TestClient, headers: dict[str, str], limit: int, **query: Any
) -> tuple[list[dict[str, Any]], int]:
    """Every page of a walk: the answers, and how many calls it took."""
    pages: list[dict[str, Any]] = []
    after: str | None = None
    for _ in range(100):
        params = {**query, "limit": limit, **({"after": after} if after else {})}
        r = api.get("/v1/capacity", params=params, headers=headers)
        assert r.status_code == 200, r.text
        pages.append(r.json())
        after = r.json()["next"]
        if after is None:
            return pages, len(pages)
    raise AssertionError("the walk never ended")


@pytest.mark.parametrize("spec", [NIC, [NIC, "hardware_resource:GPU=1"], "hardware_resource:NIC_VF_1G=1"])
@pytest.mark.parametrize("limit", [1, 2, 3, 1000])
def test_the_pages_add_up_to_the_whole_answer(
    cloud: TestClient, who: dict[str, dict[str, str]], spec: str | list[str], limit: int
) -> None:
    whole = cloud.get("/v1/capacity", params={"spec": spec}, headers=who["admin"])
    assert whole.status_code == 200, whole.text
    assert "next" not in whole.json()  # no page asked for, none answered
    pages, calls = _walk(cloud, who["admin"], limit, spec=spec)
    per_host: dict[str, int] = {}
    for page in pages:
        assert len(page["per_host"]) <= limit
        assert not set(page["per_host"]) & set(per_host), "a host counted on two pages"
        per_host.update(page["per_host"])
    assert per_host == whole.json()["per_host"]
    assert sum(p["total"] for p in pages) == whole.json()["total"]
    assert "gone" not in per_host and per_host.get("held-pf", 0) == 0
    assert calls <= len(per_host) // limit + 1


Who = dict[str, dict[str, str]]


def test_a_page_stops_before_it_reads_too_many_devices(cloud: TestClient, who: Who) -> None:
    """With room for 8 devices a call, every page holds one host or two small ones, and the
    walk still counts every host once."""
    placer: Placer = cloud.app.state.placer  # type: ignore[attr-defined]
    whole = cloud.get("/v1/capacity", params={"spec": NIC}, headers=who["admin"]).json()
    placer.config = PlacementConfig(max_devices=8)
    pages, _ = _walk(cloud, who["admin"], 1000, spec=NIC)
    assert len(pages) > 1
    merged = {h: n for p in pages for h, n in p["per_host"].items()}
    assert merged == whole["per_host"]


def test_a_cloud_too_large_for_one_answer_is_counted_page_by_page(
    cloud: TestClient, who: dict[str, dict[str, str]]
) -> None:
    placer: Placer = cloud.app.state.placer  # type: ignore[attr-defined]
    whole = cloud.get("/v1/capacity", params={"spec": NIC}, headers=who["admin"]).json()
    placer.config = PlacementConfig(max_hosts=2)
    r = cloud.get("/v1/capacity", params={"spec": NIC}, headers=who["member"])
    assert r.status_code == 400 and "page through them (limit=" in r.json()["error"]["message"]
    pages, _ = _walk(cloud, who["member"], 2, spec=NIC)
    assert sum(p["total"] for p in pages) == whole["total"]
    assert all("per_host" not in p for p in pages)  # members learn totals, not hosts


def test_post_pages_like_get(cloud: TestClient, who: dict[str, dict[str, str]]) -> None:
    body = {"requests": [{"name": "nic", "type": "NIC_VF_1G", "count": 2}]}
    first = cloud.post("/v1/capacity", params={"limit": 2}, json=body, headers=who["admin"])
    assert first.status_code == 200, first.text
    page = cloud.get("/v1/capacity", params={"spec": NIC, "limit": 2}, headers=who["admin"]).json()
    assert first.json() == page and page["next"] is not None
    after = cloud.post(
        "/v1/capacity", params={"limit": 2, "after": page["next"]}, json=body, headers=who["admin"]
    ).json()
    assert not set(after["per_host"]) & set(page["per_host"])


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ({"after": "3"}, "give limit= too"),
        ({"limit": 2, "after": "c1"}, "is not a cursor"),
        ({"limit": 2, "after": "-1"}, "is not a cursor"),
        ({"limit": 2, "after": "\u0663"}, "is not a cursor"),  # a digit, not an ASCII one
        ({"limit": 2, "host": "c1"}, "the hosts named or a page"),
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"limit": 2, "after": "9" * 21}, "after"),
    ],
)
def test_bad_pages_are_refused_with_what_to_fix(
    cloud: TestClient, who: dict[str, dict[str, str]], query: dict[str, Any], says: str
) -> None:
    r = cloud.get("/v1/capacity", params={"spec": NIC, **query}, headers=who["admin"])
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_request" and says in r.json()["error"]["message"]


def test_a_cursor_past_every_host_is_an_empty_last_page(cloud: TestClient, who: Who) -> None:
    r = cloud.get("/v1/capacity", params={"spec": NIC, "limit": 5, "after": "9" * 20}, headers=who["admin"])
    assert r.status_code == 200, r.text
    assert r.json()["total"] == 0 and r.json()["per_host"] == {} and r.json()["next"] is None


def test_a_members_pages_are_no_per_host_split(cloud: TestClient, who: Who) -> None:
    """Pages of one host each told a member each host's capacity in turn (and the hosts' ids
    by the cursors): a member's page counts at least a thousand hosts, here all of them."""
    whole = cloud.get("/v1/capacity", params={"spec": NIC}, headers=who["admin"]).json()
    pages, calls = _walk(cloud, who["member"], 1, spec=NIC)
    assert calls == 1 and pages[0]["total"] == whole["total"] and pages[0]["next"] is None
    r = cloud.post(
        "/v1/capacity",
        params={"limit": 1},
        json={"extra_specs": {"hardware_resource:NIC_VF_1G": "2"}},
        headers=who["member"],
    )
    assert r.status_code == 200 and r.json()["total"] == whole["total"] and r.json()["next"] is None


def test_a_member_walks_only_the_cursors_it_was_given(cloud: TestClient, who: Who) -> None:
    """A member's cursor was a host id of its choosing: the totals after two neighbouring ids
    differed by one host's capacity, each host's in turn. A member's cursor is now signed for
    its request; one it made up, or one given for another request, is refused."""
    placer: Placer = cloud.app.state.placer  # type: ignore[attr-defined]
    whole = cloud.get("/v1/capacity", params={"spec": NIC}, headers=who["admin"]).json()
    placer.config = PlacementConfig(max_devices=8)  # a page of one or two hosts
    pages, calls = _walk(cloud, who["member"], 2, spec=NIC)
    assert calls > 1 and sum(p["total"] for p in pages) == whole["total"]
    given = pages[0]["next"]
    host_id, _, signature = given.partition(".")
    assert host_id.isdigit() and len(signature) == 32

    def member(after: str, spec: str | list[str] = NIC) -> Any:
        return cloud.get(
            "/v1/capacity", params={"spec": spec, "limit": 2, "after": after}, headers=who["member"]
        )

    assert member(given).status_code == 200
    for forged in (
        host_id,
        str(int(host_id) + 1),
        f"{int(host_id) + 1}.{signature}",
        f"{host_id}.{'0' * 32}",
    ):
        r = member(forged)
        assert r.status_code == 400, (forged, r.text)
        assert r.json()["error"]["code"] == "invalid_request" and "not a cursor this server gave" in r.text
    assert member(given, spec="hardware_resource:NIC_VF_1G=1").status_code == 400  # another request's
    # An operator's cursor stays a plain host id: an admin may start anywhere.
    r = cloud.get("/v1/capacity", params={"spec": NIC, "limit": 2, "after": host_id}, headers=who["admin"])
    assert r.status_code == 200 and "." not in (r.json()["next"] or "")
