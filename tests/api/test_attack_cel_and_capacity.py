"""A hostile member attacks with costly CEL selectors and a cloud with one huge host.

Each attack once held the server: four nested comprehensions blocked every request for
23-42 s, nested maps took minutes and a gigabyte, and capacity on a 20,000-device host took
a minute of CPU. Now the selectors are refused before anything evaluates them, and capacity
works per class of identical devices. No timing is asserted: work is counted instead
(``bench/capacity.py`` has the figures).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings

from devassign import schemas
from devassign.domain import Role
from devassign.scheduler import ClaimBody, HostView, Request, Snapshot
from devassign.scheduler import selector as selector_module
from devassign.scheduler.budget import current
from devassign.scheduler.capacity import capacity
from devassign.scheduler.fit import fit
from devassign.scheduler.view import HostView as View
from devassign.server.placement import PlacementConfig, Placer
from devassign.store import Principal, Store
from devassign.store.claims import ClaimOrder, LostRace
from tests.conftest import vf
from tests.unit.scheduler.test_properties import hosts, requests

pytestmark = pytest.mark.slow  # most tests load a 20,000-VF host; 300 hypothesis examples

ZEROS = "[" + ",".join(["0"] * 100) + "]"
FOUR_ALLS = f"{ZEROS}.all(a, {ZEROS}.all(b, {ZEROS}.all(c, {ZEROS}.all(d, true))))"
NESTED_MAPS = f"size({ZEROS}.map(a, {ZEROS}.map(b, {ZEROS}.map(c, {ZEROS}.map(d, {ZEROS}.map(e, d)))))) > 0"
TAGS = ("fast", "slow", "gold", "lead")
BIG = 20_000


def _token(store: Store, role: Role, **scope: str) -> dict[str, str]:
    secret = store.create_token(schemas.TokenCreate(role=role, **scope), "test").token
    return {"Authorization": f"Bearer {secret}"}


def _address(i: int) -> str:
    return f"0000:{0x10 + i // 256:02x}:{(i // 8) % 32:02x}.{i % 8}"


def _vf(i: int, tags: list[str]) -> dict[str, Any]:
    """A VF of a PF that is not reported (on a bus below every VF's)."""
    return vf(_address(i), parent="0000:0f:00.0", attributes={"tags": tags})


@pytest.fixture
def cloud(secure_api: TestClient, store: Store) -> dict[str, dict[str, str]]:
    """One host with 20,000 VFs (the report's limit) in four attribute shapes; tokens."""
    who = {"admin": _token(store, Role.ADMIN), "member": _token(store, Role.MEMBER, project="p1")}
    r = secure_api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}, headers=who["admin"])
    assert r.status_code == 201, r.text
    devices = [_vf(i, [TAGS[i % 4], "x"]) for i in range(BIG)]
    r = secure_api.put(
        "/v1/hosts/huge/inventory", json={"generation": 1, "devices": devices}, headers=who["admin"]
    )
    assert r.status_code == 200 and r.json()["accepted"] == BIG, r.text[:300]
    return who


