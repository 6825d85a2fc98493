"""Moves (live or cold migration) through the API: start, commit, abort, expiry, refusals,
tenants; on SQLite and PostgreSQL, the audit clean after each outcome."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

from fastapi.testclient import TestClient

from devassign import schemas
from devassign.domain import Role
from devassign.store import Store
from tests.conftest import Clock, vf


def _world(api: TestClient, *, target_devices: int = 2) -> dict[str, Any]:
    """Type NIC_VF_1G, hosts src (2 VFs) and dst, and vm-1 holding both VFs on src, set up."""
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}).status_code == 201
    for host, n in (("src", 2), ("dst", target_devices)):
        devices = [vf(f"0000:3b:02.{i}", numa_node=0) for i in range(n)]
        r = api.put(f"/v1/hosts/{host}/inventory", json={"generation": 1, "devices": devices})
        assert r.status_code == 200 and not r.json()["refused"], r.text
    r = api.post(
        "/v1/claims",
        json={
            "consumer": "vm-1",
            "hosts": ["src"],
            "requests": [
                {"name": "a", "type": "NIC_VF_1G", "params": {}},
                {"name": "b", "type": "NIC_VF_1G"},
            ],
            "constraints": [{"match": "numa_node"}],
        },
    )
    assert r.status_code == 201, r.text
    _set_up(api, "src", r.json()["devices"])
    return r.json()  # type: ignore[no-any-return]


def _set_up(api: TestClient, host: str, devices: list[dict[str, Any]]) -> None:
    results = [{"device_id": d["id"], "action": "setup", "ok": True} for d in devices]
    r = api.post(f"/v1/hosts/{host}/work", json={"results": results})
    assert r.status_code == 200 and all(o["applied"] for o in r.json()), r.text


def _states(api: TestClient, host: str) -> list[str]:
    return sorted(d["state"] for d in api.get("/v1/devices", params={"host": host}).json())


def _audit_clean(api: TestClient) -> None:
    store: Store = api.app.state.store  # type: ignore[attr-defined]
    assert store.audit(down_for=timedelta(hours=1)).findings == []


def test_commit_moves_the_allocation_and_cleans_the_source(api: TestClient) -> None:
    source = _world(api)
    r = api.post("/v1/allocations/vm-1/moves", json={"host": "dst"})
    assert r.status_code == 201, r.text
    move = r.json()
    assert (move["consumer"], move["source_host"], move["target_host"], move["state"]) == (
        "vm-1",
        "src",
        "dst",
        "pending",
    )
    # Each source device is paired with a target device of the same named request.
    by_source = {d["id"]: d for d in source["devices"]}
    assert sorted(p["request"] for p in move["device_map"]) == ["a", "b"]
    for pair in move["device_map"]:
        assert by_source[pair["source_id"]]["request"] == pair["request"]
        assert pair["target_address"].startswith("0000:3b:02.")
        assert move["addresses"][pair["source_address"]] == pair["target_address"]
    # The source stays held; the target is held too; the listing shows one allocation.
    assert api.get("/v1/allocations/vm-1").json()["host"] == "src"
    assert _states(api, "src") == ["assigned", "assigned"]
    assert _states(api, "dst") == ["reserved", "reserved"]
    assert [a["consumer"] for a in api.get("/v1/allocations").json()] == ["vm-1"]
    assert api.get("/v1/allocations/vm-1/moves").json()[0]["state"] == "pending"
    _audit_clean(api)

    # The target devices are not set up yet: commit is refused and nothing changes.
    early = api.post("/v1/allocations/vm-1/moves/commit")
    assert early.status_code == 409 and early.json()["error"]["code"] == "invalid_state", early.text
    assert "2 reserved" in early.json()["error"]["message"]
    assert api.get("/v1/allocations/vm-1").json()["host"] == "src"
    assert _states(api, "src") == ["assigned", "assigned"]
    assert api.get("/v1/allocations/vm-1/moves").json()[0]["state"] == "pending"
    # Half set up is still not set up.
    targets = [{"id": p["target_id"]} for p in move["device_map"]]
    _set_up(api, "dst", targets[:1])
    half = api.post("/v1/allocations/vm-1/moves/commit")
    assert half.status_code == 409 and "1 reserved" in half.json()["error"]["message"], half.text
    _set_up(api, "dst", targets[1:])

    r = api.post("/v1/allocations/vm-1/moves/commit")
    assert r.status_code == 200 and r.json()["state"] == "committed", r.text
    alloc = api.get("/v1/allocations/vm-1").json()
    assert alloc["host"] == "dst"
    assert {d["id"] for d in alloc["devices"]} == {p["target_id"] for p in move["device_map"]}
    assert {d["request"] for d in alloc["devices"]} == {"a", "b"}
    assert _states(api, "src") == ["cleaning", "cleaning"]
    assert _states(api, "dst") == ["assigned", "assigned"]
    # Twice is harmless; abort after commit is refused.
    again = api.post("/v1/allocations/vm-1/moves/commit")
    assert again.status_code == 200 and again.json()["state"] == "committed"
    late = api.post("/v1/allocations/vm-1/moves/abort")
    assert late.status_code == 409 and late.json()["error"]["code"] == "invalid_state"
    actions = [e["action"] for e in api.get("/v1/events", params={"consumer": "vm-1"}).json()]
    assert {"move_started", "move_committed", "allocation_moved"} <= set(actions)
    _audit_clean(api)
    # The consumer is an ordinary consumer on its new host: it can be released.
    assert api.delete("/v1/allocations/vm-1").status_code == 204
    assert _states(api, "dst") == ["cleaning", "cleaning"]
    _audit_clean(api)


def test_abort_releases_the_target_and_the_source_stays(api: TestClient) -> None:
    _world(api)
    assert api.post("/v1/allocations/vm-1/moves", json={"host": "dst"}).status_code == 201
    r = api.post("/v1/allocations/vm-1/moves/abort")
    assert r.status_code == 200 and r.json()["state"] == "aborted" and r.json()["reason"] == "aborted"
    assert _states(api, "dst") == ["cleaning", "cleaning"]
    assert _states(api, "src") == ["assigned", "assigned"]
    assert api.get("/v1/allocations/vm-1").json()["host"] == "src"
    assert api.post("/v1/allocations/vm-1/moves/abort").json()["state"] == "aborted"  # twice
    late = api.post("/v1/allocations/vm-1/moves/commit")
    assert late.status_code == 409 and late.json()["error"]["code"] == "invalid_state"
    _audit_clean(api)


def test_an_unconfirmed_target_expires_and_the_move_is_aborted(api: TestClient, clock: Clock) -> None:
    _world(api)
    assert api.post("/v1/allocations/vm-1/moves", json={"host": "dst"}).status_code == 201
    clock.advance(301)
    for host in ("src", "dst"):
        api.post(f"/v1/hosts/{host}/heartbeat")
    store: Store = api.app.state.store  # type: ignore[attr-defined]
    assert len(store.sweep()) == 1  # the move's target, not vm-1 (assigned)
    move = api.get("/v1/allocations/vm-1/moves").json()[0]
    assert (move["state"], move["reason"]) == ("aborted", "expired")
    assert _states(api, "dst") == ["cleaning", "cleaning"]
    assert api.get("/v1/allocations/vm-1").json()["host"] == "src"
    r = api.post("/v1/allocations/vm-1/moves/commit")
    assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_state"
    _audit_clean(api)


def test_a_move_whose_source_expires_with_its_target_does_not_say_the_consumer_stays(
    api: TestClient, clock: Clock
) -> None:
    _world(api)
    assert api.post("/v1/allocations/vm-1/moves", json={"host": "dst"}).status_code == 201
    store: Store = api.app.state.store  # type: ignore[attr-defined]
    with store.db.write() as conn:  # vm-1's setup never confirmed: it expires with the target
        conn.exec_driver_sql("UPDATE devices SET state = 'reserved' WHERE state = 'assigned'")
        conn.exec_driver_sql(
            "UPDATE allocations SET state = 'reserved', expires_at = (SELECT max(expires_at) "
            "FROM allocations WHERE consumer <> 'vm-1') WHERE consumer = 'vm-1'"
        )
    clock.advance(301)
    for host in ("src", "dst"):
        api.post(f"/v1/hosts/{host}/heartbeat")
    assert len(store.sweep()) == 2  # vm-1 and the move's target
    assert api.get("/v1/allocations/vm-1").json()["state"] == "released"
    events = api.get("/v1/events", params={"consumer": "vm-1"}).json()
    aborted = [e for e in events if e["action"] == "move_aborted"]
    assert len(aborted) == 1, aborted
    assert "stays" not in aborted[0]["message"] and "released too" in aborted[0]["message"], aborted[0]
    _audit_clean(api)


def test_a_target_that_cannot_hold_the_request_says_why(api: TestClient) -> None:
    _world(api, target_devices=1)
    r = api.post("/v1/allocations/vm-1/moves", json={"host": "dst"})
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    assert err["code"] == "no_valid_host" and err["message"].startswith("dst cannot hold vm-1's request")
    assert "1 free" in err["message"] or "too few" in err["message"], err["message"]
    assert err["explanation"]["hosts"][0]["host"] == "dst"
    assert err["explanation"]["hosts"][0]["fits"] is False
    assert _states(api, "dst") == ["available"]
    assert api.get("/v1/allocations/vm-1/moves").json() == []
    _audit_clean(api)


def test_refusals_pending_same_host_unknown_released(api: TestClient) -> None:
    _world(api, target_devices=4)
    same = api.post("/v1/allocations/vm-1/moves", json={"host": "src"})
    assert same.status_code == 400 and same.json()["error"]["code"] == "invalid_request"
    nowhere = api.post("/v1/allocations/vm-1/moves", json={"host": "no-such-host"})
    assert nowhere.status_code == 404 and nowhere.json()["error"]["code"] == "host_not_found"
    unknown = api.post("/v1/allocations/never-was/moves", json={"host": "dst"})
    assert unknown.status_code == 404
    first = api.post("/v1/allocations/vm-1/moves", json={"host": "dst", "idempotency_key": "k1"})
    assert first.status_code == 201
    replay = api.post("/v1/allocations/vm-1/moves", json={"host": "dst", "idempotency_key": "k1"})
    assert replay.status_code == 200 and replay.json()["device_map"] == first.json()["device_map"]
    second = api.post("/v1/allocations/vm-1/moves", json={"host": "dst"})
    assert second.status_code == 409 and second.json()["error"]["code"] == "move_pending"
    assert _states(api, "dst").count("reserved") == 2  # the replay and the refusal held nothing
    no_move = api.post("/v1/allocations/never-was/moves/commit")
    assert no_move.status_code == 404
    internal = api.post(f"/v1/allocations/{'_move:x'}/moves/commit")
    assert internal.status_code == 400
    # Releasing a moving consumer ends its move: the target is released too.
    assert api.delete("/v1/allocations/vm-1").status_code == 204
    move = api.get("/v1/allocations/vm-1/moves").json()[0]
    assert (move["state"], move["reason"]) == ("aborted", "source_released")
    assert "reserved" not in _states(api, "dst")
    released = api.post("/v1/allocations/vm-1/moves", json={"host": "dst"})
    assert released.status_code == 409 and released.json()["error"]["code"] == "invalid_state"
    _audit_clean(api)


def test_another_projects_consumer_is_not_found(secure_api: TestClient, store: Store) -> None:
    def token(role: Role, **scope: str) -> dict[str, str]:
        secret = store.create_token(schemas.TokenCreate(role=role, **scope), "test").token
        return {"Authorization": f"Bearer {secret}"}

    admin, p, q, agent = (
        token(Role.ADMIN),
        token(Role.MEMBER, project="p"),
        token(Role.MEMBER, project="q"),
        token(Role.AGENT, host="dst"),
    )
    assert secure_api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}, headers=admin).status_code == 201
    for host in ("src", "dst"):
        body = {"generation": 1, "devices": [vf("0000:3b:02.1")]}
        assert secure_api.put(f"/v1/hosts/{host}/inventory", json=body, headers=admin).status_code == 200
    claim = {
        "consumer": "vm-p",
        "project": "p",
        "hosts": ["src"],
        "extra_specs": {"hardware_resource:NIC_VF_1G": "1"},
    }
    assert secure_api.post("/v1/claims", json=claim, headers=admin).status_code == 201
    for path in ("", "/commit", "/abort"):
        r = secure_api.post(f"/v1/allocations/vm-p/moves{path}", json={"host": "dst"}, headers=q)
        assert r.status_code == 404, (path, r.text)
    assert secure_api.get("/v1/allocations/vm-p/moves", headers=q).status_code == 404
    assert (
        secure_api.post("/v1/allocations/vm-p/moves", json={"host": "dst"}, headers=agent).status_code == 403
    )
    r = secure_api.post("/v1/allocations/vm-p/moves", json={"host": "dst"}, headers=p)
    assert r.status_code == 201, r.text
    assert secure_api.get("/v1/allocations", headers=p).json()[0]["consumer"] == "vm-p"
    assert len(secure_api.get("/v1/allocations", headers=p).json()) == 1
    results = [{"device_id": m["target_id"], "action": "setup", "ok": True} for m in r.json()["device_map"]]
    assert secure_api.post("/v1/hosts/dst/work", json={"results": results}, headers=agent).status_code == 200
    assert secure_api.post("/v1/allocations/vm-p/moves/commit", headers=p).json()["target_host"] == "dst"
    assert secure_api.get("/v1/allocations/vm-p", headers=p).json()["host"] == "dst"
    # The target's agent sees the move's events on its host, but nothing of the source host:
    # neither its name nor its device ids and addresses.
    source_ids = {m["source_id"] for m in r.json()["device_map"]}
    seen = secure_api.get("/v1/events", headers=agent).json()
    moving = [e for e in seen if e["action"].startswith("move_")]
    assert {e["action"] for e in moving} == {"move_started", "move_committed"}, seen
    text = str(seen)
    assert "src" not in text and not any(i in text for i in source_ids) and "0000:3b:02.1" not in str(moving)
    assert "from src" in str(secure_api.get("/v1/events", headers=admin).json())


def test_a_member_cannot_tell_unknown_hosts_from_full_ones(secure_api: TestClient, store: Store) -> None:
    """Members do not see host names: a move to a host that does not exist is answered as a
    move to a known host without room (the same redacted 409), never a 404 naming it."""
    admin = {
        "Authorization": f"Bearer {store.create_token(schemas.TokenCreate(role=Role.ADMIN), 'test').token}"
    }
    member = schemas.TokenCreate(role=Role.MEMBER, project="p")
    p = {"Authorization": f"Bearer {store.create_token(member, 'test').token}"}
    assert secure_api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}, headers=admin).status_code == 201
    for host, n in (("src", 1), ("empty", 0), ("full", 1), ("maint-host", 2)):
        body = {"generation": 1, "devices": [vf(f"0000:3b:02.{i}") for i in range(n)]}
        assert secure_api.put(f"/v1/hosts/{host}/inventory", json=body, headers=admin).status_code == 200
    taint = {"effect": "NoSchedule", "reason": "rma-ticket-4711"}
    assert secure_api.post("/v1/hosts/maint-host/taints", json=taint, headers=admin).status_code == 201
    spec = {"extra_specs": {"hardware_resource:NIC_VF_1G": "1"}}
    for consumer, project, host in (("vm-q", "q", "full"), ("vm-p", "p", "src")):
        body = {"consumer": consumer, "project": project, "hosts": [host], **spec}
        assert secure_api.post("/v1/claims", json=body, headers=admin).status_code == 201
    answers = {}
    for host in ("empty", "full", "maint-host", "no-such-host"):
        r = secure_api.post("/v1/allocations/vm-p/moves", json={"host": host}, headers=p)
        assert r.status_code == 409, (host, r.text)
        answers[host] = r.json()
        assert host not in r.text and "rma-ticket" not in r.text
    # Full, tainted or made up: one answer, which says nothing of the host.
    assert answers["no-such-host"] == answers["empty"] == answers["full"] == answers["maint-host"]
    assert answers["empty"]["error"]["code"] == "no_valid_host"
    # An operator is told plainly.
    r = secure_api.post("/v1/allocations/vm-p/moves", json={"host": "no-such-host"}, headers=admin)
    assert r.status_code == 404 and r.json()["error"]["code"] == "host_not_found"
    assert secure_api.get("/v1/allocations/vm-p/moves", headers=p).json() == []
    # Nor do listings take a host filter from a member, whichever listing it is.
    for path in ("/v1/allocations?host=src", "/v1/events?host=src", "/v1/allocations?host=no-such-host"):
        r = secure_api.get(path, headers=p)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", (path, r.text)


def test_a_failed_setup_on_the_target_aborts_the_move(api: TestClient) -> None:
    _world(api)
    move = api.post("/v1/allocations/vm-1/moves", json={"host": "dst"}).json()
    failed = [
        {"device_id": p["target_id"], "action": "setup", "ok": False, "error": "no vfio"}
        for p in move["device_map"]
    ]
    assert api.post("/v1/hosts/dst/work", json={"results": failed[:1]}).status_code == 200
    got = api.get("/v1/allocations/vm-1/moves").json()[0]
    assert (got["state"], got["reason"]) == ("aborted", "setup_failed")
    assert api.get("/v1/allocations/vm-1").json()["host"] == "src"
    _audit_clean(api)


def test_clients_cannot_use_the_move_prefix(api: TestClient) -> None:
    _world(api)
    r = api.post(
        "/v1/claims", json={"consumer": "_move:abc", "extra_specs": {"hardware_resource:NIC_VF_1G": "1"}}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"


def test_hosts_a_move_touched_can_be_deleted_once_free(api: TestClient) -> None:
    """A finished move names both hosts' allocations: deleting either host afterwards (its
    devices clean and free) is a 204, not a database error; the move's story stays in events."""
    source = _world(api)
    move = api.post("/v1/allocations/vm-1/moves", json={"host": "dst"}).json()
    _set_up(api, "dst", [{"id": p["target_id"]} for p in move["device_map"]])
    assert api.post("/v1/allocations/vm-1/moves/commit").status_code == 200
    cleaned = [{"device_id": d["id"], "action": "cleanup", "ok": True} for d in source["devices"]]
    assert api.post("/v1/hosts/src/work", json={"results": cleaned}).status_code == 200
    assert _states(api, "src") == ["available", "available"]
    r = api.delete("/v1/hosts/src", params={"force": "true"})
    assert r.status_code == 204, r.text
    assert api.get("/v1/allocations/vm-1").json()["host"] == "dst"
    actions = [e["action"] for e in api.get("/v1/events", params={"consumer": "vm-1"}).json()]
    assert "move_committed" in actions
    # An aborted move's target host, once its devices are clean, goes too.
    assert (
        api.put(
            "/v1/hosts/spare/inventory",
            json={"generation": 1, "devices": [vf(f"0000:3b:02.{i}", numa_node=0) for i in range(2)]},
        ).status_code
        == 200
    )
    back = api.post("/v1/allocations/vm-1/moves", json={"host": "spare"}).json()
    assert api.post("/v1/allocations/vm-1/moves/abort").status_code == 200
    undone = [{"device_id": p["target_id"], "action": "cleanup", "ok": True} for p in back["device_map"]]
    assert api.post("/v1/hosts/spare/work", json={"results": undone}).status_code == 200
    assert api.delete("/v1/hosts/spare", params={"force": "true"}).status_code == 204
    assert api.get("/v1/allocations/vm-1/moves").json() == []
    _audit_clean(api)


