"""Gangs through the API: N instances all or none, constraints, replays, refusals, release."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from devassign import schemas
from devassign.domain import Role
from devassign.store import Store


def _gpu(i: int, **attributes: Any) -> dict[str, Any]:
    return {
        "address": f"0000:{0x10 + i:02x}:00.0",
        "kind": "pci",
        "type": "GPU",
        "vendor_id": "10de",
        "product_id": "20b0",
        "numa_node": 0,
        "iommu_group": 100 + i,
        "driver": "vfio-pci",
        "parent": None,
        "attributes": dict(attributes),
    }


def _cloud(api: TestClient, hosts: dict[str, int], **attributes_of: dict[str, Any]) -> None:
    assert api.post("/v1/resource-types", json={"name": "GPU"}).status_code == 201
    for name, n in hosts.items():
        devices = [_gpu(i, **attributes_of.get(name.replace("-", "_"), {})) for i in range(n)]
        r = api.put(f"/v1/hosts/{name}/inventory", json={"generation": 1, "devices": devices})
        assert r.status_code == 200, r.text


def _gang(instances: list[str], gpus: int = 4, **body: Any) -> dict[str, Any]:
    return {"instances": instances, "extra_specs": {"hardware_resource:GPU": str(gpus)}, **body}


def _states(api: TestClient) -> dict[str, str]:
    return {f"{d['host']}/{d['address']}": d["state"] for d in api.get("/v1/devices").json()}


def test_a_gang_gets_every_instance_its_own_allocation_and_a_replay_answers_200(api: TestClient) -> None:
    _cloud(api, {"a": 8, "b": 8})
    body = _gang(["vm-1", "vm-2", "vm-3", "vm-4"], idempotency_key="job-7")
    r = api.post("/v1/gangs", json=body)
    assert r.status_code == 201, r.text
    found = r.json()
    assert [a["consumer"] for a in found["allocations"]] == ["vm-1", "vm-2", "vm-3", "vm-4"]
    devices = [d["id"] for a in found["allocations"] for d in a["devices"]]
    assert len(devices) == len(set(devices)) == 16
    assert set(_states(api).values()) == {"reserved"}
    # Each instance is an ordinary allocation.
    assert api.get("/v1/allocations/vm-3").json()["host"] in {"a", "b"}
    again = api.post("/v1/gangs", json=body)
    assert again.status_code == 200, again.text
    assert again.json() == found
    # The gang's id comes from the key: release them all at once.
    assert api.delete(f"/v1/gangs/{found['gang']}").status_code == 204
    assert set(_states(api).values()) == {"cleaning"}
    gone = api.delete(f"/v1/gangs/{found['gang']}")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"


def test_all_or_nothing_and_the_refusal_says_how_many_fit(api: TestClient) -> None:
    _cloud(api, {"a": 8, "b": 7})
    r = api.post("/v1/gangs", json=_gang(["vm-1", "vm-2", "vm-3", "vm-4"], distinct_hosts=False))
    assert r.status_code == 400  # layout fields live under "layout"
    r = api.post("/v1/gangs", json=_gang(["vm-1", "vm-2", "vm-3", "vm-4"]))
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert error["code"] == "no_valid_host"
    assert "3 of 4 instances fit; the 4th fits on no host" in error["message"]
    assert error["placed"] == 3 and error["wanted"] == 4
    assert "closest: b:" in error["message"]
    assert set(_states(api).values()) == {"available"}  # nothing claimed
    assert api.get("/v1/allocations").json() == []


def test_distinct_hosts_and_same_rack(api: TestClient) -> None:
    _cloud(
        api,
        {"r1-a": 8, "r1-b": 8, "r2-a": 8, "r2-b": 8, "r2-c": 8},
        r1_a={"rack": "r1"},
        r1_b={"rack": "r1"},
        r2_a={"rack": "r2"},
        r2_b={"rack": "r2"},
        r2_c={"rack": "r2"},
    )
    explained = api.post(
        "/v1/gangs/explain", json=_gang(["j1", "j2", "j3"], gpus=8, layout={"same": "rack"})
    ).json()
    assert explained["fits"] and explained["same"] == {"attribute": "rack", "value": "r2"}
    assert sorted(explained["per_host"]) == ["r2-a", "r2-b", "r2-c"]
    assert api.get("/v1/allocations").json() == []  # explain claims nothing
    too_many = api.post("/v1/gangs", json=_gang([f"j{i}" for i in range(4)], gpus=8, layout={"same": "rack"}))
    assert too_many.status_code == 409
    message = too_many.json()["error"]["message"]
    assert "3 of 4 instances fit with the same rack (rack=r2" in message

    spread = api.post("/v1/gangs", json=_gang(["s1", "s2", "s3"], layout={"distinct_hosts": True}))
    assert spread.status_code == 201, spread.text
    hosts = [a["host"] for a in spread.json()["allocations"]]
    assert len(set(hosts)) == 3


def test_max_per_host(api: TestClient) -> None:
    _cloud(api, {"a": 8, "b": 8})
    r = api.post("/v1/gangs", json=_gang(["x1", "x2", "x3", "x4"], gpus=2, layout={"max_per_host": 2}))
    assert r.status_code == 201, r.text
    assert sorted(a["host"] for a in r.json()["allocations"]) == ["a", "a", "b", "b"]
    r = api.post("/v1/gangs", json=_gang([f"y{i}" for i in range(5)], gpus=1, layout={"max_per_host": 2}))
    assert r.status_code == 409
    assert "2 per host" in r.json()["error"]["message"]


def test_bad_gangs_are_400_and_held_instances_conflict(api: TestClient) -> None:
    _cloud(api, {"a": 8})
    assert api.post("/v1/gangs", json=_gang(["vm-1", "vm-1"])).status_code == 400
    assert api.post("/v1/gangs", json=_gang([])).status_code == 400
    r = api.post("/v1/gangs", json={**_gang(["vm-1"]), "consumer": "vm-9"})
    assert r.status_code == 400 and "instances" in r.json()["error"]["message"]
    assert api.post("/v1/gangs", json=_gang(["vm-1"], layout={"max_per_host": 0})).status_code == 400
    assert api.post("/v1/gangs", json=_gang(["vm-1"], layout={"same": "no such"})).status_code == 400
    held = api.post("/v1/claims", json={"consumer": "vm-2", "extra_specs": {"hardware_resource:GPU": "1"}})
    assert held.status_code == 201
    r = api.post("/v1/gangs", json=_gang(["vm-1", "vm-2"], gpus=1))
    assert r.status_code == 409 and r.json()["error"]["code"] == "consumer_conflict"
    assert api.get("/v1/allocations/vm-1").status_code == 404


def test_the_gang_counts_against_the_quota_once(api: TestClient) -> None:
    _cloud(api, {"a": 8, "b": 8})
    assert api.put("/v1/quotas/p/GPU", json={"limit": 10}).status_code == 204
    r = api.post("/v1/gangs", json=_gang(["q1", "q2", "q3"], project="p"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "quota_exceeded"
    assert "12 for the gang, 10 left" in r.json()["error"]["message"]
    assert api.post("/v1/gangs", json=_gang(["q1", "q2"], project="p")).status_code == 201
    assert api.post("/v1/gangs", json=_gang(["q3"], project="p")).status_code == 403


def test_a_member_sees_counts_not_hosts_and_releases_only_its_own(
    secure_api: TestClient, store: Store
) -> None:
    admin = store.create_token(schemas.TokenCreate(role=Role.ADMIN), "t").token
    member = store.create_token(schemas.TokenCreate(role=Role.MEMBER, project="p"), "t").token
    other = store.create_token(schemas.TokenCreate(role=Role.MEMBER, project="q"), "t").token
    as_admin = {"Authorization": f"Bearer {admin}"}
    as_p, as_q = {"Authorization": f"Bearer {member}"}, {"Authorization": f"Bearer {other}"}
    assert secure_api.post("/v1/resource-types", json={"name": "GPU"}, headers=as_admin).status_code == 201
    for name in ("a", "b"):
        devices = [_gpu(i) for i in range(8)]
        r = secure_api.put(
            f"/v1/hosts/{name}/inventory", json={"generation": 1, "devices": devices}, headers=as_admin
        )
        assert r.status_code == 200
    refused = secure_api.post("/v1/gangs", json=_gang([f"m{i}" for i in range(5)]), headers=as_p)
    assert refused.status_code == 409
    text = refused.text
    assert "4 of 5 instances fit" in text and '"a:' not in text and "closest: " not in text
    explained = secure_api.post("/v1/gangs/explain", json=_gang(["m1", "m2"]), headers=as_p).json()
    assert explained["fits"] and "per_host" not in explained and "instances" not in explained
    made = secure_api.post("/v1/gangs", json=_gang(["m1", "m2"], gang="job-1"), headers=as_p)
    assert made.status_code == 201 and made.json()["gang"] == "job-1"
    assert {a["project"] for a in made.json()["allocations"]} == {"p"}
    assert secure_api.delete("/v1/gangs/job-1", headers=as_q).status_code == 404
    assert secure_api.delete("/v1/gangs/job-1", headers=as_p).status_code == 204


def test_a_gang_id_names_one_gang(api: TestClient) -> None:
    _cloud(api, {"a": 8, "b": 8})
    assert api.post("/v1/gangs", json=_gang(["k1", "k2"], gang="job-1")).status_code == 201
    again = api.post("/v1/gangs", json=_gang(["k3"], gang="job-1"))
    assert again.status_code == 409 and again.json()["error"]["code"] == "consumer_conflict"
    assert "job-1" in again.json()["error"]["message"]
    assert api.get("/v1/allocations/k3").status_code == 404  # rolled back


def test_gang_ids_are_per_project_and_an_admin_names_the_project_to_release(api: TestClient) -> None:
    _cloud(api, {"a": 4, "b": 4})
    for project in ("blue", "red"):
        body = _gang([f"{project}-1", f"{project}-2"], gpus=1, gang="job", project=project)
        assert api.post("/v1/gangs", json=body).status_code == 201
    ambiguous = api.delete("/v1/gangs/job")
    assert ambiguous.status_code == 400 and ambiguous.json()["error"]["code"] == "invalid_request"
    assert (
        "blue, red" in ambiguous.json()["error"]["message"]
        and "project" in ambiguous.json()["error"]["message"]
    )
    assert len(api.get("/v1/allocations").json()) == 4  # nothing released
    assert api.delete("/v1/gangs/job", params={"project": "blue"}).status_code == 204
    assert sorted(a["consumer"] for a in api.get("/v1/allocations").json()) == ["red-1", "red-2"]
    assert api.delete("/v1/gangs/job").status_code == 204  # one project's now: no need to say
    assert api.get("/v1/allocations").json() == []


def test_an_instance_of_a_gang_can_be_moved_and_stays_in_its_gang(api: TestClient) -> None:
    _cloud(api, {"a": 2, "b": 2})
    assert api.post("/v1/gangs", json=_gang(["vm-1"], gpus=1, gang="g", hosts=["a"])).status_code == 201
    r = api.post("/v1/allocations/vm-1/moves", json={"host": "b"})
    assert r.status_code == 201, r.text
    results = [{"device_id": p["target_id"], "action": "setup", "ok": True} for p in r.json()["device_map"]]
    assert api.post("/v1/hosts/b/work", json={"results": results}).status_code == 200
    assert api.post("/v1/allocations/vm-1/moves/commit", json={}).status_code == 200
    moved = api.get("/v1/allocations/vm-1").json()
    assert moved["host"] == "b"
    assert api.delete("/v1/gangs/g").status_code == 204  # still the gang's: released with it
    gone = api.get("/v1/allocations/vm-1").json()
    assert (gone["state"], gone["host"]) == ("released", "b")


def _move(api: TestClient, consumer: str, host: str) -> Any:
    """Start a move; when it started, set its target up (as the host's agent would)."""
    r = api.post(f"/v1/allocations/{consumer}/moves", json={"host": host})
    if r.status_code == 201:
        results = [
            {"device_id": p["target_id"], "action": "setup", "ok": True} for p in r.json()["device_map"]
        ]
        assert api.post(f"/v1/hosts/{host}/work", json={"results": results}).status_code == 200
    return r


def test_a_moved_instance_keeps_to_its_gangs_layout(api: TestClient) -> None:
    """distinct_hosts and same: a move of an instance may not put two instances on one host
    (counting another instance's pending move there) nor leave the gang's rack."""
    racks = {"a": {"rack": "r1"}, "b": {"rack": "r1"}, "c": {"rack": "r1"}, "d": {"rack": "r2"}}
    _cloud(api, {"a": 2, "b": 2, "c": 2, "d": 2}, **racks)
    layout = {"distinct_hosts": True, "same": "rack"}
    body = _gang(["vm-1", "vm-2"], gpus=1, gang="g", hosts=["a", "b"], layout=layout)
    assert api.post("/v1/gangs", json=body).status_code == 201, body
    on = {a["consumer"]: a["host"] for a in api.get("/v1/allocations").json()}
    other = {"vm-1": on["vm-2"], "vm-2": on["vm-1"]}
    crowded = _move(api, "vm-1", other["vm-1"])
    assert crowded.status_code == 409 and crowded.json()["error"]["code"] == "gang_layout", crowded.text
    assert "at most 1 instance a host" in crowded.json()["error"]["message"]
    away = _move(api, "vm-1", "d")
    assert away.status_code == 409 and away.json()["error"]["code"] == "gang_layout", away.text
    assert "share rack=r1, and that host has rack=r2" in away.json()["error"]["message"]
    # c: another host of r1, free of instances: fine; but then vm-2 cannot follow it there.
    assert _move(api, "vm-1", "c").status_code == 201
    follow = _move(api, "vm-2", "c")
    assert follow.status_code == 409 and "moving there" in follow.json()["error"]["message"], follow.text
    assert api.post("/v1/allocations/vm-1/moves/commit").status_code == 200
    assert api.get("/v1/allocations/vm-1").json()["host"] == "c"
    # Without a layout, an instance of a gang moves where its request fits.
    assert api.delete("/v1/gangs/g").status_code == 204
    free = _gang(["vm-3", "vm-4"], gpus=1, gang="h", hosts=["d"])
    assert api.post("/v1/gangs", json=free).status_code == 201
    assert _move(api, "vm-3", "a").status_code == 201


def test_a_same_rack_gang_reads_wider_when_the_first_hosts_read_share_no_rack(api: TestClient) -> None:
    """A gang reads 4 candidate hosts per instance first (here the 8 of one claim's read, each
    in a rack of its own); the only rack with two free hosts lies beyond, in the wider read."""
    lone = {f"a{i}": 8 for i in range(8)}
    _cloud(
        api,
        {**lone, "z1": 8, "z2": 8},
        **{name: {"rack": f"r{name}"} for name in lone},
        z1={"rack": "rz"},
        z2={"rack": "rz"},
    )
    body = _gang(["j1", "j2"], gpus=8, layout={"same": "rack"})
    explained = api.post("/v1/gangs/explain", json=body).json()
    assert explained["fits"] and explained["same"] == {"attribute": "rack", "value": "rz"}
    r = api.post("/v1/gangs", json=body)
    assert r.status_code == 201, r.text
    assert sorted(a["host"] for a in r.json()["allocations"]) == ["z1", "z2"]


def test_a_gang_made_before_layouts_were_kept_replays(api: TestClient) -> None:
    """Its instances' documents lack gang_layout: resending the same gang still answers 200."""
    import sqlalchemy as sa

    from devassign.store.schema import allocations

    _cloud(api, {"a": 2, "b": 2})
    body = _gang(["vm-1", "vm-2"], gpus=1, idempotency_key="k", layout={"distinct_hosts": True})
    assert api.post("/v1/gangs", json=body).status_code == 201
    store = api.app.state.store  # type: ignore[attr-defined]
    with store.db.write() as c:
        for r in c.execute(sa.select(allocations.c.id, allocations.c.request)).all():
            old = {k: v for k, v in r.request.items() if k != "gang_layout"}
            assert old != r.request
            c.execute(allocations.update().where(allocations.c.id == r.id).values(request=old))
    assert api.post("/v1/gangs", json=body).status_code == 200
    changed = {**body, "layout": {"max_per_host": 2}}
    assert (
        api.post("/v1/gangs", json={**changed, "extra_specs": {"hardware_resource:GPU": "2"}}).status_code
        == 409
    )


def test_a_gangs_later_instances_fall_back_within_the_quota(api: TestClient) -> None:
    """first_available under a quota: the first instance takes the preferred type up to its
    limit, the next ones the alternative, as separate claims would (on hosts with both)."""
    assert api.post("/v1/resource-types", json={"name": "GPU"}).status_code == 201
    assert api.post("/v1/resource-types", json={"name": "VGPU"}).status_code == 201
    for name in ("a", "b"):
        devices = [_gpu(0), _gpu(1), {**_gpu(5), "type": "VGPU"}]
        r = api.put(f"/v1/hosts/{name}/inventory", json={"generation": 1, "devices": devices})
        assert r.status_code == 200, r.text
    for t in ("GPU", "VGPU"):
        assert api.put(f"/v1/quotas/p/{t}", json={"limit": 1}).status_code == 204
    request = {"name": "acc", "type": "GPU", "first_available": [{"type": "VGPU"}]}
    body = {"instances": ["g1", "g2"], "project": "p", "requests": [request]}
    r = api.post("/v1/gangs/explain", json=body)
    assert r.status_code == 200 and r.json()["fits"], r.text
    r = api.post("/v1/gangs", json=body)
    assert r.status_code == 201, r.text
    types = sorted(d["type"] for a in r.json()["allocations"] for d in a["devices"])
    assert types == ["GPU", "VGPU"]
    # A third instance is over both limits.
    r = api.post("/v1/gangs", json={**body, "instances": ["g3"]})
    assert r.status_code in (403, 409) and "over_quota" in r.text, r.text


def test_a_members_move_refused_for_the_gangs_layout_says_nothing_of_the_host(
    secure_api: TestClient, store: Store
) -> None:
    """A host's rack is the operators' to know: a member's move of a gang instance to a real
    host of another rack is answered as a move to a made-up host is."""
    admin = store.create_token(schemas.TokenCreate(role=Role.ADMIN), "t").token
    member = store.create_token(schemas.TokenCreate(role=Role.MEMBER, project="p"), "t").token
    as_admin, as_p = {"Authorization": f"Bearer {admin}"}, {"Authorization": f"Bearer {member}"}
    assert secure_api.post("/v1/resource-types", json={"name": "GPU"}, headers=as_admin).status_code == 201
    for name, rack in (("a", "r1"), ("b", "r1"), ("secret-host", "rack-42")):
        devices = [_gpu(i, rack=rack) for i in range(2)]
        r = secure_api.put(
            f"/v1/hosts/{name}/inventory", json={"generation": 1, "devices": devices}, headers=as_admin
        )
        assert r.status_code == 200
    layout = {"distinct_hosts": True, "same": "rack"}
    body = _gang(["vm-1", "vm-2"], gpus=1, gang="g", hosts=["a", "b"], layout=layout, project="p")
    assert secure_api.post("/v1/gangs", json=body, headers=as_admin).status_code == 201
    answers = []
    for host in ("secret-host", "no-such-host"):
        r = secure_api.post("/v1/allocations/vm-1/moves", json={"host": host}, headers=as_p)
        assert r.status_code == 409, r.text
        assert "rack-42" not in r.text and host not in r.text, r.text
        answers.append(r.json())
    assert answers[0] == answers[1] and answers[0]["error"]["code"] == "no_valid_host"
    told = secure_api.post("/v1/allocations/vm-1/moves", json={"host": "secret-host"}, headers=as_admin)
    assert told.status_code == 409 and told.json()["error"]["code"] == "gang_layout", told.text