@pytest.fixture
def evaluations(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many times the ``cel`` library evaluates a selector (the shared cache emptied)."""
    calls = [0]
    real = selector_module.evaluate

    def counting(selector: Any, value: dict[str, Any]) -> bool:
        calls[0] += 1
        return real(selector, value)

    monkeypatch.setattr(selector_module, "_RESULTS", {})
    monkeypatch.setattr(selector_module, "evaluate", counting)
    yield calls


def _claim(selector: str, **extra: Any) -> dict[str, Any]:
    return {
        "consumer": "c-1",
        "requests": [{"name": "nic", "type": "NIC_VF_1G", "selector": selector}],
        **extra,
    }


# ---------------------------------------------------------------- costly selectors


@pytest.mark.parametrize(
    ("selector", "limit"),
    [
        (FOUR_ALLS, "nest 4 deep, at most 2"),
        (NESTED_MAPS, "nest 5 deep, at most 2"),
        ("(" * 5000 + "true" + ")" * 5000, "at most 2048"),
        ("(" * 1000 + "true" + ")" * 1000, "more than 32 deep"),
        ("!" * 2000 + "true", "more than 32 deep"),
    ],
    ids=["four-alls", "nested-maps", "5000-parens", "1000-parens", "2000-nots"],
)
def test_a_costly_selector_is_a_400_before_any_evaluation(
    secure_api: TestClient,
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    selector: str,
    limit: str,
) -> None:
    member = _token(store, Role.MEMBER, project="p1")
    selector_module._compile.cache_clear()
    monkeypatch.setattr(selector_module, "cel", None)  # any use of the library would be a 500
    for path in ("/v1/claims", "/v1/explain"):
        r = secure_api.post(path, json=_claim(selector), headers=member)
        assert r.status_code == 400, r.text[:300]
        err = r.json()["error"]
        assert err["code"] == "invalid_selector" and limit in err["message"], err
    selector_module._compile.cache_clear()
    assert secure_api.get("/healthz").status_code == 200


def test_selectors_evaluate_once_per_class_not_per_device(
    secure_api: TestClient, cloud: dict[str, dict[str, str]], evaluations: list[int]
) -> None:
    body = _claim("device.attributes.tags.exists(t, t == 'fast')")
    r = secure_api.post("/v1/explain", json=body, headers=cloud["member"])
    assert r.status_code == 200 and r.json()["fits"], r.text[:300]
    assert evaluations[0] == len(TAGS)  # four shapes of device, 20,000 devices
    r = secure_api.post("/v1/claims", json=body, headers=cloud["member"])
    assert r.status_code == 201, r.text[:300]
    assert evaluations[0] == len(TAGS)  # the claim found them all known


# ---------------------------------------------------------------- capacity


def test_capacity_of_a_huge_host_is_right(
    secure_api: TestClient,
    cloud: dict[str, dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Capacity never rebuilds the host per instance (that was quadratic)."""

    def rebuilt(*_: object) -> None:
        raise AssertionError("capacity rebuilt the host")

    monkeypatch.setattr(View, "with_held", rebuilt)
    for count, total, truncated in ((80, 250, False), (1, 256, True), (256, 78, False)):
        params = {"spec": f"hardware_resource:NIC_VF_1G={count}"}
        r = secure_api.get("/v1/capacity", params=params, headers=cloud["admin"])
        assert r.status_code == 200, r.text[:300]
        assert r.json() == {"total": total, "per_host": {"huge": total}, "truncated": truncated}
        r = secure_api.get("/v1/capacity", params=params, headers=cloud["member"])
        assert r.json() == {"total": total, "truncated": truncated}


def test_capacity_with_a_selector_evaluates_per_class(
    secure_api: TestClient, cloud: dict[str, dict[str, str]], evaluations: list[int]
) -> None:
    placer: Placer = secure_api.app.state.placer  # type: ignore[attr-defined]
    body = ClaimBody.model_validate(
        {
            "requests": [
                {
                    "name": "nic",
                    "type": "NIC_VF_1G",
                    "count": 25,
                    "selector": "'gold' in device.attributes.tags",
                }
            ]
        }
    )
    admin = Principal(name="admin", role=Role.ADMIN)
    assert placer.capacity(body, admin) == {"total": 200, "per_host": {"huge": 200}, "truncated": False}
    assert evaluations[0] == len(TAGS)


def test_reading_too_many_devices_is_a_400_that_says_how_to_narrow(
    secure_api: TestClient, cloud: dict[str, dict[str, str]]
) -> None:
    placer: Placer = secure_api.app.state.placer  # type: ignore[attr-defined]
    placer.config = PlacementConfig(max_devices=10_000)
    spec = {"spec": "hardware_resource:NIC_VF_1G=1"}
    r = secure_api.get("/v1/capacity", params=spec, headers=cloud["member"])
    assert r.status_code == 400, r.text
    assert "10,000 devices per call" in r.json()["error"]["message"]
    assert "host=" in r.json()["error"]["message"]
    r = secure_api.get("/v1/capacity", params={**spec, "host": "huge"}, headers=cloud["admin"])
    assert r.status_code == 400
    assert "20,000 devices on the 1 hosts named, at most 10,000" in r.json()["error"]["message"]
    r = secure_api.post("/v1/explain", json=_claim("true", hosts=["huge"]), headers=cloud["admin"])
    assert r.status_code == 400 and "name fewer hosts (hosts, admins)" in r.json()["error"]["message"]


def test_capacity_limits_hosts(secure_api: TestClient, cloud: dict[str, dict[str, str]]) -> None:
    placer: Placer = secure_api.app.state.placer  # type: ignore[attr-defined]
    small = [vf("0000:3b:02.1")]
    for name in ("small-a", "small-b"):
        r = secure_api.put(
            f"/v1/hosts/{name}/inventory", json={"generation": 1, "devices": small}, headers=cloud["admin"]
        )
        assert r.status_code == 200
    placer.config = PlacementConfig(max_hosts=2)
    spec = {"spec": "hardware_resource:NIC_VF_1G=1"}
    r = secure_api.get("/v1/capacity", params=spec, headers=cloud["member"])
    assert r.status_code == 400 and "at most 2 hosts" in r.json()["error"]["message"]
    r = secure_api.get(
        "/v1/capacity", params={**spec, "host": ["small-a", "small-b"]}, headers=cloud["admin"]
    )
    assert r.status_code == 200 and r.json()["total"] == 2


# ---------------------------------------------------------------- no evaluation under a lock


@pytest.mark.parametrize("forget", [False, True], ids=["known", "forgotten"])
def test_a_refit_under_the_hosts_lock_evaluates_nothing(
    secure_api: TestClient,
    store: Store,
    evaluations: list[int],
    monkeypatch: pytest.MonkeyPatch,
    forget: bool,
) -> None:
    """The claim loses its first try and refits under the host's lock, the shared cache
    cleared meanwhile. ``known``: the results the request already had answer. ``forgotten``:
    it has none either (as for a device reported since the read), so the refit finds nothing
    rather than evaluate under the lock, and the claim succeeds on a fresh read."""
    admin, member = _token(store, Role.ADMIN), _token(store, Role.MEMBER, project="p1")
    assert secure_api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}, headers=admin).status_code == 201
    devices = [_vf(i, [TAGS[i % 4]]) for i in range(16)]
    r = secure_api.put("/v1/hosts/h1/inventory", json={"generation": 1, "devices": devices}, headers=admin)
    assert r.status_code == 200
    locked = [False]
    tries: list[str] = []
    real_claim, real_evaluate = store.claim, selector_module.evaluate

    def claim(order: ClaimOrder) -> Any:
        refit = order.refit is not None
        tries.append("refit" if refit else "plain")
        if tries == ["plain"]:  # the first try: lost to a concurrent claim
            selector_module._RESULTS.clear()
            raise LostRace("taken meanwhile")
        if refit and forget:
            budget = current()
            assert budget is not None and budget.memo is not None
            budget.memo.clear()
        locked[0] = refit
        try:
            return real_claim(order)
        finally:
            locked[0] = False

    def evaluate(selector: Any, value: dict[str, Any]) -> bool:
        assert not locked[0], "a selector ran under the host's lock"
        return real_evaluate(selector, value)

    monkeypatch.setattr(store, "claim", claim)
    monkeypatch.setattr(selector_module, "evaluate", evaluate)
    r = secure_api.post("/v1/claims", json=_claim("'gold' in device.attributes.tags"), headers=member)
    assert r.status_code == 201, r.text[:300]
    assert r.json()["devices"][0]["address"] in {_address(i) for i in range(2, 16, 4)}  # gold
    assert tries == (["plain", "refit", "plain"] if forget else ["plain", "refit"])


# ---------------------------------------------------------------- the same counts as before


def _rebuilt(host: HostView, request: Request, limit: int) -> int:
    """Capacity as it was: fit, rebuild the host with the chosen devices held, fit again."""
    n, view = 0, host
    while n < limit:
        result = fit(view, request)
        if result.chosen is None:
            break
        n, view = n + 1, view.with_held(result.device_ids())
    return n


@settings(max_examples=300, deadline=None)
@given(hosts(), requests())
def test_capacity_counts_what_rebuilding_the_host_counted(host: HostView, request: Request) -> None:
    found = capacity(request, Snapshot((host,)), limit_per_host=6)
    assert found.per_host["h"] == _rebuilt(host, request, 6)