def _gpus(api: TestClient, host: str, kind: str, n: int) -> None:
    devices = [{"address": f"0000:a{i}:00.0", "kind": "pci", "type": kind} for i in range(n)]
    r = api.put(f"/v1/hosts/{host}/inventory", json={"generation": 1, "devices": devices})
    assert r.status_code == 200 and not r.json()["refused"], r.text


def _gpu_claim(api: TestClient) -> None:
    """vm-1 of project p1 asked for 2 A100s or else 2 T4s, and got T4s on c1 (set up)."""
    for t in ("GPU_A100", "GPU_T4"):
        assert api.post("/v1/resource-types", json={"name": t}).status_code == 201
    _gpus(api, "c1", "GPU_T4", 2)
    _gpus(api, "c2", "GPU_A100", 2)
    _gpus(api, "c3", "GPU_T4", 2)
    request = {
        "name": "g",
        "type": "GPU_A100",
        "count": 2,
        "first_available": [{"type": "GPU_T4", "count": 2}],
    }
    body = {"consumer": "vm-1", "project": "p1", "hosts": ["c1"], "requests": [request]}
    r = api.post("/v1/claims", json=body)
    assert r.status_code == 201 and {d["type"] for d in r.json()["devices"]} == {"GPU_T4"}, r.text
    _set_up(api, "c1", r.json()["devices"])


