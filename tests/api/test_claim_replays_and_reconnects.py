"""Claim replays (idempotency key) against a full cloud or a reached quota, quotas, PF/VF
exclusion, and what the API answers after PostgreSQL dropped the store's connections."""

from __future__ import annotations

import time
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from devassign.store import Store
from tests.conftest import vf

NIC = "NIC_VF_1G"
PF_ADDRESS = "0000:3b:00.0"  # the parent that vf() gives every VF
_NO_OR_OTHER_KEY: tuple[dict[str, Any], ...] = ({}, {"idempotency_key": "k2"})
ONLY_PG = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)


def _setup(api: TestClient, host: str, devices: list[dict[str, Any]], *types: str) -> None:
    for t in types or (NIC,):
        assert api.post("/v1/resource-types", json={"name": t}).status_code == 201
    r = api.put(f"/v1/hosts/{host}/inventory", json={"generation": 1, "devices": devices})
    assert r.status_code == 200 and not r.json()["refused"], r.text


def _vfs(n: int) -> list[dict[str, Any]]:
    return [vf(f"0000:3b:02.{i}") for i in range(n)]


def _claim(api: TestClient, consumer: str, n: int = 1, type: str = NIC, **body: Any) -> Any:
    spec = {"extra_specs": {f"hardware_resource:{type}": str(n)}}
    return api.post("/v1/claims", json={"consumer": consumer, **spec, **body})


def _code(r: Any) -> str:
    code: str = r.json()["error"]["code"]
    return code


def _held(r: Any) -> list[str]:
    return sorted(d["address"] for d in r.json()["devices"])


def _states(api: TestClient) -> dict[str, str]:
    r = api.get("/v1/devices")
    assert r.status_code == 200, r.text
    return {f"{d['host']}/{d['address']}": d["state"] for d in r.json()}


def _count(api: TestClient, state: str) -> int:
    return sum(1 for s in _states(api).values() if s == state)


def _created_events(api: TestClient, consumer: str) -> int:
    events = api.get("/v1/events", params={"consumer": consumer}).json()
    return sum(1 for e in events if e["action"] == "allocation_created")


def test_replay_answers_the_same_allocation_and_another_claim_of_the_consumer_conflicts(
    api: TestClient,
) -> None:
    _setup(api, "c1", _vfs(3))
    first = _claim(api, "vm-1", idempotency_key="k1")
    assert first.status_code == 201, first.text
    replay = _claim(api, "vm-1", idempotency_key="k1")
    assert replay.status_code == 200, replay.text
    assert replay.json()["devices"] == first.json()["devices"] and len(_held(replay)) == 1
    assert replay.json()["host"] == "c1" and replay.json()["consumer"] == "vm-1"
    for extra in _NO_OR_OTHER_KEY:
        other = _claim(api, "vm-1", **extra)
        assert other.status_code == 409 and _code(other) == "consumer_conflict", other.text
    # Nothing extra was taken: one allocation, one reserved device, one creation event.
    assert [a["consumer"] for a in api.get("/v1/allocations").json()] == ["vm-1"]
    assert api.get("/v1/allocations/vm-1").json()["devices"] == first.json()["devices"]
    held = _held(first)
    assert _states(api) == {
        f"c1/{d['address']}": "reserved" if d["address"] in held else "available" for d in _vfs(3)
    }
    assert _count(api, "reserved") == 1 and _count(api, "available") == 2
    assert _created_events(api, "vm-1") == 1


def test_replay_after_the_cloud_is_full_still_answers_the_allocation(api: TestClient) -> None:
    _setup(api, "c1", _vfs(2))
    r = api.put("/v1/hosts/c2/inventory", json={"generation": 1, "devices": [vf("0000:5e:02.0")]})
    assert r.status_code == 200, r.text
    first = _claim(api, "vm-1", idempotency_key="k1")
    assert first.status_code == 201, first.text
    for other in ("vm-2", "vm-3"):
        assert _claim(api, other).status_code == 201
    assert _count(api, "available") == 0 and _count(api, "reserved") == 3

    replay = _claim(api, "vm-1", idempotency_key="k1")
    assert replay.status_code == 200, replay.text
    assert replay.json()["host"] == first.json()["host"]
    assert replay.json()["devices"] == first.json()["devices"]
    for extra in _NO_OR_OTHER_KEY:
        conflict = _claim(api, "vm-1", **extra)
        assert conflict.status_code == 409 and _code(conflict) == "consumer_conflict", conflict.text
    new = _claim(api, "vm-4", idempotency_key="k1")
    assert new.status_code == 409 and _code(new) == "no_valid_host", new.text
    assert sorted(a["consumer"] for a in api.get("/v1/allocations").json()) == ["vm-1", "vm-2", "vm-3"]
    assert _count(api, "reserved") == 3 and _created_events(api, "vm-1") == 1


