"""``POST /v1/reports``: many hosts' reports in one request, each answered as its own ``PUT``.

The batch must leave the database exactly as the same reports sent one by one would (new
hosts go through a path of their own, so the two are compared row by row), and one host's
refusal must be that host's answer only.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi.testclient import TestClient

from devassign import schemas
from devassign.domain import Role
from devassign.store import Database, Store
from devassign.store.schema import devices, events, hosts, inventory
from tests.conftest import Clock, make_client, vf


def _gpu(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "address": f"0000:{0x10 + i:02x}:00.0",
        "kind": "pci",
        "type": "GPU",
        "vendor_id": "10de",
        "product_id": "20b0",
        "numa_node": i % 2,
        "iommu_group": 100 + i,
        "driver": "vfio-pci",
        "parent": None,
        "attributes": {"memory_gb": 80},
        **extra,
    }


def _catalog(api: TestClient) -> None:
    for name in ("GPU", "NIC_VF_1G"):
        assert api.post("/v1/resource-types", json={"name": name}).status_code == 201


def _batch() -> list[dict[str, Any]]:
    """New plain hosts, an unhealthy device, an existing host changed, refusals, a stolen host id."""
    return [
        {
            "host": "new-a",
            "report": {"generation": 1, "host_id": "id-a", "devices": [_gpu(0), _gpu(1), vf("0000:3b:02.1")]},
        },
        {
            "host": "new-b",
            "report": {"generation": 5, "devices": [_gpu(0, healthy=False, health_reason="ECC")]},
        },
        {"host": "old", "report": {"generation": 2, "devices": [_gpu(0), _gpu(2)]}},
        {"host": "odd", "report": {"generation": 1, "devices": [_gpu(0), {**_gpu(1), "type": "FPGA"}]}},
        {"host": "thief", "report": {"generation": 1, "host_id": "id-old", "devices": [_gpu(0)]}},
        {"host": "stale", "report": {"generation": 1, "devices": [_gpu(0)]}},
        {"host": "empty", "report": {"generation": 1, "agent_instance": "a1b2c3d4e5", "devices": []}},
    ]


def _before(api: TestClient) -> None:
    """What both databases hold before the batch: ``old`` and ``stale`` already report."""
    _catalog(api)
    r = api.put(
        "/v1/hosts/old/inventory", json={"generation": 1, "host_id": "id-old", "devices": [_gpu(0), _gpu(1)]}
    )
    assert r.status_code == 200, r.text
    assert (
        api.put("/v1/hosts/stale/inventory", json={"generation": 3, "devices": [_gpu(0)]}).status_code == 200
    )


def _state(db: Database) -> dict[str, Any]:
    """The rows a report writes, without ids and clocks (two databases compared)."""
    with db.read() as c:
        names = {r.id: r.name for r in c.execute(sa.select(hosts.c.id, hosts.c.name))}
        host_rows = sorted(
            (
                r.name,
                r.host_id,
                r.generation,
                r.marked_down,
                r.report_digest,
                r.agent_instance,
                r.agent_seen_at is None,
            )
            for r in c.execute(sa.select(hosts))
        )
        device_rows = sorted(
            (
                names[r.host_id],
                r.address,
                r.type_id,
                r.state,
                r.healthy,
                r.health_reason,
                r.numa_node,
                str(r.attributes),
            )
            for r in c.execute(sa.select(devices))
        )
        counts = sorted(
            (names[r.host_id], r.type_id, r.total, r.available, r.carved)
            for r in c.execute(sa.select(inventory))
        )
        event_rows = sorted(
            (r.action, r.host, r.device, r.type, r.message) for r in c.execute(sa.select(events))
        )
    return {"hosts": host_rows, "devices": device_rows, "inventory": counts, "events": event_rows}


def test_a_batch_leaves_what_the_same_reports_sent_one_by_one_leave(
    store: Store, clock: Clock, tmp_path: Path
) -> None:
    # The reports sent one by one go to a SQLite store beside the one under test (PostgreSQL
    # too): the rows compared are written the same way on both.
    other = Store(
        Database(f"sqlite:///{tmp_path / 'one-by-one.db'}"), down_after=timedelta(seconds=90), clock=clock
    )
    other.db.upgrade()
    with make_client(store, auth=False) as api, make_client(other, auth=False) as single:
        _before(api)
        _before(single)
        r = api.post("/v1/reports", json={"reports": _batch()})
        assert r.status_code == 200, r.text
        got = r.json()
        one_by_one = []
        for item in _batch():
            s = single.put(f"/v1/hosts/{item['host']}/inventory", json=item["report"])
            one_by_one.append((item["host"], s.status_code, s.json()))
    assert [(o["host"], o["status"]) for o in got["results"]] == [(h, st) for h, st, _ in one_by_one]
    for outcome, (_, status, body) in zip(got["results"], one_by_one, strict=True):
        if status == 200:
            assert outcome["result"] == body and outcome["error"] is None
        else:
            assert outcome["error"]["code"] == body["error"]["code"] and outcome["result"] is None
    assert (got["applied"], got["failed"]) == (5, 2)
    codes = {o["host"]: (o["error"] or {}).get("code") for o in got["results"]}
    assert codes["thief"] == "host_id_mismatch" and codes["stale"] == "stale_generation"
    assert [x["code"] for x in got["results"][3]["result"]["refused"]] == ["unknown_type"]
    assert _state(store.db) == _state(other.db)
    other.db.dispose()


def test_batch_loaded_hosts_serve_claims_and_their_next_report_changes_nothing(api: TestClient) -> None:
    _catalog(api)
    batch = [
        {"host": f"rack1-{i:02d}", "report": {"generation": 1, "devices": [_gpu(0), _gpu(1)]}}
        for i in range(20)
    ]
    r = api.post("/v1/reports", json={"reports": batch})
    assert r.status_code == 200 and r.json()["applied"] == 20, r.text
    types = {t["name"]: t for t in api.get("/v1/resource-types").json()}
    assert types["GPU"]["counts"]["available"] == 40
    c = api.post("/v1/claims", json={"consumer": "vm-1", "extra_specs": {"hardware_resource:GPU": "2"}})
    assert c.status_code == 201, c.text
    again = api.put("/v1/hosts/rack1-03/inventory", json={"generation": 2, "devices": [_gpu(0), _gpu(1)]})
    assert again.status_code == 200 and again.json()["added"] == [] and again.json()["accepted"] == 2
    assert api.get("/v1/hosts/rack1-03").json()["generation"] == 2
    # A second batch of the same hosts is a set of ordinary (unchanged) reports.
    r = api.post(
        "/v1/reports", json={"reports": [{**b, "report": {**b["report"], "generation": 3}} for b in batch]}
    )
    assert r.json()["applied"] == 20 and all(o["result"]["added"] == [] for o in r.json()["results"])
    types = {t["name"]: t for t in api.get("/v1/resource-types").json()}
    assert types["GPU"]["counts"]["available"] == 38


def test_bad_batches_are_refused_whole_with_what_to_fix(api: TestClient) -> None:
    _catalog(api)
    one = {"generation": 1, "devices": [_gpu(0)]}
    cases = {
        "each host once": {"reports": [{"host": "h1", "report": one}, {"host": "h1", "report": one}]},
        "not a host name": {"reports": [{"host": "bad name!", "report": one}]},
        "at least 1": {"reports": []},
        "at most 1000": {"reports": [{"host": f"h{i}", "report": one} for i in range(1001)]},
        "devices in one batch": {
            "reports": [
                {
                    "host": f"h{i}",
                    "report": {
                        "generation": 1,
                        "devices": [vf(f"0000:3b:{j // 8 + 1:02x}.{j % 8}") for j in range(250)],
                    },
                }
                for i in range(81)
            ]
        },
    }
    for words, body in cases.items():
        r = api.post("/v1/reports", json=body)
        assert r.status_code == 400, (words, r.status_code, r.text[:300])
        assert r.json()["error"]["code"] == "invalid_request"
        assert words in r.json()["error"]["message"], (words, r.json()["error"]["message"][:300])
    assert api.get("/v1/hosts").json() == []


def test_only_an_admin_sends_a_batch(store: Store) -> None:
    secret = store.create_token(
        schemas.TokenCreate(name="agent-a", role=Role.AGENT, host="compute-a"), "admin"
    ).token
    with make_client(store, auth=True) as api:
        body = {"reports": [{"host": "compute-a", "report": {"generation": 1, "devices": []}}]}
        r = api.post("/v1/reports", json=body, headers={"Authorization": f"Bearer {secret}"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert store.list_hosts() == []


def test_a_loaded_report_of_a_host_whose_agent_is_live_is_that_hosts_refusal(
    api: TestClient, clock: Clock
) -> None:
    """``host load`` of a file naming a host whose agent reports right now would replace that
    agent's inventory (every device removed until its next report): refused for that host
    alone, until the agent has been silent for the takeover time."""
    _catalog(api)
    live = {"generation": 5, "agent_instance": "a1b2c3d4e5", "devices": [_gpu(0), _gpu(1)]}
    assert api.put("/v1/hosts/live-1/inventory", json=live).status_code == 200
    batch = [
        {"host": "live-1", "report": {"generation": 99, "devices": []}},
        {"host": "new-1", "report": {"generation": 1, "devices": [_gpu(0)]}},
    ]
    got = api.post("/v1/reports", json={"reports": batch}).json()
    assert (got["applied"], got["failed"]) == (1, 1), got
    refusal = got["results"][0]["error"]
    assert refusal["code"] == "agent_conflict" and "live agent" in refusal["message"], refusal
    shown = {d["address"]: d["state"] for d in api.get("/v1/devices", params={"host": "live-1"}).json()}
    assert set(shown.values()) == {"available"} and api.get("/v1/hosts/live-1").json()["generation"] == 5
    clock.advance(31)  # the agent silent past the takeover time: the file is the host's word now
    again = api.post("/v1/reports", json={"reports": batch[:1]}).json()
    assert again["applied"] == 1, again


def test_a_batched_hosts_parent_loop_is_refused_as_in_its_own_report(api: TestClient) -> None:
    """The batch's fast path for new hosts stored two devices each other's parent, which a
    report of its own refuses per device (``parent_loop``)."""
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}).status_code == 201
    a, b, c = (vf(f"0000:3b:02.{i}") for i in range(3))
    a["parent"], b["parent"] = b["address"], a["address"]
    body = {"reports": [{"host": "loop-1", "report": {"generation": 1, "devices": [a, b, c]}}]}
    r = api.post("/v1/reports", json=body)
    assert r.status_code == 200, r.text
    (outcome,) = r.json()["results"]
    assert sorted(x["code"] for x in outcome["result"]["refused"]) == ["parent_loop", "parent_loop"]
    assert [d["address"] for d in api.get("/v1/devices", params={"host": "loop-1"}).json()] == [c["address"]]