def test_a_move_onto_another_type_keeps_to_the_quota(api: TestClient) -> None:
    """A move gives back the source's devices, so it is free of quota within the types it
    holds, but may not take a type the project's quota forbids."""
    _gpu_claim(api)
    assert api.put("/v1/quotas/p1/GPU_A100", json={"limit": 0}).status_code == 204
    r = api.post("/v1/allocations/vm-1/moves", json={"host": "c2"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "quota_exceeded", r.text
    assert _states(api, "c2") == ["available", "available"]
    assert api.get("/v1/allocations/vm-1/moves").json() == []
    # Its own type, even with that type's limit lowered below what it holds: allowed.
    assert api.put("/v1/quotas/p1/GPU_T4", json={"limit": 1}).status_code == 204
    r = api.post("/v1/allocations/vm-1/moves", json={"host": "c3"})
    assert r.status_code == 201, r.text
    assert api.post("/v1/allocations/vm-1/moves/abort").status_code == 200
    # Within the limit once the T4s are given back: allowed.
    assert api.put("/v1/quotas/p1/GPU_A100", json={"limit": 2}).status_code == 204
    r = api.post("/v1/allocations/vm-1/moves", json={"host": "c2"})
    assert r.status_code == 201, r.text
    _audit_clean(api)


def test_the_move_quota_is_checked_in_the_start_transaction(api: TestClient, monkeypatch: Any) -> None:
    """Should the scheduler not see the quota (set in the instant between its read and the
    claim), the start's own check refuses the move and rolls its devices back; planned again on
    the quota as it is, no alternative fits it."""
    from devassign.server import moves as move_routes
    from devassign.store import Store as BaseStore

    _gpu_claim(api)
    assert api.put("/v1/quotas/p1/GPU_A100", json={"limit": 1}).status_code == 204

    def blind(self: Any, **kwargs: Any) -> Any:
        return dataclasses.replace(BaseStore.prepare_claim(self, **kwargs), limits={}, usage={})

    monkeypatch.setattr(move_routes._MoveClaims, "prepare_claim", blind)
    r = api.post("/v1/allocations/vm-1/moves", json={"host": "c2"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "quota_exceeded", r.text
    assert "GPU_A100: limit 1" in r.json()["error"]["message"], r.text
    assert _states(api, "c2") == ["available", "available"]
    assert api.get("/v1/allocations/vm-1").json()["host"] == "c1"
    _audit_clean(api)


def test_a_move_that_lost_the_quota_to_another_claim_takes_its_alternative(
    api: TestClient, monkeypatch: Any
) -> None:
    """The quota the move was planned with was taken by a concurrent claim before its start's
    own check: it is planned again on the quota as it is now, and takes the request's other
    alternative on the same host (not refused as if the host were full)."""
    from devassign.server import moves as move_routes
    from devassign.store import Store as BaseStore

    _gpu_claim(api)
    r = api.put("/v1/hosts/c4/inventory", json={"generation": 1, "devices": [
        {"address": f"0000:a{i}:00.0", "kind": "pci", "type": t}
        for i, t in enumerate(("GPU_A100", "GPU_A100", "GPU_T4", "GPU_T4"))
    ]})  # fmt: skip
    assert r.status_code == 200 and not r.json()["refused"], r.text
    assert api.put("/v1/quotas/p1/GPU_A100", json={"limit": 0}).status_code == 204
    planned = []

    def stale_once(self: Any, **kwargs: Any) -> Any:
        ctx = BaseStore.prepare_claim(self, **kwargs)
        planned.append(ctx)
        return dataclasses.replace(ctx, limits={}, usage={}) if len(planned) == 1 else ctx

    monkeypatch.setattr(move_routes._MoveClaims, "prepare_claim", stale_once)
    r = api.post("/v1/allocations/vm-1/moves", json={"host": "c4"})
    assert r.status_code == 201, r.text
    assert {p["target_address"] for p in r.json()["device_map"]} == {"0000:a2:00.0", "0000:a3:00.0"}
    assert sorted(d["state"] for d in api.get("/v1/devices", params={"host": "c4"}).json()) == [
        "available", "available", "reserved", "reserved"
    ]  # fmt: skip
    _audit_clean(api)


def test_a_late_resend_of_an_old_move_is_not_taken_for_it(api: TestClient) -> None:
    """The same key resent after the consumer was released and claimed again must not answer
    the old committed move, as if the new allocation had moved."""
    source = _world(api)
    move = api.post("/v1/allocations/vm-1/moves", json={"host": "dst", "idempotency_key": "k1"}).json()
    _set_up(api, "dst", [{"id": p["target_id"]} for p in move["device_map"]])
    assert api.post("/v1/allocations/vm-1/moves/commit").status_code == 200
    again = api.post("/v1/allocations/vm-1/moves", json={"host": "dst", "idempotency_key": "k1"})
    assert again.status_code == 200 and again.json()["state"] == "committed", again.text
    assert api.delete("/v1/allocations/vm-1").status_code == 204
    for host, ids in (
        ("src", [d["id"] for d in source["devices"]]),
        ("dst", [p["target_id"] for p in move["device_map"]]),
    ):
        cleaned = [{"device_id": i, "action": "cleanup", "ok": True} for i in ids]
        assert api.post(f"/v1/hosts/{host}/work", json={"results": cleaned}).status_code == 200
    spec = {"consumer": "vm-1", "hosts": ["src"], "extra_specs": {"hardware_resource:NIC_VF_1G": "1"}}
    assert api.post("/v1/claims", json=spec).status_code == 201
    late = api.post("/v1/allocations/vm-1/moves", json={"host": "dst", "idempotency_key": "k1"})
    assert late.status_code == 409 and late.json()["error"]["code"] == "idempotency_key_reused", late.text
    assert api.get("/v1/allocations/vm-1").json()["host"] == "src"
    fresh = api.post("/v1/allocations/vm-1/moves", json={"host": "dst", "idempotency_key": "k2"})
    assert fresh.status_code == 201, fresh.text
    _audit_clean(api)


def test_a_drained_target_tells_the_moving_consumer_and_cannot_be_committed(api: TestClient) -> None:
    """Draining the host a move goes to asks the consumer being moved (not the move's internal
    holder) to abort, and a commit onto drained devices is refused; abort still works."""
    _world(api)
    move = api.post("/v1/allocations/vm-1/moves", json={"host": "dst"}).json()
    _set_up(api, "dst", [{"id": p["target_id"]} for p in move["device_map"]])
    r = api.post("/v1/hosts/dst/taints", json={"effect": "Drain", "reason": "PSU swap"})
    assert r.status_code == 201, r.text
    drains = [e for e in api.get("/v1/events").json() if e["action"] == "drain_requested"]
    assert [e["consumer"] for e in drains] == ["vm-1"], drains
    assert "abort its move to dst" in drains[0]["message"]
    refused = api.post("/v1/allocations/vm-1/moves/commit")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "invalid_state", refused.text
    assert "being drained (Drain (PSU swap))" in refused.json()["error"]["message"]  # not who set it
    assert api.get("/v1/allocations/vm-1").json()["host"] == "src"
    assert api.post("/v1/allocations/vm-1/moves/abort").json()["state"] == "aborted"
    # A NoSchedule taint only keeps new claims off: a commit onto it goes through.
    assert api.delete("/v1/hosts/dst/taints").status_code == 200
    api.post(
        "/v1/hosts/dst/work",
        json={
            "results": [
                {"device_id": p["target_id"], "action": "cleanup", "ok": True} for p in move["device_map"]
            ]
        },
    )
    again = api.post("/v1/allocations/vm-1/moves", json={"host": "dst"}).json()
    _set_up(api, "dst", [{"id": p["target_id"]} for p in again["device_map"]])
    assert api.post("/v1/hosts/dst/taints", json={"effect": "NoSchedule", "reason": "r"}).status_code == 201
    assert api.post("/v1/allocations/vm-1/moves/commit").status_code == 200
    _audit_clean(api)


def test_a_pending_move_counts_both_sets_for_the_projects_other_claims(api: TestClient) -> None:
    """The move itself is free of quota within its types, but while it is pending the project
    holds both sets: a claim of another consumer sees both, until the move ends."""
    _world(api, target_devices=4)
    project = api.get("/v1/allocations/vm-1").json()["project"]
    r = api.put(f"/v1/quotas/{project}/NIC_VF_1G", json={"limit": 3})
    assert r.status_code == 204, r.text
    assert api.post("/v1/allocations/vm-1/moves", json={"host": "dst"}).status_code == 201
    used = {q["type"]: q["used"] for q in api.get("/v1/quotas", params={"project": project}).json()}
    assert used == {"NIC_VF_1G": 4}
    vm2 = {"consumer": "vm-2", "project": project, "requests": [{"name": "a", "type": "NIC_VF_1G"}]}
    r = api.post("/v1/claims", json=vm2)
    assert r.status_code == 403 and r.json()["error"]["code"] == "quota_exceeded", r.text
    assert api.post("/v1/allocations/vm-1/moves/abort").status_code == 200
    r = api.post("/v1/claims", json=vm2)
    assert r.status_code == 201, r.text
    _audit_clean(api)


def test_a_move_pending_past_the_threshold_is_an_audit_finding(api: TestClient, clock: Clock) -> None:
    """A set-up target never lapses; the audit names a move left pending, and never aborts it
    (its guest may already run on the target devices)."""
    _world(api)
    r = api.post("/v1/allocations/vm-1/moves", json={"host": "dst"})
    assert r.status_code == 201, r.text
    _set_up(api, "dst", [{"id": p["target_id"]} for p in r.json()["device_map"]])
    clock.advance(1800)
    assert api.get("/v1/audit", params={"down_for": 3600}).json()["findings"] == []
    clock.advance(1801)
    found = api.post("/v1/audit/fix", params={"down_for": 3600}).json()["findings"]
    findings = [f for f in found if f["check"] != "held_on_down_host"]  # no agent heartbeats here
    assert [(f["check"], f["consumer"], f["host"], f["repaired"]) for f in findings] == [
        ("move_stale", "vm-1", "dst", False)
    ], findings
    assert "from src to dst" in findings[0]["message"]
    assert api.get("/v1/allocations/vm-1/moves").json()[0]["state"] == "pending"
    assert api.post("/v1/allocations/vm-1/moves/commit").status_code == 200
    found = api.get("/v1/audit", params={"down_for": 3600}).json()["findings"]
    assert [f for f in found if f["check"] == "move_stale"] == []


def test_a_members_move_over_quota_reads_as_any_other_refused_host(
    secure_api: TestClient, store: Store
) -> None:
    """Only a real host with room for an alternative over the project's quota answered 403
    quota_exceeded; a made-up one 409: a member could list the real hosts and what is free."""
    admin = {
        "Authorization": f"Bearer {store.create_token(schemas.TokenCreate(role=Role.ADMIN), 'test').token}"
    }
    member = schemas.TokenCreate(role=Role.MEMBER, project="p")
    p = {"Authorization": f"Bearer {store.create_token(member, 'test').token}"}
    for name in ("NIC_VF_1G", "GPU_A100"):
        assert secure_api.post("/v1/resource-types", json={"name": name}, headers=admin).status_code == 201
    gpu = {"address": "0000:01:00.0", "kind": "pci", "type": "GPU_A100"}
    for host, devices in (("src", [vf("0000:3b:02.0")]), ("gpuonly", [gpu])):
        body = {"generation": 1, "devices": devices}
        assert secure_api.put(f"/v1/hosts/{host}/inventory", json=body, headers=admin).status_code == 200
    assert secure_api.put("/v1/quotas/p/GPU_A100", json={"limit": 0}, headers=admin).status_code == 204
    request = {"name": "n", "type": "NIC_VF_1G", "first_available": [{"type": "GPU_A100"}]}
    claimed = secure_api.post("/v1/claims", json={"consumer": "vm-p", "requests": [request]}, headers=p)
    assert claimed.status_code == 201, claimed.text
    answers = {}
    for host in ("gpuonly", "no-such-host"):
        r = secure_api.post("/v1/allocations/vm-p/moves", json={"host": host}, headers=p)
        assert r.status_code == 409, (host, r.text)
        answers[host] = r.json()
        assert host not in r.text
    assert answers["gpuonly"] == answers["no-such-host"]
    operator = secure_api.post("/v1/allocations/vm-p/moves", json={"host": "gpuonly"}, headers=admin)
    assert operator.status_code == 403 and operator.json()["error"]["code"] == "quota_exceeded", operator.text
    assert "IOMMU group mates" not in operator.text  # an alternative is over the quota, not mates


def test_a_move_key_with_a_nul_is_refused_as_a_claims_is(api: TestClient) -> None:
    """SQLite stored it and answered it back, PostgreSQL refused it only as a value it cannot
    store: the key is checked as a claim's is, naming the field."""
    _world(api)
    r = api.post("/v1/allocations/vm-1/moves", json={"host": "dst", "idempotency_key": "x\u0000y"})
    assert r.status_code == 400, r.text
    assert "idempotency_key" in r.json()["error"]["message"] and "NUL" in r.json()["error"]["message"]
    assert api.get("/v1/allocations/vm-1/moves").json() == []


def test_a_move_key_used_for_another_host_is_the_reused_key_refusal(api: TestClient) -> None:
    """The same mistake as a claim's reused key answered another code (400 invalid_request):
    a client matching on the code told the two apart."""
    _world(api)
    devices = [vf(f"0000:3b:02.{i}", numa_node=0) for i in range(2)]
    assert api.put("/v1/hosts/dst2/inventory", json={"generation": 1, "devices": devices}).status_code == 200
    assert (
        api.post("/v1/allocations/vm-1/moves", json={"host": "dst", "idempotency_key": "k1"}).status_code
        == 201
    )
    r = api.post("/v1/allocations/vm-1/moves", json={"host": "dst2", "idempotency_key": "k1"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "idempotency_key_reused", r.text
    assert "use a new key for a new move" in r.json()["error"]["message"]