def test_replay_when_the_project_is_now_at_its_quota_answers_the_allocation(api: TestClient) -> None:
    _setup(api, "c1", _vfs(5))
    first = _claim(api, "vm-1", 2, project="p1", idempotency_key="k1")
    assert first.status_code == 201, first.text
    assert api.put(f"/v1/quotas/p1/{NIC}", json={"limit": 2}).status_code == 204

    replay = _claim(api, "vm-1", 2, project="p1", idempotency_key="k1")
    assert replay.status_code == 200, replay.text
    assert replay.json()["devices"] == first.json()["devices"] and len(_held(replay)) == 2
    over = _claim(api, "vm-2", 1, project="p1", idempotency_key="k1")
    assert over.status_code == 403 and _code(over) == "quota_exceeded", over.text
    assert over.json()["error"]["limits"] == {NIC: 2} and over.json()["error"]["usage"] == {NIC: 2}
    assert _claim(api, "vm-3", 1, project="p2").status_code == 201
    assert api.get("/v1/quotas", params={"project": "p1"}).json() == [
        {"project": "p1", "type": NIC, "limit": 2, "used": 2}
    ]
    assert _count(api, "reserved") == 3 and _count(api, "available") == 2


def test_a_quota_set_before_a_claim_is_enforced_and_no_quota_means_no_limit(api: TestClient) -> None:
    _setup(api, "c1", _vfs(6), NIC, "GPU_A100")
    assert api.put(f"/v1/quotas/p1/{NIC}", json={"limit": 1}).status_code == 204
    assert api.put("/v1/quotas/p3/GPU_A100", json={"limit": 0}).status_code == 204

    two = _claim(api, "vm-1", 2, project="p1")
    assert two.status_code == 403 and _code(two) == "quota_exceeded", two.text
    err = two.json()["error"]
    assert err["limits"] == {NIC: 1} and err["usage"] == {} and "p1" in err["message"]
    assert _claim(api, "vm-1", 1, project="p1").status_code == 201
    again = _claim(api, "vm-2", 1, project="p1")
    assert again.status_code == 403 and again.json()["error"]["usage"] == {NIC: 1}, again.text
    # No quota for the project, or only for another type: the claim succeeds.
    assert _claim(api, "vm-3", 2, project="p2").status_code == 201
    assert _claim(api, "vm-4", 1, project="p3").status_code == 201
    # A quota set after p2's claim binds its next claims, and lifting p1's frees it.
    assert api.put(f"/v1/quotas/p2/{NIC}", json={"limit": 2}).status_code == 204
    later = _claim(api, "vm-5", 1, project="p2")
    assert later.status_code == 403 and _code(later) == "quota_exceeded", later.text
    assert api.put(f"/v1/quotas/p1/{NIC}", json={"limit": None}).status_code == 204
    assert _claim(api, "vm-2", 1, project="p1").status_code == 201
    assert _count(api, "reserved") == 5 and _count(api, "available") == 1


def test_pf_and_vf_exclude_each_other_both_ways(api: TestClient) -> None:
    pf = {"address": PF_ADDRESS, "kind": "sriov_pf", "type": "NIC_PF"}
    _setup(api, "c1", [pf, vf("0000:3b:02.1")], NIC, "NIC_PF")
    r = api.put("/v1/hosts/c2/inventory", json={"generation": 1, "devices": [pf, vf("0000:3b:02.1")]})
    assert r.status_code == 200, r.text

    # A VF held on c1: c1's PF is not claimable.
    assert _claim(api, "vm-1", hosts=["c1"]).status_code == 201
    blocked = _claim(api, "vm-2", type="NIC_PF", hosts=["c1"])
    assert blocked.status_code == 409 and _code(blocked) == "no_valid_host", blocked.text
    # The PF held on c2: c2's VF is not claimable.
    pf_claim = _claim(api, "vm-3", type="NIC_PF", hosts=["c2"])
    assert pf_claim.status_code == 201 and _held(pf_claim) == [PF_ADDRESS], pf_claim.text
    vf_blocked = _claim(api, "vm-4", hosts=["c2"])
    assert vf_blocked.status_code == 409 and _code(vf_blocked) == "no_valid_host", vf_blocked.text
    # Anywhere: no PF and no VF is left.
    for t in ("NIC_PF", NIC):
        r = _claim(api, "vm-5", type=t)
        assert r.status_code == 409 and _code(r) == "no_valid_host", r.text
    assert _states(api) == {
        f"c1/{PF_ADDRESS}": "available",
        "c1/0000:3b:02.1": "reserved",
        f"c2/{PF_ADDRESS}": "reserved",
        "c2/0000:3b:02.1": "available",
    }


