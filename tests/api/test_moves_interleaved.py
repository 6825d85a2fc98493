"""Moves and confirmations that other changes interleave with: a target device missing for a
report and back, a resend of an earlier move's key, a release and claim between a start's
read and its transaction."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi.testclient import TestClient

from devassign.store import Store
from tests.api.test_moves import _set_up, _states, _world
from tests.conftest import Clock, vf


def _report(api: TestClient, host: str, addrs: list[str], gen: int) -> None:
    r = api.put(
        f"/v1/hosts/{host}/inventory",
        json={"generation": gen, "devices": [vf(a, numa_node=0) for a in addrs]},
    )
    assert r.status_code == 200, r.text


def test_a_committed_move_whose_target_device_was_missing_a_while_keeps_its_devices(
    api: TestClient, clock: Clock
) -> None:
    _world(api)
    move = api.post("/v1/allocations/vm-1/moves", json={"host": "dst"}).json()
    targets = sorted(move["device_map"], key=lambda p: p["target_address"])
    # The first target device is set up, is missing for a report, and comes back; the second
    # is set up while the first is gone.
    _set_up(api, "dst", [{"id": targets[0]["target_id"]}])
    _report(api, "dst", [targets[1]["target_address"]], 2)  # first (assigned) vanishes -> missing
    _set_up(api, "dst", [{"id": targets[1]["target_id"]}])  # second set up; alloc not confirmed (one missing)
    _report(api, "dst", [p["target_address"] for p in targets], 3)  # first comes back -> assigned
    assert _states(api, "dst") == ["assigned", "assigned"]
    r = api.post("/v1/allocations/vm-1/moves/commit")
    assert r.status_code == 200, r.text
    # The consumer now holds devices on dst, the source is cleaning.
    assert api.get("/v1/allocations/vm-1").json()["host"] == "dst"
    store: Store = api.app.state.store  # type: ignore[attr-defined]
    clock.advance(3600)
    for host in ("src", "dst"):
        api.post(f"/v1/hosts/{host}/heartbeat")
    store.sweep()
    # vm-1 must still hold its (set up, committed) devices on dst.
    a = api.get("/v1/allocations/vm-1")
    assert a.status_code == 200 and a.json()["released_at"] is None, a.text


def test_a_late_resend_of_an_earlier_moves_key_answers_that_move(api: TestClient) -> None:
    _world(api, target_devices=4)
    # a third host to move on to
    r = api.put(
        "/v1/hosts/dst2/inventory",
        json={"generation": 1, "devices": [vf(f"0000:3b:02.{i}", numa_node=0) for i in range(2)]},
    )
    assert r.status_code == 200
    first = api.post("/v1/allocations/vm-1/moves", json={"host": "dst", "idempotency_key": "k1"})
    assert first.status_code == 201
    assert api.post("/v1/allocations/vm-1/moves/abort").status_code == 200
    second = api.post("/v1/allocations/vm-1/moves", json={"host": "dst2", "idempotency_key": "k2"})
    assert second.status_code == 201
    assert api.post("/v1/allocations/vm-1/moves/abort").status_code == 200
    # The orchestrator's delayed retry of the first start (its response had been lost):
    again = api.post("/v1/allocations/vm-1/moves", json={"host": "dst", "idempotency_key": "k1"})
    # Documented: the same move (200; it still concerns vm-1's allocation, the one it moved),
    # or 409 idempotency_key_reused -- never a new move.
    assert again.status_code == 200, again.text
    assert again.json()["target_host"] == "dst" and again.json()["state"] == "aborted"
    moves = api.get("/v1/allocations/vm-1/moves").json()
    assert [m["state"] for m in moves] == ["aborted", "aborted"], moves


def test_a_start_racing_a_release_and_a_claim_again_is_refused(api: TestClient, monkeypatch: Any) -> None:
    _world(api, target_devices=4)
    store: Store = api.app.state.store  # type: ignore[attr-defined]
    real = store.move_source

    def racing(consumer: str, target: str) -> Any:
        out = real(consumer, target)
        # Between the start's read and its transaction: vm-1 is released and claimed again on dst.
        assert api.delete("/v1/allocations/vm-1").status_code == 204
        r = api.post(
            "/v1/claims",
            json={"consumer": "vm-1", "hosts": ["dst"], "extra_specs": {"hardware_resource:NIC_VF_1G": "1"}},
        )
        assert r.status_code == 201, r.text
        return out

    monkeypatch.setattr(store, "move_source", racing)
    r = api.post("/v1/allocations/vm-1/moves", json={"host": "dst"})
    # vm-1 is on dst now: a move to dst is the 400 of "already on that host" (or a conflict),
    # never a move whose source and target are one host, built from the old allocation's request.
    assert r.status_code != 201, r.text


def test_a_claim_set_up_while_a_device_was_missing_is_confirmed_when_it_comes_back(
    api: TestClient, clock: Clock
) -> None:
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}).status_code == 201
    addrs = ["0000:3b:02.0", "0000:3b:02.1"]
    _report(api, "h", addrs, 1)
    r = api.post(
        "/v1/claims",
        json={"consumer": "vm-9", "hosts": ["h"], "extra_specs": {"hardware_resource:NIC_VF_1G": "2"}},
    )
    devs = sorted(r.json()["devices"], key=lambda d: d["address"])
    _set_up(api, "h", devs[:1])
    _report(api, "h", addrs[1:], 2)
    _set_up(api, "h", devs[1:])
    _report(api, "h", addrs, 3)
    assert _states(api, "h") == ["assigned", "assigned"]
    store: Store = api.app.state.store  # type: ignore[attr-defined]
    clock.advance(3600)
    api.post("/v1/hosts/h/heartbeat")
    assert store.audit(down_for=timedelta(hours=2)).findings == []  # no reservation_overdue
    store.sweep()
    assert api.get("/v1/allocations/vm-9").json()["released_at"] is None
