"""A hostile tenant's attempts at identifiers and limits, each impossible now, on both databases.

- A consumer id the URLs cannot carry (``vm/1``) was claimed and set up, then could never be
  read or released (its devices were lost); whitespace, RTL-override and markup ids too.
  Consumers, projects and token names now have one alphabet each (``domain.py``,
  docs/limits.md), and everything accepted can be read and released by URL.
- A resource type whose ``config`` nested ~300 levels deep was stored, then every read of the
  catalog was a 500 for every role. Bodies now nest at most 32 levels (a 400 before decoding),
  and what was stored before reads back cut off instead of failing.
- A chunked body over the size limit was a 400; it is a 413.
- ``count: true`` was taken as 1: integers in bodies are strict.
- An admin could revoke the last admin token, two admins the last two at once.
- Default token names held characters of the secret and were shown to other tenants as event
  actors; they are made of public data now.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devassign import errors, schemas
from devassign.domain import CONSUMER_RE, MAX_JSON_DEPTH, TOO_DEEP, Role
from devassign.server.app import create_app
from devassign.server.settings import Settings
from devassign.store import Store
from devassign.store import tokens as token_store
from devassign.store.schema import resource_types
from tests.conftest import vf

# ---------------------------------------------------------------- helpers


def _ready(api: TestClient, n: int = 1) -> None:
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}).status_code == 201
    devices = [vf(f"0000:3b:{i // 8 + 1:02x}.{i % 8}") for i in range(n)]
    r = api.put("/v1/hosts/c1/inventory", json={"generation": 1, "devices": devices})
    assert r.status_code == 200 and not r.json()["refused"], r.text


def _claim_body(consumer: Any = "vm-1", **extra: Any) -> dict[str, Any]:
    request = {"name": "nic", "type": "NIC_VF_1G", **extra.pop("request", {})}
    return {"consumer": consumer, "requests": [request], **extra}


def _nothing_claimed(api: TestClient) -> None:
    assert api.get("/v1/allocations").json() == []
    assert {d["state"] for d in api.get("/v1/devices").json()} <= {"available"}


def _invalid(r: Any, *fragments: str) -> None:
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == errors.INVALID_REQUEST, err
    for fragment in fragments:
        assert fragment in err["message"], err["message"]


def _token(store: Store, role: Role, **scope: str) -> schemas.TokenCreated:
    return store.create_token(schemas.TokenCreate(role=role, **scope), actor="test")


def _bearer(made: schemas.TokenCreated) -> dict[str, str]:
    return {"Authorization": f"Bearer {made.token}"}


def _nested(depth: int) -> str:
    """JSON text of ``depth`` arrays, one in another."""
    return "[" * depth + "]" * depth


def _post_raw(api: TestClient, path: str, text: str, method: str = "POST") -> Any:
    return api.request(method, path, content=text.encode(), headers={"content-type": "application/json"})


# ---------------------------------------------------------------- 1. identifiers

BAD_CONSUMERS = [
    "vm/1",  # no route can carry it, %2F included
    "vm%2F1",
    " ",
    "\t",
    "vm 1",
    "vm-1\n",
    "a\u202eb",  # RIGHT-TO-LEFT OVERRIDE
    "\u202evm",
    "<script>alert(1)</script>",
    "vm\u00e9",  # letters outside ASCII look like others
    ".hidden",
    "-rf",
    "..",
    "a?b",
    "a#b",
    "c" * 65,
]


@pytest.mark.parametrize("consumer", BAD_CONSUMERS)
def test_a_consumer_outside_the_alphabet_is_400_and_nothing_is_claimed(
    api: TestClient, consumer: str
) -> None:
    _ready(api)
    r = api.post("/v1/claims", json=_claim_body(consumer))
    _invalid(r, "consumer")
    _nothing_claimed(api)
    _invalid(api.post("/v1/explain", json=_claim_body(consumer)), "consumer")


@pytest.mark.parametrize("project", ["", " ", "a/b", "ns:p", "p\u202e", "<b>p</b>", "p q", "p" * 65])
def test_a_project_outside_the_alphabet_is_400_in_claims_and_tokens(api: TestClient, project: str) -> None:
    _ready(api)
    _invalid(api.post("/v1/claims", json=_claim_body(project=project)), "project")
    _nothing_claimed(api)
    _invalid(api.post("/v1/tokens", json={"role": "member", "project": project}), "project")
    assert api.get("/v1/tokens").json() == []


@pytest.mark.parametrize(
    "name", ["", " ", "alice bob", "<img src=x>", "admin\u202e", "a/b", "n" * 129, "\x00"]
)
def test_a_token_name_outside_the_alphabet_is_400(api: TestClient, name: str) -> None:
    _invalid(api.post("/v1/tokens", json={"role": "admin", "name": name}), "name")
    assert api.get("/v1/tokens").json() == []


GOOD_CONSUMERS = [
    "6f1c0b4e-0000-4000-8000-000000000001",  # a UUID
    "instance-0000002a",  # a Nova instance name
    "ns:name",
    "a.b_c-d:e",
    "0",
    "libvirt",  # a path segment of its own
    "a..b",
    "C" * 64,
]


def _read_and_release(api: TestClient, consumer: str, project: str = "default") -> None:
    r = api.post("/v1/claims", json=_claim_body(consumer, project=project))
    assert r.status_code == 201, r.text
    assert r.json()["consumer"] == consumer and r.json()["project"] == project
    got = api.get(f"/v1/allocations/{consumer}")
    assert got.status_code == 200 and got.json()["consumer"] == consumer, got.text
    xml = api.get(f"/v1/allocations/{consumer}/libvirt")
    assert xml.status_code == 200 and "<hostdev" in xml.text, xml.text
    listed = api.get("/v1/allocations", params={"consumer": consumer}).json()
    assert [a["consumer"] for a in listed] == [consumer]
    assert api.delete(f"/v1/allocations/{consumer}").status_code == 204
    after = api.get(f"/v1/allocations/{consumer}")
    assert after.status_code == 200 and after.json()["state"] == "released", after.text


def test_every_accepted_consumer_can_be_read_and_released_by_url(api: TestClient) -> None:
    _ready(api, n=len(GOOD_CONSUMERS))
    for consumer in GOOD_CONSUMERS:
        _read_and_release(api, consumer, project="proj.a_b-1")
    assert {d["state"] for d in api.get("/v1/devices").json()} == {"cleaning"}


def test_a_member_reads_and_releases_its_own_consumer_by_url(secure_api: TestClient, store: Store) -> None:
    admin = _bearer(_token(store, Role.ADMIN))
    assert secure_api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}, headers=admin).status_code == 201
    report = {"generation": 1, "devices": [vf("0000:3b:02.1")]}
    assert secure_api.put("/v1/hosts/c1/inventory", json=report, headers=admin).status_code == 200
    member = _bearer(_token(store, Role.MEMBER, project="demo-1"))
    consumer = "6f1c0b4e-0000-4000-8000-000000000001"
    r = secure_api.post("/v1/claims", json=_claim_body(consumer), headers=member)
    assert r.status_code == 201, r.text
    assert secure_api.get(f"/v1/allocations/{consumer}", headers=member).status_code == 200
    assert secure_api.delete(f"/v1/allocations/{consumer}", headers=member).status_code == 204


@pytest.mark.slow
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(consumers=st.lists(st.from_regex(CONSUMER_RE, fullmatch=True), min_size=1, max_size=4, unique=True))
def test_property_any_consumer_of_the_alphabet_round_trips_by_url(
    api: TestClient, consumers: list[str]
) -> None:
    """Claimed, read, described and released by URL, whatever the id the alphabet allows."""
    if not api.get("/v1/resource-types").json():
        _ready(api, n=200)
    for consumer in consumers:
        if not any(d["state"] == "available" for d in api.get("/v1/devices").json()):
            return  # the examples used up the devices (each release sends one to cleaning)
        _read_and_release(api, consumer)


# ---------------------------------------------------------------- 2. deep JSON


@pytest.mark.parametrize("depth", [33, 260, 300, 100_000])
def test_a_type_config_nested_too_deep_is_400_and_reads_keep_working(
    secure_api: TestClient, store: Store, depth: int
) -> None:
    admin = _bearer(_token(store, Role.ADMIN))
    member = _bearer(_token(store, Role.MEMBER, project="p1"))
    agent = _bearer(_token(store, Role.AGENT, host="c1"))
    text = '{"name": "DEEP", "config": {"a": %s}}'.replace(
        "%s", _nested(depth - 2)
    )  # the body nests `depth` deep
    r = secure_api.post(
        "/v1/resource-types", content=text.encode(), headers={**admin, "content-type": "application/json"}
    )
    _invalid(r, f"at most {MAX_JSON_DEPTH} levels", str(depth))
    for who in (admin, member, agent):
        r = secure_api.get("/v1/resource-types", headers=who)
        assert r.status_code == 200 and r.json() == [], r.text


def test_bodies_at_the_depth_limit_are_taken_and_brackets_in_strings_do_not_count(api: TestClient) -> None:
    # A third party's handler: its config keys are its own (the built-in ones' are checked).
    at_limit = '{"name": "AT_LIMIT", "handler": "vendor.x", "config": {"a": %s}}'.replace(
        "%s", _nested(MAX_JSON_DEPTH - 2)
    )
    r = _post_raw(api, "/v1/resource-types", at_limit)
    assert r.status_code == 201, r.text
    over = '{"name": "OVER", "config": {"a": %s}}'.replace("%s", _nested(MAX_JSON_DEPTH - 1))
    _invalid(_post_raw(api, "/v1/resource-types", over), f"{MAX_JSON_DEPTH + 1} levels")
    in_text = {"name": "BRACKETS", "handler": "vendor.x", "config": {"pattern": "[{" * 500 + '\\"[' * 100}}
    assert api.post("/v1/resource-types", json=in_text).status_code == 201
    assert api.get("/v1/resource-types/BRACKETS").json()["config"] == in_text["config"]
    # Charset parameters and +json types are JSON too.
    deep = '{"name": "X", "config": %s}'.replace("%s", _nested(100))
    for content_type in ("application/json; charset=utf-8", "application/merge-patch+json"):
        r = api.post("/v1/resource-types", content=deep.encode(), headers={"content-type": content_type})
        assert r.status_code == 400, (content_type, r.text)
    names = [t["name"] for t in api.get("/v1/resource-types").json()]
    assert names == ["AT_LIMIT", "BRACKETS"]


def test_every_body_is_depth_limited(api: TestClient) -> None:
    _ready(api)
    deep = _nested(200)
    cases = [
        ("PATCH", "/v1/resource-types/NIC_VF_1G", '{"config": {"a": %s}}'.replace("%s", deep)),
        ("PUT", "/v1/hosts/c1/inventory", '{"generation": 2, "devices": [%s]}'.replace("%s", deep)),
        ("POST", "/v1/claims", '{"consumer": "vm-1", "requests": [%s]}'.replace("%s", deep)),
        ("POST", "/v1/explain", '{"requests": %s}'.replace("%s", deep)),
        ("POST", "/v1/tokens", '{"role": "admin", "name": %s}'.replace("%s", deep)),
        ("POST", "/v1/hosts/c1/work", '{"results": %s}'.replace("%s", deep)),
        ("PUT", "/v1/quotas/p1/NIC_VF_1G", '{"limit": %s}'.replace("%s", deep)),
    ]
    for method, path, text in cases:
        _invalid(_post_raw(api, path, text, method), f"at most {MAX_JSON_DEPTH} levels")
    assert api.get("/v1/resource-types/NIC_VF_1G").json()["config"] == {}
    assert api.get("/v1/hosts/c1").json()["generation"] == 1
    assert api.get("/v1/tokens").json() == [] and api.get("/v1/quotas").json() == []
    _nothing_claimed(api)


def test_a_config_stored_before_the_limit_reads_back_cut_off_for_every_role(
    secure_api: TestClient, store: Store
) -> None:
    deep: Any = {}
    for _ in range(300):
        deep = {"a": deep}
    now = datetime.now(UTC)
    with store.db.write() as conn:
        conn.execute(
            resource_types.insert().values(
                name="OLD",
                description="",
                handler="vendor.old",  # a third party's: its config keys are its own
                config={"k": deep},
                attribute_schema=deep,
                created_at=now,
                updated_at=now,
            )
        )
    admin = _bearer(_token(store, Role.ADMIN))
    for who in (
        admin,
        _bearer(_token(store, Role.MEMBER, project="p1")),
        _bearer(_token(store, Role.AGENT, host="c1")),
    ):
        r = secure_api.get("/v1/resource-types", headers=who)
        assert r.status_code == 200, r.text
        assert [t["name"] for t in r.json()] == ["OLD"]
    one = secure_api.get("/v1/resource-types/OLD", headers=admin)
    assert one.status_code == 200 and TOO_DEEP in one.text
    # Setting it again makes it whole.
    r = secure_api.patch("/v1/resource-types/OLD", json={"config": {"k": 1}}, headers=admin)
    assert r.status_code == 200 and r.json()["config"] == {"k": 1}
    # The update's event keeps the old (deep) config in its detail; reading it stays a 200.
    r = secure_api.get("/v1/events", headers=admin)
    assert r.status_code == 200 and r.json()[0]["action"] == "type_updated", r.text


# ---------------------------------------------------------------- 3. body size


@pytest.fixture
def small_api(store: Store) -> Iterator[TestClient]:
    app = create_app(Settings(auth=False, sweep_interval=0, max_body_bytes=1000), store=store)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_a_chunked_body_over_the_limit_is_413(small_api: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"name": "BIG", "description": "'
        for _ in range(20):
            yield b"x" * 100
        yield b'"}'

    r = small_api.post("/v1/resource-types", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == errors.BODY_TOO_LARGE
    assert small_api.get("/v1/resource-types").json() == []


def test_a_chunked_body_under_the_limit_is_read_whole(small_api: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"name": "SMALL", '
        yield b'"description": "' + b"y" * 500 + b'"}'

    r = small_api.post("/v1/resource-types", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 201, r.text
    assert r.json()["description"] == "y" * 500


def test_a_declared_length_over_the_limit_is_413_unread(small_api: TestClient) -> None:
    r = small_api.post(
        "/v1/resource-types",
        content=b'{"name": "A", "description": "' + b"z" * 2000 + b'"}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == errors.BODY_TOO_LARGE


# ---------------------------------------------------------------- 4. strict integers


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_claim_body(request={"count": True}), "count"),
        (_claim_body(request={"count": False}), "count"),
        (_claim_body(request={"count": "1"}), "count"),
        (_claim_body(request={"count": 1.0}), "count"),
        (_claim_body(request={"first_available": [{"type": "NIC_VF_1G", "count": True}]}), "count"),
        (_claim_body(request={"params": {"vlan": True}}), "vlan"),
        (_claim_body(request={"params": {"vlan": 4095}}), "vlan"),
        (_claim_body(request={"params": {"vlan": 1.0}}), "params.vlan"),
        ({"consumer": "vm-1", "extra_specs": {"hardware_resource:NIC_VF_1G": True}}, "extra_specs"),
        ({"consumer": "vm-1", "extra_specs": {"hardware_resource:NIC_VF_1G": 1.0}}, "extra_specs"),
    ],
)
def test_booleans_strings_and_floats_are_not_counts(
    api: TestClient, body: dict[str, Any], field: str
) -> None:
    _ready(api)
    _invalid(api.post("/v1/claims", json=body), field)
    _nothing_claimed(api)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"generation": True, "devices": []}, "generation"),
        ({"generation": "3", "devices": []}, "generation"),
        ({"generation": 3.0, "devices": []}, "generation"),
        ({"generation": 3, "devices": [vf("0000:3b:02.1", numa_node=True)]}, "numa_node"),
        ({"generation": 3, "devices": [vf("0000:3b:02.1", iommu_group="7")]}, "iommu_group"),
    ],
)
def test_report_integers_are_strict(api: TestClient, body: dict[str, Any], field: str) -> None:
    _ready(api)
    _invalid(api.put("/v1/hosts/c1/inventory", json=body), field)
    assert api.get("/v1/hosts/c1").json()["generation"] == 1


def test_a_whole_count_is_still_taken(api: TestClient) -> None:
    _ready(api, n=2)
    r = api.post("/v1/claims", json=_claim_body(request={"count": 2}))
    assert r.status_code == 201 and len(r.json()["devices"]) == 2, r.text


# ---------------------------------------------------------------- quotas (server/claims.py)


def test_quota_project_and_limit_follow_the_rules(api: TestClient) -> None:
    _ready(api)
    _invalid(api.put("/v1/quotas/a b/NIC_VF_1G", json={"limit": 1}), "project")
    _invalid(api.put("/v1/quotas/p\u202e/NIC_VF_1G", json={"limit": 1}), "project")
    _invalid(api.put("/v1/quotas/p1/NIC_VF_1G", json={"limit": True}), "limit")
    assert api.get("/v1/quotas").json() == []


# ---------------------------------------------------------------- 5. the last admin token


def test_the_last_admin_token_cannot_be_revoked(secure_api: TestClient, store: Store) -> None:
    first = _token(store, Role.ADMIN)
    r = secure_api.delete(f"/v1/tokens/{first.id}", headers=_bearer(first))
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    assert err["code"] == errors.INVALID_STATE and "create another admin token first" in err["message"]
    assert secure_api.get("/v1/tokens", headers=_bearer(first)).status_code == 200  # still works
    second = _token(store, Role.ADMIN)
    _token(store, Role.MEMBER, project="p1")  # not an admin: does not count
    assert secure_api.delete(f"/v1/tokens/{first.id}", headers=_bearer(second)).status_code == 200
    r = secure_api.delete(f"/v1/tokens/{second.id}", headers=_bearer(second))
    assert r.status_code == 409 and r.json()["error"]["code"] == errors.INVALID_STATE
    # Revoking a revoked token again changes nothing and is not refused.
    assert secure_api.delete(f"/v1/tokens/{first.id}", headers=_bearer(second)).status_code == 200
    assert secure_api.get("/v1/tokens", headers=_bearer(second)).status_code == 200


def test_revoking_the_last_two_admin_tokens_at_once_leaves_one(store: Store) -> None:
    """The first revocation holds its transaction open; the second must wait for it and then
    see one admin token left (on PostgreSQL a count without locks would let both pass)."""
    a, b = _token(store, Role.ADMIN), _token(store, Role.ADMIN)
    outcome: list[object] = []

    def second() -> None:
        try:
            outcome.append(store.revoke_token(b.id, actor="t2"))
        except errors.DevassignError as exc:
            outcome.append(exc)

    with store.db.write() as conn:
        token_store.revoke(conn, a.id, now=datetime.now(UTC), actor="t1")
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.5)
        assert thread.is_alive(), "the second revocation did not wait for the first"
    thread.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], errors.DevassignError), outcome
    assert outcome[0].code == errors.INVALID_STATE
    assert [t.id for t in store.list_tokens() if t.role is Role.ADMIN] == [b.id]


def test_concurrent_revocations_of_the_last_admin_tokens(store: Store) -> None:
    for _ in range(3):
        made = [_token(store, Role.ADMIN) for _ in range(2)]
        live = [t.id for t in store.list_tokens() if t.role is Role.ADMIN]
        barrier = threading.Barrier(len(live))
        results: list[str] = []

        def revoke(token_id: int, barrier: threading.Barrier = barrier, results: list[str] = results) -> None:
            barrier.wait()
            try:
                store.revoke_token(token_id, actor="race")
                results.append("revoked")
            except errors.DevassignError as exc:
                results.append(exc.code)

        threads = [threading.Thread(target=revoke, args=(i,)) for i in live]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(results) == [errors.INVALID_STATE] + ["revoked"] * (len(live) - 1), results
        assert len([t for t in store.list_tokens() if t.role is Role.ADMIN]) == 1
        assert made


# ---------------------------------------------------------------- 6. token names


def test_default_token_names_are_public_data_only(api: TestClient, store: Store) -> None:
    made = [
        _token(store, Role.ADMIN),
        _token(store, Role.AGENT, host="compute-1"),
        _token(store, Role.MEMBER, project="demo"),
        schemas.TokenCreated(**api.post("/v1/tokens", json={"role": "member", "project": "demo"}).json()),
    ]
    expected = [
        f"admin#{made[0].id}",
        f"agent:compute-1#{made[1].id}",
        f"member:demo#{made[2].id}",
        f"member:demo#{made[3].id}",
    ]
    assert [m.name for m in made] == expected
    assert [t["name"] for t in api.get("/v1/tokens").json()] == expected
    for m in made:
        secret = m.token.removeprefix(token_store.PREFIX)
        assert not any(secret[i : i + 4] in m.name for i in range(len(secret) - 3)), m.name


def test_a_members_events_name_it_without_its_secret(secure_api: TestClient, store: Store) -> None:
    admin = _bearer(_token(store, Role.ADMIN))
    secure_api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}, headers=admin)
    secure_api.put(
        "/v1/hosts/c1/inventory", json={"generation": 1, "devices": [vf("0000:3b:02.1")]}, headers=admin
    )
    member = _token(store, Role.MEMBER, project="demo")
    assert secure_api.post("/v1/claims", json=_claim_body("vm-1"), headers=_bearer(member)).status_code == 201
    actors = {
        e["actor"] for e in secure_api.get("/v1/events", params={"consumer": "vm-1"}, headers=admin).json()
    }
    assert f"member:demo#{member.id}" in actors
    secret = member.token.removeprefix(token_store.PREFIX)
    assert not any(secret[i : i + 4] in actor for actor in actors for i in range(len(secret) - 3))


def test_explicit_token_names_in_the_alphabet_are_kept(api: TestClient) -> None:
    r = api.post("/v1/tokens", json={"role": "admin", "name": "alice@example.com"})
    assert r.status_code == 201 and r.json()["name"] == "alice@example.com"
    r = api.post("/v1/tokens", json={"role": "member", "project": "demo", "name": "ci:deploy#2"})
    assert r.status_code == 201 and r.json()["name"] == "ci:deploy#2"


@pytest.mark.parametrize("name", ["Admin#1", "ADMIN#7", "Member:p1#3", "aGent:c1#2"])
def test_a_chosen_name_in_any_case_of_the_made_form_is_refused(api: TestClient, name: str) -> None:
    """A member token named ``Admin#1`` wrote events whose actor read as an admin token's."""
    r = api.post("/v1/tokens", json={"role": "member", "project": "p1", "name": name})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request", r.text
    assert api.get("/v1/tokens").json() == []


def test_two_credentials_in_one_request_are_refused(secure_api: TestClient, store: Store) -> None:
    """The first of two Authorization headers was served: a proxy that reads the last one
    authorized another caller than the one the server acted for."""
    admin, member = _bearer(_token(store, Role.ADMIN)), _bearer(_token(store, Role.MEMBER, project="p1"))
    both = [("Authorization", member["Authorization"]), ("Authorization", admin["Authorization"])]
    r = secure_api.put("/v1/quotas/p2/T", json={"limit": 5}, headers=both)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request", r.text
    assert "send one, in one header" in r.json()["error"]["message"]
    assert secure_api.get("/v1/allocations", headers=admin).status_code == 200