def test_vfs_whose_pf_is_not_reported_can_all_be_claimed(api: TestClient) -> None:
    _setup(api, "c1", _vfs(4))
    assert all(d["parent"] == PF_ADDRESS for d in api.get("/v1/devices").json())
    one = _claim(api, "vm-1", 2)
    assert one.status_code == 201 and len(_held(one)) == 2, one.text
    for consumer in ("vm-2", "vm-3"):
        r = _claim(api, consumer)
        assert r.status_code == 201 and len(_held(r)) == 1, r.text
    assert _count(api, "reserved") == 4
    none = _claim(api, "vm-4")
    assert none.status_code == 409 and _code(none) == "no_valid_host", none.text


# ------------------------------------------------------------ PostgreSQL: lost connections

_OTHERS = "datname = current_database() AND pid <> pg_backend_pid()"


def _terminate_store_connections(store: Store, warm: int = 1) -> int:
    """Kill every server process of the store's database, as one server restart would: the
    pool is first emptied and then holds ``warm`` live connections (so that dead ones left by
    an earlier kill of the same test cannot blur which request meets a dead one)."""
    store.db.engine.dispose()
    held = [store.db.engine.connect() for _ in range(warm)]
    for c in held:
        c.exec_driver_sql("SELECT 1")
        c.close()
    admin = sa.create_engine(store.db.url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as conn:
            pids = list(conn.execute(sa.text(f"SELECT pid FROM pg_stat_activity WHERE {_OTHERS}")).scalars())
            conn.execute(sa.text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {_OTHERS}"))
            for _ in range(500):
                alive = sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(:p)")
                if conn.execute(alive, {"p": pids}).scalar_one() == 0:
                    break
                time.sleep(0.01)
            else:
                pytest.fail(f"backends {pids} outlived pg_terminate_backend")
    finally:
        admin.dispose()
    if len(pids) < warm:
        pytest.fail(f"expected at least {warm} pooled connections to kill, found {pids}")
    return len(pids)


@ONLY_PG
def test_writes_after_lost_connections_are_retried_on_fresh_ones(api: TestClient, store: Store) -> None:
    _setup(api, "c1", _vfs(2))
    _terminate_store_connections(store, warm=3)
    assert api.post("/v1/hosts/c1/heartbeat").status_code == 204
    _terminate_store_connections(store)
    assert api.put(f"/v1/quotas/p1/{NIC}", json={"limit": 1}).status_code == 204
    _terminate_store_connections(store)
    r = api.put("/v1/hosts/c1/inventory", json={"generation": 2, "devices": _vfs(3)})
    assert r.status_code == 200 and r.json()["added"] == ["0000:3b:02.2"], r.text
    assert _count(api, "available") == 3
    assert api.get("/v1/quotas", params={"project": "p1"}).json()[0]["limit"] == 1


@ONLY_PG
def test_a_read_after_lost_connections_is_retried_on_a_fresh_one(api: TestClient, store: Store) -> None:
    _setup(api, "c1", _vfs(2))
    assert _claim(api, "vm-1").status_code == 201
    for _ in range(2):
        _terminate_store_connections(store, warm=3)
        r = api.get("/v1/devices")
        assert r.status_code == 200, r.text
        assert sorted(d["state"] for d in r.json()) == ["available", "reserved"]


@ONLY_PG
def test_a_claim_after_lost_connections_succeeds_and_a_resend_holds_one_allocation(
    api: TestClient, store: Store
) -> None:
    _setup(api, "c1", _vfs(2))
    _terminate_store_connections(store, warm=2)
    first = _claim(api, "vm-1", idempotency_key="k1")
    assert first.status_code == 201, first.text
    resend = _claim(api, "vm-1", idempotency_key="k1")
    assert resend.status_code == 200, resend.text
    assert len(_held(resend)) == 1
    assert [a["consumer"] for a in api.get("/v1/allocations").json()] == ["vm-1"]
    assert _count(api, "reserved") == 1


@ONLY_PG
def test_a_release_after_lost_connections_succeeds(api: TestClient, store: Store) -> None:
    _setup(api, "c1", _vfs(2))
    assert _claim(api, "vm-1").status_code == 201
    _terminate_store_connections(store)
    r = api.delete("/v1/allocations/vm-1")
    assert r.status_code == 204, r.text
    assert _count(api, "cleaning") == 1
