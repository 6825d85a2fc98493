"""A hostile review of the trust boundaries: a tenant (a member token of one project), a
compromised agent (the agent token of one host) and an anonymous caller attack the API and the
dashboard.

Each test is one attack (or a family of them). It must fail with a 4xx and change nothing:
:func:`_state` reads what an admin sees (allocations, devices, hosts, tokens, catalog, quotas,
facts, events) before and after. Attacks that still work are marked
``xfail(strict=True, reason=...)``: they fail today, and the mark must go with the fix (a
strict xfail that passes is a failure).

The cloud of :func:`_world`: hosts compute-a (bus 3b) and compute-b (bus 5e) with three VFs
each; project tenant-blue holds blue-vm on compute-a, tenant-red holds red-vm on compute-b.
"""

from __future__ import annotations

import gc
import html
import json
import re
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from devassign import schemas
from devassign.domain import Role
from devassign.scheduler import selector as selector_module
from devassign.server.app import create_app
from devassign.server.settings import Settings
from devassign.store import Store
from devassign.store.schema import devices as devices_table
from tests.conftest import vf

BLUE, RED = "tenant-blue", "tenant-red"
HOST_A, HOST_B = "compute-a", "compute-b"
HOST_ID_A, HOST_ID_B = "7a0c6f4e-0000-4000-8000-00000000000a", "7a0c6f4e-0000-4000-8000-00000000000b"
BLUE_MAC, RED_MAC = "52:54:00:aa:bb:01", "52:54:00:cc:dd:02"
SHARED_KEY = "retry-1"  # blue's idempotency key, which red may guess (or also use)
NIC_PARAMS = {"mac": {"type": "mac"}, "vlan": {"type": "integer", "min": 1, "max": 4094}}


def _bearer(store: Store, role: Role, **scope: str) -> dict[str, str]:
    secret = store.create_token(schemas.TokenCreate(role=role, **scope), "test").token
    return {"Authorization": f"Bearer {secret}"}


def _vfs(bus: str, n: int = 3) -> list[dict[str, Any]]:
    return [vf(f"0000:{bus}:02.{i}", parent=f"0000:{bus}:00.0") for i in range(1, n + 1)]


@dataclass
class World:
    api: TestClient
    store: Store
    who: dict[str, dict[str, str]]
    blue_vm: dict[str, Any]  # blue's allocation as the admin saw it made
    red_vm: dict[str, Any]

    def call(self, caller: str, method: str, path: str, **kw: Any) -> Any:
        headers = {**self.who.get(caller, {}), **kw.pop("headers", {})}
        return self.api.request(method, path, headers=headers, **kw)

    def secrets_of_blue(self, *, asked: str = "") -> list[str]:
        """What red (or compute-b's agent) must never read: blue's host, devices, consumer,
        project, MAC; less what the caller put in its own request (``asked``), which an error
        message may repeat."""
        ids = [d["id"] for d in self.blue_vm["devices"]]
        found = [HOST_A, "0000:3b:", "blue-vm", BLUE, BLUE_MAC, HOST_ID_A, *ids]
        return [s for s in found if s not in asked]


def _world(api: TestClient, store: Store) -> World:
    who = {
        "admin": _bearer(store, Role.ADMIN),
        "agent_a": _bearer(store, Role.AGENT, host=HOST_A),
        "agent_b": _bearer(store, Role.AGENT, host=HOST_B),
        "blue": _bearer(store, Role.MEMBER, project=BLUE),
        "red": _bearer(store, Role.MEMBER, project=RED),
        "anonymous": {},
    }
    r = api.post("/v1/resource-types", json={"name": "NIC_VF_1G", "params": NIC_PARAMS}, headers=who["admin"])
    assert r.status_code == 201, r.text
    for host, agent, bus, host_id in (
        (HOST_A, "agent_a", "3b", HOST_ID_A),
        (HOST_B, "agent_b", "5e", HOST_ID_B),
    ):
        report = {"generation": 1, "host_id": host_id, "devices": _vfs(bus)}
        r = api.put(f"/v1/hosts/{host}/inventory", json=report, headers=who[agent])
        assert r.status_code == 200 and r.json()["accepted"] == 3, r.text
    made = {}
    for consumer, project, host, mac in (
        ("blue-vm", BLUE, HOST_A, BLUE_MAC),
        ("red-vm", RED, HOST_B, RED_MAC),
    ):
        body = {
            "consumer": consumer,
            "project": project,
            "hosts": [host],
            "idempotency_key": SHARED_KEY,
            "requests": [{"name": "nic", "type": "NIC_VF_1G", "params": {"mac": mac, "vlan": 100}}],
        }
        r = api.post("/v1/claims", json=body, headers=who["admin"])
        assert r.status_code == 201, r.text
        made[consumer] = r.json()
    return World(api, store, who, made["blue-vm"], made["red-vm"])


@pytest.fixture
def world(secure_api: TestClient, store: Store) -> World:
    return _world(secure_api, store)


def _facts(store: Store) -> dict[str, Any]:
    with store.db.engine.connect() as conn:
        return {r.id: r.facts for r in conn.execute(sa.select(devices_table.c.id, devices_table.c.facts))}


def _state(w: World, *, events: bool = True) -> dict[str, Any]:
    """Everything an admin can read that an attack could change."""

    def get(path: str) -> Any:
        r = w.api.get(path, headers=w.who["admin"])
        assert r.status_code == 200, (path, r.text)
        return r.json()

    found: dict[str, Any] = {
        "allocations": get("/v1/allocations?include_released=true"),
        "devices": sorted(
            (d["id"], d["host"], d["address"], d["state"], d["consumer"], json.dumps(d["attributes"]))
            for d in get("/v1/devices?limit=100000")
        ),
        "hosts": sorted(
            (h["name"], h["host_id"], h["generation"], h["device_count"]) for h in get("/v1/hosts")
        ),
        "types": [(t["name"], t["handler"], t["config"], t["params"]) for t in get("/v1/resource-types")],
        "tokens": [(t["id"], t["name"], t["revoked_at"]) for t in get("/v1/tokens?revoked=true")],
        "quotas": get("/v1/quotas"),
        "facts": _facts(w.store),
    }
    if events:
        found["events"] = [e["id"] for e in get("/v1/events?limit=10000")]
    return found


def _leaked(text: str, secrets: list[str]) -> list[str]:
    return [s for s in secrets if s in text]


def _cookie(api: TestClient, headers: dict[str, str]) -> None:
    api.cookies.clear()
    api.cookies.set("devassign_token", headers["Authorization"].removeprefix("Bearer "))


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


# ====================================================================== known attacks, again


SMUGGLED_PARAMS: list[dict[str, Any]] = [
    {"mdev_uuid": "5b2f3a1e-0000-4000-8000-000000000001"},
    {"original_driver": "../../../../tmp/x"},
    {"original_driver": "vfio-pci"},
    {"pf_ifname": "../../../etc"},
    {"vf_index": 0},
    {"usb_bus_path": "../../../../dev"},
    {"mac": BLUE_MAC, "mdev_uuid": "5b2f3a1e-0000-4000-8000-000000000001"},
]


def test_claim_params_naming_a_fact_or_a_path_are_400_and_claim_nothing(world: World) -> None:
    before = _state(world)
    wrong: list[tuple[Any, ...]] = []
    for params in SMUGGLED_PARAMS:
        body: dict[str, Any] = {
            "consumer": "red-2",
            "requests": [{"name": "nic", "type": "NIC_VF_1G", "params": params}],
        }
        for path in ("/v1/claims", "/v1/explain"):
            r = world.call("red", "POST", path, json=body)
            named = any(name in r.text for name in params if name != "mac")
            if r.status_code != 400 or r.json()["error"]["code"] != "invalid_request" or not named:
                wrong.append((params, path, r.status_code, r.text[:200]))
    # and nobody can declare a fact as a param, not even an admin
    for name in sorted(schemas.FACT_NAMES):
        declared: dict[str, Any] = {"params": {name: {"type": "string"}}}
        r = world.call("admin", "PATCH", "/v1/resource-types/NIC_VF_1G", json=declared)
        if r.status_code != 400:
            wrong.append((name, "declare", r.status_code, r.text[:200]))
    assert wrong == []
    assert _state(world) == before


_L64 = "[" + ",".join(["0"] * 64) + "]"
_L40 = "[" + ",".join(["0"] * 40) + "]"
_CAT = "(" + "+".join([_L40] * 6) + ")"
COSTLY_SELECTORS = {
    "exists_one-3-deep": f"{_L64}.exists_one(a, {_L64}.exists_one(b, {_L64}.exists_one(c, true)))",
    "filter-3-deep": (
        f"size({_L64}.filter(a, size({_L64}.filter(b, size({_L64}.filter(c, true)) > 0)) > 0)) > 0"
    ),
    "map-of-map-of-list": f"size({_L64}.map(a, {_L64}.map(b, {_L64}))) > 0",
    "concatenated-lists-in-comprehensions": f"size({_CAT}.map(a, {_CAT}.map(b, 0))) > 0",
    "strings-in-comprehensions": f"{_L64}.all(a, {_L64}.all(b, size('{'x' * 200}' + '{'y' * 200}') > 0))",
    "65-item-literal": "0 in [" + ",".join(["0"] * 65) + "]",
    "65-item-map": "0 in {" + ",".join(f"{i}: {i}" for i in range(65)) + "}",
    "40-nested-calls": "size(" * 40 + "'x'" + ")" * 40 + " > 0",
    "60-negations": "-" * 60 + "1 < 0",
    "40-nested-lists": "size(" + "[" * 40 + "1" + "]" * 40 + ") > 0",
    "40-nested-ternaries": "true ? " * 40 + "true" + " : false" * 40,
    "5000-parentheses": "(" * 5000 + "true" + ")" * 5000,
    "pattern-not-a-literal": "device.driver.matches(device.driver)",
    "quadratic-over-an-attribute": "device.attributes.l.all(a, device.attributes.l.all(b, a == b))",
}


def test_costly_selectors_are_400_before_they_run(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    evaluated = [0]
    real = selector_module.evaluate

    def counting(sel: Any, value: dict[str, Any]) -> bool:
        evaluated[0] += 1
        return real(sel, value)

    monkeypatch.setattr(selector_module, "evaluate", counting)
    monkeypatch.setattr(selector_module, "_RESULTS", {})
    before = _state(world)
    wrong: list[tuple[Any, ...]] = []
    for name, selector in COSTLY_SELECTORS.items():
        body = {"consumer": "red-2", "requests": [{"name": "nic", "type": "NIC_VF_1G", "selector": selector}]}
        for path in ("/v1/claims", "/v1/explain"):
            r = world.call("red", "POST", path, json=body)
            if r.status_code != 400 or r.json()["error"]["code"] != "invalid_selector":
                wrong.append((name, path, r.status_code, r.text[:200]))
    assert wrong == []
    assert evaluated[0] == 0
    assert _state(world) == before


BIG = 20_000


@pytest.mark.slow
def test_capacity_and_explain_over_a_20000_device_host_are_bounded_and_name_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.who["agent_huge"] = _bearer(world.store, Role.AGENT, host="huge")
    shapes = ("fast", "slow", "gold", "lead")
    devices = [
        vf(
            f"0000:{0x10 + i // 256:02x}:{(i // 8) % 32:02x}.{i % 8}",
            parent="0000:0f:00.0",
            attributes={"tag": shapes[i % 4]},
        )
        for i in range(BIG)
    ]
    r = world.call(
        "agent_huge", "PUT", "/v1/hosts/huge/inventory", json={"generation": 1, "devices": devices}
    )
    assert r.status_code == 200 and r.json()["accepted"] == BIG, r.text[:300]
    evaluated = [0]
    real = selector_module.evaluate

    def counting(sel: Any, value: dict[str, Any]) -> bool:
        evaluated[0] += 1
        return real(sel, value)

    monkeypatch.setattr(selector_module, "evaluate", counting)
    monkeypatch.setattr(selector_module, "_RESULTS", {})
    r = world.call("red", "GET", "/v1/capacity", params={"spec": "hardware_resource:NIC_VF_1G=80"})
    assert r.status_code == 200 and r.json() == {"total": 250, "truncated": False}, r.text
    selected = {
        "requests": [
            {"name": "nic", "type": "NIC_VF_1G", "count": 3, "selector": "device.attributes.tag == 'gold'"}
        ]
    }
    r = world.call("red", "POST", "/v1/explain", json=selected)
    assert r.status_code == 200 and r.json()["fits"] is True, r.text[:300]
    assert evaluated[0] <= len(shapes) + 6  # per class of identical devices, not per device
    assert not _leaked(r.text, ["huge", HOST_A, HOST_B, "0000:"])


def test_an_agent_reads_no_other_host_through_the_api_or_the_dashboard(world: World) -> None:
    blue_device = world.blue_vm["devices"][0]["id"]
    a_devices = [d.id for d in world.store.list_devices(host=HOST_A)]
    before = _state(world)
    refused = [
        ("GET", f"/v1/devices?host={HOST_A}"),
        ("GET", f"/v1/events?host={HOST_A}"),
        ("GET", f"/v1/hosts/{HOST_A}"),
        ("GET", f"/v1/hosts/{HOST_A}/work"),
        ("POST", f"/v1/hosts/{HOST_A}/heartbeat"),
        ("GET", f"/ui/devices?host={HOST_A}"),
        ("GET", f"/ui/hosts/{HOST_A}"),
        ("GET", f"/ui/events?host={HOST_A}"),
    ]
    for method, path in refused:
        r = world.call("agent_b", method, path)
        assert r.status_code == 403, (path, r.status_code)
        assert not _leaked(r.text, world.secrets_of_blue(asked=path)), path
    hidden = [
        f"/v1/devices/{blue_device}",
        f"/ui/devices/{blue_device}",
        "/v1/allocations/blue-vm",
        "/v1/allocations/blue-vm/libvirt",
    ]
    for path in hidden:
        r = world.call("agent_b", "GET", path)
        assert r.status_code == 404, (path, r.status_code)
        assert not _leaked(r.text, world.secrets_of_blue(asked=path)), path
    # listings without a host filter, or with filters naming A's things, are B's only
    for path in (
        "/v1/devices",
        "/v1/devices?address=0000:3b:02.1",
        "/v1/hosts",
        "/v1/allocations",
        f"/v1/allocations?host={HOST_A}",
        "/v1/allocations?consumer=blue-vm&include_released=true",
        f"/v1/allocations?project={BLUE}",
        "/v1/events?consumer=blue-vm",
        f"/v1/events?device={blue_device}",
        "/v1/events?device=0000:3b:02.1",
        "/ui/",
        "/ui/hosts",
        "/ui/allocations?consumer=blue-vm",
        "/ui/events?consumer=blue-vm",
        f"/ui/events?device={blue_device}",
    ):
        r = world.call("agent_b", "GET", path)
        assert r.status_code in (200, 403), (path, r.status_code)
        secrets = [HOST_A, "blue-vm", BLUE, BLUE_MAC, HOST_ID_A, "0000:3b:", *a_devices]
        assert not _leaked(r.text, [s for s in secrets if s not in path]), (path, r.text[:300])
    # writes for host A
    r = world.call("agent_b", "PUT", f"/v1/hosts/{HOST_A}/inventory", json={"generation": 9, "devices": []})
    assert r.status_code == 403
    result = {"results": [{"device_id": blue_device, "action": "cleanup", "ok": True}]}
    assert world.call("agent_b", "POST", f"/v1/hosts/{HOST_A}/work", json=result).status_code == 403
    assert _state(world) == before


def test_an_unregistered_agent_name_cannot_take_another_hosts_id(world: World) -> None:
    world.who["evil"] = _bearer(world.store, Role.AGENT, host="evil")
    before = _state(world, events=False)
    for host_id in (HOST_ID_A, HOST_ID_B):
        report = {"generation": 99, "host_id": host_id, "devices": _vfs("3b")}
        r = world.call("evil", "PUT", "/v1/hosts/evil/inventory", json=report)
        assert r.status_code == 409 and r.json()["error"]["code"] == "host_id_mismatch", r.text
    # a registered agent cannot either
    r = world.call(
        "agent_b",
        "PUT",
        f"/v1/hosts/{HOST_B}/inventory",
        json={"generation": 99, "host_id": HOST_ID_A, "devices": []},
    )
    assert r.status_code == 409, r.text
    assert _state(world, events=False) == before
    assert world.call("admin", "GET", "/v1/hosts/evil").status_code == 404


BAD_CONSUMERS = [
    "vm/1",
    " ",
    "\t",
    "vm 1",
    "\u202evm",
    "<script>alert(1)</script>",
    "vm\n",
    "\uff56m1",
    "vm\u200b1",
    "..",
    "-vm",
    "v" * 65,
    "vm%2F1",
    "vm\\1",
    "vm?x=1",
    "vm#1",
]


def test_consumer_ids_outside_the_alphabet_are_400(world: World) -> None:
    before = _state(world)
    wrong: list[tuple[Any, ...]] = []
    for consumer in BAD_CONSUMERS:
        body = {"consumer": consumer, "requests": [{"name": "nic", "type": "NIC_VF_1G"}]}
        r = world.call("red", "POST", "/v1/claims", json=body)
        if r.status_code != 400:
            wrong.append((consumer, r.status_code, r.text[:200]))
    assert wrong == []
    assert _state(world) == before


def test_deeply_nested_json_is_400_at_the_edge_for_every_caller(world: World) -> None:
    before = _state(world)
    deep = _nested(300)
    attempts = [
        ("admin", "POST", "/v1/resource-types", {"name": "DEEP", "config": deep}),
        ("admin", "PATCH", "/v1/resource-types/NIC_VF_1G", {"config": deep}),
        (
            "red",
            "POST",
            "/v1/claims",
            {"consumer": "red-2", "requests": [{"name": "n", "type": "NIC_VF_1G", "params": deep}]},
        ),
        ("red", "POST", "/v1/explain", {"extra_specs": deep}),
        (
            "agent_b",
            "PUT",
            f"/v1/hosts/{HOST_B}/inventory",
            {"generation": 5, "devices": [vf("0000:5e:02.1", attributes=deep)]},
        ),
        (
            "agent_b",
            "POST",
            f"/v1/hosts/{HOST_B}/work",
            {"results": [{"device_id": "x", "action": "setup", "ok": True, "facts": deep}]},
        ),
        ("anonymous", "POST", "/v1/claims", deep),
    ]
    for caller, method, path, body in attempts:
        r = world.call(caller, method, path, json=body)
        assert r.status_code == 400, (caller, path, r.text[:200])
        assert "levels" in r.json()["error"]["message"]
    assert _state(world) == before
    assert world.call("red", "GET", "/v1/resource-types").status_code == 200


def test_agents_never_claim_explain_read_quotas_or_capacity_or_release(world: World) -> None:
    before = _state(world)
    claim = {"consumer": "agent-vm", "requests": [{"name": "nic", "type": "NIC_VF_1G"}]}
    for agent in ("agent_a", "agent_b"):
        for method, path, body in (
            ("POST", "/v1/claims", claim),
            ("POST", "/v1/explain", claim),
            ("GET", "/v1/quotas", None),
            ("GET", "/v1/capacity?spec=hardware_resource:NIC_VF_1G=1", None),
            ("DELETE", "/v1/allocations/blue-vm", None),  # on compute-a: agent_a's own host
            ("DELETE", "/v1/allocations/red-vm", None),
            ("GET", "/ui/explain?specs=hardware_resource:NIC_VF_1G%3D1", None),
            ("POST", "/v1/tokens", {"role": "admin"}),
            ("PUT", "/v1/quotas/p/NIC_VF_1G", {"limit": 1}),
            ("POST", f"/v1/devices/{world.blue_vm['devices'][0]['id']}/clear", {}),
        ):
            r = (
                world.call(agent, method, path, json=body)
                if body is not None
                else world.call(agent, method, path)
            )
            assert r.status_code == 403, (agent, method, path, r.status_code)
    assert _state(world) == before


def test_members_learn_no_host_device_or_address_from_explain_capacity_or_a_409(world: World) -> None:
    # One more host with a GPU, so constraints and alternatives have something to refuse.
    world.call("admin", "POST", "/v1/resource-types", json={"name": "GPU"})
    every_host = [HOST_A, HOST_B, "0000:3b:", "0000:5e:", HOST_ID_A, HOST_ID_B]
    every_host += [d.id for d in world.store.list_devices(limit=1000)]
    every_host += ["blue-vm", "red-vm", BLUE_MAC, RED_MAC]
    before = _state(world)
    bodies: list[dict[str, Any]] = [
        {"requests": [{"name": "n", "type": "NIC_VF_1G", "count": 3}]},
        {
            "requests": [{"name": "n", "type": "NIC_VF_1G", "count": 2}, {"name": "g", "type": "GPU"}],
            "constraints": [{"match": "numa_node"}],
        },
        {
            "requests": [
                {
                    "name": "n",
                    "type": "NIC_VF_1G",
                    "count": 3,
                    "first_available": [{"type": "GPU", "count": 2}],
                }
            ]
        },
        {
            "requests": [{"name": "n", "type": "NIC_VF_1G", "count": 2}],
            "constraints": [{"distinct": "parent"}],
        },
        {
            "requests": [
                {"name": "n", "type": "NIC_VF_1G", "count": 2, "selector": "device.address == '0000:3b:02.2'"}
            ]
        },
        {"requests": [{"name": "n", "type": "NIC_VF_1G", "count": 3}], "constraints": [{"match": "parent"}]},
    ]
    for body in bodies:
        r = world.call("red", "POST", "/v1/explain", json=body)
        assert r.status_code == 200, r.text
        assert "placements" not in r.json() and "hosts" not in r.json()
        assert not _leaked(r.text, every_host), (body, r.text)
        r = world.call("red", "POST", "/v1/claims", json={**body, "consumer": "red-2"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "no_valid_host", r.text
        assert not _leaked(r.text, every_host), (body, r.text)
        r = world.call("red", "POST", "/v1/capacity", json=body)  # the request form, if served
        assert r.status_code in (200, 405), r.text
        assert not _leaked(r.text, every_host), (body, r.text)
    r = world.call("red", "GET", "/v1/capacity", params={"spec": "hardware_resource:NIC_VF_1G=1"})
    assert r.status_code == 200 and "per_host" not in r.json()
    _cookie(world.api, world.who["red"])
    for specs in ("hardware_resource:NIC_VF_1G=3", "hardware_resource:NIC_VF_1G=1"):
        r = world.api.get("/ui/explain", params={"specs": specs})
        assert r.status_code == 200 and not _leaked(r.text, every_host), r.text
    assert _state(world) == before


def test_token_names_with_unsafe_characters_are_400_and_defaults_are_public(world: World) -> None:
    before = _state(world)
    wrong: list[tuple[Any, ...]] = []
    for name in ("has space", "a/b", "\u202eadmin", "<b>x</b>", "x\ny", "", "n" * 129, "-x", "x\u200by"):
        r = world.call("admin", "POST", "/v1/tokens", json={"role": "member", "project": RED, "name": name})
        if r.status_code != 400:
            wrong.append((name, r.status_code, r.text[:200]))
    assert wrong == []
    assert _state(world) == before
    made = world.call("admin", "POST", "/v1/tokens", json={"role": "member", "project": RED}).json()
    assert made["name"] == f"member:{RED}#{made['id']}"
    agent = world.call("admin", "POST", "/v1/tokens", json={"role": "agent", "host": HOST_B}).json()
    assert agent["name"] == f"agent:{HOST_B}#{agent['id']}"
    for secret_part in (made["token"][3:10], made["token"][-7:], agent["token"][3:10]):
        assert secret_part not in json.dumps(world.call("red", "GET", "/v1/events?limit=10000").json())


def test_counts_are_strict_integers(world: World) -> None:
    before = _state(world)
    wrong: list[tuple[Any, ...]] = []
    for count in (True, False, "1", 1.0, 1e0, "0x1", [1], None, {"n": 1}):
        body = {"consumer": "red-2", "requests": [{"name": "nic", "type": "NIC_VF_1G", "count": count}]}
        r = world.call("red", "POST", "/v1/claims", json=body)
        if r.status_code != 400:
            wrong.append((count, r.status_code, r.text[:200]))
    assert wrong == []
    assert _state(world) == before


def test_the_last_admin_token_cannot_be_revoked(world: World) -> None:
    (admin,) = [t for t in world.call("admin", "GET", "/v1/tokens").json() if t["role"] == "admin"]
    before = _state(world)
    r = world.call("admin", "DELETE", f"/v1/tokens/{admin['id']}")
    assert r.status_code == 409, r.text
    assert _state(world) == before
    assert world.call("admin", "GET", "/v1/tokens").status_code == 200


@pytest.fixture
def small_api(store: Store) -> Iterator[TestClient]:
    settings = Settings(db_url=store.db.url, auth=True, sweep_interval=0, max_body_bytes=4096)
    with TestClient(create_app(settings, store=store), raise_server_exceptions=False) as client:
        yield client


def test_a_chunked_or_declared_body_over_the_limit_is_413(small_api: TestClient, store: Store) -> None:
    world = _world(small_api, store)
    before = _state(world)
    claim = json.dumps(
        {
            "consumer": "red-2",
            "requests": [{"name": "n", "type": "NIC_VF_1G"}],
            "extra_specs": {"hw:x": "y" * 8000},
        }
    )

    def chunks() -> Iterator[bytes]:
        data = claim.encode()
        for i in range(0, len(data), 1000):
            yield data[i : i + 1000]

    headers = {**world.who["red"], "content-type": "application/json"}
    r = small_api.post("/v1/claims", content=chunks(), headers=headers)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large", r.text
    r = small_api.post("/v1/claims", content=claim, headers=headers)
    assert r.status_code == 413, r.text
    r = small_api.post(
        "/ui/login", content=chunks(), headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert r.status_code == 413
    assert _state(world) == before


# ====================================================================== tenants across projects


def test_a_member_cannot_act_or_read_for_another_project(world: World) -> None:
    before = _state(world)
    claim = {"consumer": "red-2", "project": BLUE, "requests": [{"name": "nic", "type": "NIC_VF_1G"}]}
    for method, path, body in (
        ("POST", "/v1/claims", claim),
        ("POST", "/v1/explain", claim),
        ("GET", f"/v1/quotas?project={BLUE}", None),
        ("GET", f"/v1/allocations?project={BLUE}", None),
        ("GET", f"/v1/events?host={HOST_A}", None),
        ("GET", "/v1/devices", None),
        ("GET", "/v1/hosts", None),
        ("GET", f"/v1/hosts/{HOST_A}", None),
        ("PUT", f"/v1/quotas/{RED}/NIC_VF_1G", {"limit": 100}),
        ("GET", f"/ui/allocations?project={BLUE}", None),
        ("GET", "/ui/devices", None),
        ("GET", f"/ui/hosts/{HOST_A}", None),
    ):
        r = (
            world.call("red", method, path, json=body)
            if body is not None
            else world.call("red", method, path)
        )
        assert r.status_code == 403, (method, path, r.status_code)
        assert not _leaked(r.text, world.secrets_of_blue(asked=path + json.dumps(body))), path
    assert _state(world) == before


def test_filters_never_cross_projects(world: World) -> None:
    blue_device = world.blue_vm["devices"][0]["id"]
    before = _state(world)
    for path in (
        "/v1/allocations/blue-vm",
        "/v1/allocations/blue-vm/libvirt",
    ):
        r = world.call("red", "GET", path)
        assert r.status_code == 404, (path, r.text)
        assert not _leaked(r.text, world.secrets_of_blue(asked=path)), path
    assert world.call("red", "DELETE", "/v1/allocations/blue-vm").status_code == 404
    for path in (
        "/v1/allocations?consumer=blue-vm&include_released=true",
        "/v1/events?consumer=blue-vm",
        f"/v1/events?device={blue_device}",
        "/v1/events?device=0000:3b:02.1",
        "/v1/events?limit=10000",
        "/v1/quotas",
        "/ui/",
        "/ui/allocations?consumer=blue-vm&released=true",
        "/ui/events?consumer=blue-vm",
        f"/ui/events?device={blue_device}",
    ):
        r = world.call("red", "GET", path)
        assert r.status_code == 200, (path, r.text)
        assert not _leaked(r.text, world.secrets_of_blue(asked=path)), (path, r.text[:500])
    # red's own libvirt XML carries red's MAC, and only red's
    xml = world.call("red", "GET", "/v1/allocations/red-vm/libvirt").text
    assert RED_MAC in xml and BLUE_MAC not in xml
    assert _state(world) == before


def test_an_idempotency_key_shared_with_another_project_does_not_replay_when_a_host_fits(
    world: World,
) -> None:
    before = _state(world)
    body = {
        "consumer": "blue-vm",
        "idempotency_key": SHARED_KEY,
        "requests": [{"name": "nic", "type": "NIC_VF_1G"}],
    }
    r = world.call("red", "POST", "/v1/claims", json=body)
    assert r.status_code == 409 and r.json()["error"]["code"] == "consumer_conflict", r.text
    assert not _leaked(r.text, [HOST_A, "0000:3b:", BLUE_MAC, *[d["id"] for d in world.blue_vm["devices"]]])
    assert _state(world) == before


def test_a_replay_never_answers_another_projects_allocation(world: World) -> None:
    before = _state(world)
    # red guesses blue's consumer and key, and asks for more than any host has: the refusal
    # path looks for a replay of the consumer, whatever its project
    body = {
        "consumer": "blue-vm",
        "idempotency_key": SHARED_KEY,
        "requests": [{"name": "nic", "type": "NIC_VF_1G", "count": 9}],
    }
    r = world.call("red", "POST", "/v1/claims", json=body)
    assert _state(world) == before
    assert not _leaked(r.text, world.secrets_of_blue(asked="blue-vm")), r.text
    assert r.status_code in (404, 409), r.text


def test_a_consumer_conflict_names_no_other_project(world: World) -> None:
    before = _state(world)
    body = {"consumer": "blue-vm", "requests": [{"name": "nic", "type": "NIC_VF_1G"}]}
    r = world.call("red", "POST", "/v1/claims", json=body)
    assert r.status_code == 409, r.text
    assert _state(world) == before
    assert BLUE not in r.text, r.text


# ====================================================================== tokens and the dashboard


def test_a_revoked_token_stops_at_once_on_this_replica(world: World) -> None:
    red_id = next(t["id"] for t in world.call("admin", "GET", "/v1/tokens").json() if t["project"] == RED)
    b_id = next(t["id"] for t in world.call("admin", "GET", "/v1/tokens").json() if t["host"] == HOST_B)
    # warm the token cache: the API, the dashboard (cookie and header), the agent
    assert world.call("red", "GET", "/v1/allocations").status_code == 200
    _cookie(world.api, world.who["red"])
    assert world.api.get("/ui/allocations").status_code == 200
    assert world.call("agent_b", "POST", f"/v1/hosts/{HOST_B}/heartbeat").status_code == 204
    for token_id in (red_id, b_id):
        assert world.call("admin", "DELETE", f"/v1/tokens/{token_id}").status_code == 200
    before = _state(world, events=False)
    assert world.call("red", "GET", "/v1/allocations").status_code == 401
    r = world.call(
        "red",
        "POST",
        "/v1/claims",
        json={"consumer": "red-3", "requests": [{"name": "n", "type": "NIC_VF_1G"}]},
    )
    assert r.status_code == 401
    r = world.api.get("/ui/allocations", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")
    assert "devassign_token=" in r.headers.get("set-cookie", "")  # the stale cookie is cleared
    world.api.cookies.clear()
    assert world.call("red", "GET", "/ui/allocations", follow_redirects=False).status_code == 303
    assert world.call("agent_b", "POST", f"/v1/hosts/{HOST_B}/heartbeat").status_code == 401
    r = world.call("agent_b", "PUT", f"/v1/hosts/{HOST_B}/inventory", json={"generation": 7, "devices": []})
    assert r.status_code == 401
    r = world.api.post("/ui/login", data={"token": world.who["red"]["Authorization"][7:], "next": "/ui/"})
    assert r.status_code == 401 and "set-cookie" not in r.headers
    assert _state(world, events=False) == before


def test_the_dashboard_cookie_is_httponly_strict_and_secure_over_https(world: World) -> None:
    secret = world.who["red"]["Authorization"][7:]
    for base, secure in (("http://testserver", False), ("https://testserver", True)):
        world.api.base_url = base
        world.api.cookies.clear()
        r = world.api.post("/ui/login", data={"token": secret, "next": "/ui/"}, follow_redirects=False)
        assert r.status_code == 303, r.text
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
        assert ("; secure" in cookie) is secure, cookie
    # the cookie is not a key to the API
    world.api.cookies.clear()
    world.api.cookies.set("devassign_token", secret)
    assert world.api.get("/v1/allocations").status_code == 401


OFF_SITE = [
    "https://evil.example/",
    "//evil.example/ui/",
    "/\\evil.example",
    "/ui\\..\\..\\evil.example",
    "\\\\evil.example",
    "javascript:alert(1)",
    "/ui/\r\nSet-Cookie: devassign_token=attacker",
    "/ui/\r\nLocation: https://evil.example",
    " https://evil.example",
    "\thttps://evil.example",
    "/uI//evil.example",
    "http:/evil.example",
]


def test_sign_in_never_redirects_off_the_dashboard_or_splits_headers(world: World) -> None:
    secret = world.who["red"]["Authorization"][7:]
    for target in OFF_SITE:
        world.api.cookies.clear()
        r = world.api.post("/ui/login", data={"token": secret, "next": target}, follow_redirects=False)
        assert r.status_code == 303, (target, r.text)
        location = r.headers["location"]
        assert location.startswith("/ui") and not location.startswith("//"), (target, location)
        assert "\r" not in location and "\n" not in location and "\\" not in location, (target, location)
        assert len(r.headers.get_list("set-cookie")) == 1, (target, r.headers)
        assert "attacker" not in r.headers["set-cookie"], target
        # the form carries the target back only as a dashboard path, escaped
        page = world.api.get("/ui/login", params={"next": target})
        (echoed,) = re.findall(r'name="next" value="([^"]*)"', page.text)
        echoed = html.unescape(echoed)
        assert page.status_code == 200 and echoed.startswith("/ui") and not echoed.startswith("//"), target
        assert "\\" not in echoed, target
    # signed out, a page sends the browser to the form with a relative next, never off site
    world.api.cookies.clear()
    r = world.api.get("/ui/events?consumer=x", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/login?next=%2Fui%2Fevents")


def test_the_login_page_escapes_what_it_echoes(world: World) -> None:
    hostile = '/ui/"><script>alert(1)</script><input value="'
    r = world.api.get("/ui/login", params={"next": hostile})
    assert r.status_code == 200
    assert "<script>alert(1)</script>" not in r.text
    r = world.api.post("/ui/login", data={"token": "<script>alert(2)</script>", "next": hostile})
    assert r.status_code == 401 and "<script>alert" not in r.text


def test_a_cross_site_sign_in_is_refused(world: World) -> None:
    secret = world.who["red"]["Authorization"][7:]
    world.api.cookies.clear()
    r = world.api.post(
        "/ui/login",
        data={"token": secret, "next": "/ui/"},
        headers={
            "Origin": "https://evil.example",
            "Sec-Fetch-Site": "cross-site",
            "Referer": "https://evil.example/x",
        },
        follow_redirects=False,
    )
    assert "set-cookie" not in r.headers, r.headers
    assert 400 <= r.status_code < 500


def test_unknown_bearer_secrets_are_not_kept_in_memory(world: World) -> None:
    sizes = 40, 256 * 1024
    world.call("anonymous", "GET", "/v1/allocations", headers={"Authorization": "Bearer warm-up"})
    gc.collect()
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        for i in range(sizes[0]):
            token = f"da_{i:04d}" + "x" * sizes[1]
            r = world.call(
                "anonymous", "GET", "/v1/allocations", headers={"Authorization": f"Bearer {token}"}
            )
            assert r.status_code == 401
        gc.collect()
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 10 MiB of secrets went in; a bounded cache of hashes keeps a few kilobytes
    assert kept - start < 2 * 1024 * 1024, f"{(kept - start) / 2**20:.1f} MiB kept"


# ====================================================================== paths, numbers, width


def test_path_traversal_in_path_parameters_reaches_nothing(world: World) -> None:
    before = _state(world)
    blue_device = world.blue_vm["devices"][0]["id"]
    attempts = [
        ("agent_b", "GET", f"/v1/hosts/{HOST_B}%2F..%2F{HOST_A}/work"),
        ("agent_b", "GET", f"/v1/hosts/..%2F{HOST_A}"),
        ("agent_b", "GET", f"/v1/hosts/{HOST_B}/..%2F..%2Fhosts%2F{HOST_A}%2Fwork"),
        ("agent_b", "POST", f"/v1/hosts/{HOST_B}%2F..%2F{HOST_A}/heartbeat"),
        ("agent_b", "GET", f"/ui/hosts/{HOST_B}%2F..%2F{HOST_A}"),
        ("agent_b", "GET", f"/v1/devices/{blue_device}%2F..%2F"),
        ("agent_b", "GET", f"/v1/devices/..%2F{blue_device}"),
        ("agent_b", "GET", f"/v1/hosts/{HOST_A}%00/work"),
        ("agent_b", "GET", f"/v1/hosts/{HOST_A}%20/work"),
        ("agent_b", "GET", f"/v1/hosts/{HOST_A.upper()}/work"),
        ("red", "GET", "/v1/allocations/red-vm%2F..%2Fblue-vm"),
        ("red", "GET", "/v1/allocations/..%2Fblue-vm/libvirt"),
        ("red", "DELETE", "/v1/allocations/red-vm%2F..%2Fblue-vm"),
        ("red", "GET", "/v1/allocations/%2e%2e%2fblue-vm"),
        ("red", "GET", "/v1/resource-types/..%2F..%2Ftokens"),
        ("red", "PUT", f"/v1/quotas/{RED}%2F..%2F{BLUE}/NIC_VF_1G"),
        ("anonymous", "GET", "/ui/..%2Fv1%2Ftokens"),
        ("anonymous", "GET", "/healthz/..%2F..%2Fv1%2Ftokens"),
        ("anonymous", "GET", "/metrics/..%2Fv1%2Fallocations"),
    ]
    for caller, method, path in attempts:
        r = world.call(caller, method, path, follow_redirects=False)
        assert 300 <= r.status_code < 500, (caller, method, path, r.status_code, r.text[:200])
        leaks = [*world.secrets_of_blue(asked=path), "da_"]
        assert not _leaked(r.text, leaks), (path, r.text[:300])
    assert _state(world) == before


EDGE_NUMBERS = [
    ("red", "GET", "/v1/events?before=-1", None),
    ("red", "GET", "/v1/events?before=9223372036854775808", None),
    ("red", "GET", "/v1/events?before=" + "9" * 5000, None),
    ("red", "GET", "/v1/events?before=1e3", None),
    ("red", "GET", "/v1/events?limit=%EF%BC%91%EF%BC%90", None),  # fullwidth digits
    ("red", "GET", "/v1/events?limit=0", None),
    ("red", "GET", "/v1/allocations?limit=100001", None),
    ("red", "GET", "/v1/allocations?limit=-1", None),
    ("agent_b", "GET", "/v1/devices?offset=9223372036854775808", None),
    ("agent_b", "GET", "/v1/devices?limit=NaN", None),
    ("admin", "DELETE", "/v1/tokens/99999999999999999999", None),
    ("admin", "DELETE", "/v1/tokens/-1", None),
    ("admin", "PUT", f"/v1/quotas/{RED}/NIC_VF_1G", {"limit": 2**31}),
    ("admin", "PUT", f"/v1/quotas/{RED}/NIC_VF_1G", {"limit": -1}),
    ("admin", "PUT", f"/v1/quotas/{RED}/NIC_VF_1G", {"limit": 1.0}),
    ("admin", "PUT", f"/v1/quotas/{RED}/NIC_VF_1G", {"limit": True}),
    (
        "red",
        "POST",
        "/v1/claims",
        {"consumer": "r2", "requests": [{"name": "n", "type": "NIC_VF_1G", "count": 257}]},
    ),
    (
        "red",
        "POST",
        "/v1/claims",
        {"consumer": "r2", "requests": [{"name": "n", "type": "NIC_VF_1G", "count": 0}]},
    ),
    (
        "red",
        "POST",
        "/v1/claims",
        {"consumer": "r2", "requests": [{"name": "n", "type": "NIC_VF_1G", "count": 2**64}]},
    ),
    (
        "red",
        "POST",
        "/v1/claims",
        {"consumer": "r2", "requests": [{"name": "n", "type": "NIC_VF_1G", "params": {"vlan": 2**70}}]},
    ),
    (
        "red",
        "POST",
        "/v1/claims",
        {"consumer": "r2", "requests": [{"name": "n", "type": "NIC_VF_1G", "params": {"vlan": -1}}]},
    ),
    (
        "red",
        "POST",
        "/v1/claims",
        {"consumer": "r2", "requests": [{"name": "n", "type": "NIC_VF_1G", "params": {"vlan": 100.0}}]},
    ),
    ("red", "POST", "/v1/claims", {"consumer": "r2", "extra_specs": {"hardware_resource:NIC_VF_1G": "-1"}}),
    (
        "red",
        "POST",
        "/v1/claims",
        {"consumer": "r2", "extra_specs": {"hardware_resource:NIC_VF_1G": "\u0661"}},
    ),
    ("red", "GET", "/v1/capacity?spec=hardware_resource:NIC_VF_1G=1e3", None),
    ("red", "GET", "/v1/capacity?spec=hardware_resource:NIC_VF_1G=%EF%BC%91", None),
    ("agent_b", "PUT", f"/v1/hosts/{HOST_B}/inventory", {"generation": 2**63, "devices": []}),
    ("agent_b", "PUT", f"/v1/hosts/{HOST_B}/inventory", {"generation": -1, "devices": []}),
    ("agent_b", "PUT", f"/v1/hosts/{HOST_B}/inventory", {"generation": 1.5, "devices": []}),
    (
        "agent_b",
        "PUT",
        f"/v1/hosts/{HOST_B}/inventory",
        {"generation": 8, "devices": [vf("0000:5e:02.1", numa_node=1025)]},
    ),
    (
        "agent_b",
        "PUT",
        f"/v1/hosts/{HOST_B}/inventory",
        {"generation": 8, "devices": [vf("0000:5e:02.1", numa_node=0.0)]},
    ),
    (
        "agent_b",
        "PUT",
        f"/v1/hosts/{HOST_B}/inventory",
        {"generation": 8, "devices": [vf("0000:5e:02.1", iommu_group=2**31)]},
    ),
]


def test_numbers_at_the_edges_are_4xx_never_500(world: World) -> None:
    before = _state(world)
    wrong: list[tuple[Any, ...]] = []
    for caller, method, path, body in EDGE_NUMBERS:
        r = (
            world.call(caller, method, path, json=body)
            if body is not None
            else world.call(caller, method, path)
        )
        if not 400 <= r.status_code < 500:
            wrong.append((caller, method, path[:80], json.dumps(body)[:120], r.status_code, r.text[:200]))
    assert wrong == []
    assert _state(world) == before


def test_a_count_of_thousands_of_digits_is_400_not_500(world: World) -> None:
    before = _state(world)
    digits = "9" * 5000
    spec = {"hardware_resource:NIC_VF_1G": digits}
    answers = [
        world.call("red", "POST", "/v1/claims", json={"consumer": "red-2", "extra_specs": spec}),
        world.call("red", "POST", "/v1/explain", json={"extra_specs": spec}),
        world.call("red", "GET", "/v1/capacity", params={"spec": f"hardware_resource:NIC_VF_1G={digits}"}),
    ]
    _cookie(world.api, world.who["red"])
    answers.append(world.api.get("/ui/explain", params={"specs": f"hardware_resource:NIC_VF_1G={digits}"}))
    assert [r.status_code for r in answers] == [400, 400, 400, 400], [r.text[:120] for r in answers]
    assert _state(world) == before


@pytest.mark.slow
def test_very_wide_json_is_400(world: World) -> None:
    wide = {f"k{i}": 1 for i in range(100_000)}
    before = _state(world)
    attempts = [
        ("red", "POST", "/v1/claims", {"consumer": "red-2", **wide}),
        (
            "red",
            "POST",
            "/v1/claims",
            {"consumer": "red-2", "requests": [{"name": "n", "type": "NIC_VF_1G", "params": wide}]},
        ),
        (
            "red",
            "POST",
            "/v1/explain",
            {"extra_specs": {f"hardware_resource:T{i}": "1" for i in range(100_000)}},
        ),
        (
            "red",
            "POST",
            "/v1/explain",
            {"requests": [{"name": f"n{i}", "type": "NIC_VF_1G"} for i in range(100_000)]},
        ),
        (
            "red",
            "POST",
            "/v1/explain",
            {
                "requests": [{"name": "n", "type": "NIC_VF_1G"}],
                "constraints": [{"match": "numa_node"}] * 100_000,
            },
        ),
        (
            "agent_b",
            "PUT",
            f"/v1/hosts/{HOST_B}/inventory",
            {"generation": 8, "devices": [vf("0000:5e:02.1", attributes=wide)]},
        ),
        (
            "agent_b",
            "POST",
            f"/v1/hosts/{HOST_B}/work",
            {"results": [{"device_id": "x", "action": "setup", "ok": True, "facts": wide}]},
        ),
        ("admin", "POST", "/v1/tokens", {"role": "admin", **wide}),
    ]
    for caller, method, path, body in attempts:
        r = world.call(caller, method, path, json=body)
        # 413 where the body is over its route's size, 400 where it is over its member count
        assert r.status_code in (400, 413), (caller, path, r.text[:200])
        assert len(r.content) < 10_000  # the answer names a few problems, not 100,000
    assert _state(world) == before


def test_extra_specs_outside_the_device_namespace_are_bounded(world: World) -> None:
    before = _state(world)
    body = {
        "consumer": "red-2",
        "extra_specs": {"hardware_resource:NIC_VF_1G": "1", "hw:padding": "x" * 1_000_000},
    }
    r = world.call("red", "POST", "/v1/claims", json=body)
    assert r.status_code == 400, r.text[:200]
    assert _state(world) == before


# ====================================================================== a compromised agent


def test_an_agent_cannot_post_results_for_another_hosts_device_or_another_consumer(world: World) -> None:
    blue_device = world.blue_vm["devices"][0]["id"]  # reserved, on compute-a
    red_device = world.red_vm["devices"][0]["id"]  # reserved, on compute-b
    before = _state(world)
    # compute-b's agent, about compute-a's device: nothing moves, no fact is kept
    for action, ok in (("setup", True), ("setup", False), ("cleanup", True), ("cleanup", False)):
        result = {
            "device_id": blue_device,
            "action": action,
            "ok": ok,
            "consumer": "blue-vm",
            "facts": {"original_driver": "../../../../tmp/x"} if action == "setup" else {},
        }
        r = world.call("agent_b", "POST", f"/v1/hosts/{HOST_B}/work", json={"results": [result]})
        assert r.status_code == 200, r.text
        (outcome,) = r.json()
        assert outcome["applied"] is False and outcome["state"] is None, outcome
        assert "blue-vm" not in r.text and HOST_A not in r.text
    # its own device, but for another consumer than the holder: ignored
    result = {"device_id": red_device, "action": "setup", "ok": False, "consumer": "blue-vm", "error": "x"}
    r = world.call("agent_b", "POST", f"/v1/hosts/{HOST_B}/work", json={"results": [result]})
    assert r.status_code == 200 and r.json()[0]["applied"] is False, r.text
    assert _state(world) == before


def test_colliding_addresses_stay_on_their_own_host(world: World) -> None:
    blue_device = world.blue_vm["devices"][0]
    # compute-b's agent reports compute-a's addresses too, one of them unhealthy, and drops
    # its own: compute-a's devices and blue's allocation must not notice
    report: dict[str, Any] = {"generation": 2, "host_id": HOST_ID_B, "devices": [*_vfs("5e"), *_vfs("3b")]}
    report["devices"][3]["healthy"] = False
    r = world.call("agent_b", "PUT", f"/v1/hosts/{HOST_B}/inventory", json=report)
    assert r.status_code == 200, r.text
    on_a = {d.address: d for d in world.store.list_devices(host=HOST_A)}
    assert on_a[blue_device["address"]].id == blue_device["id"]
    assert on_a[blue_device["address"]].state.value == "reserved" and on_a[blue_device["address"]].healthy
    held = world.call("admin", "GET", "/v1/allocations/blue-vm").json()
    assert held["host"] == HOST_A and [d["id"] for d in held["devices"]] == [blue_device["id"]]
    on_b = [d for d in world.store.list_devices(host=HOST_B) if d.address.startswith("0000:3b:")]
    assert len(on_b) == 3 and blue_device["id"] not in {d.id for d in on_b}
    # and a claim of red's never gets a device of compute-a for an address B reported
    body = {"consumer": "red-3", "requests": [{"name": "n", "type": "NIC_VF_1G", "count": 4}]}
    made = world.call("admin", "POST", "/v1/claims", json={**body, "project": RED, "hosts": [HOST_B]})
    assert made.status_code == 201, made.text
    assert {d["id"] for d in made.json()["devices"]} <= {d.id for d in world.store.list_devices(host=HOST_B)}
    # compute-a's agent still sees its blue device as its own work, compute-b's does not
    a_work = world.call("agent_a", "GET", f"/v1/hosts/{HOST_A}/work").json()["items"]
    b_work = world.call("agent_b", "GET", f"/v1/hosts/{HOST_B}/work").json()["items"]
    assert blue_device["id"] in {i["device"]["id"] for i in a_work}
    assert blue_device["id"] not in {i["device"]["id"] for i in b_work}


BAD_FACTS = [
    {f"k{i}": 1 for i in range(33)},
    {"blob": "x" * 5000},
    {"nested": _nested(30)},
    {"list": [[[[["x" * 100] * 10] * 10] * 2] * 2]},
    {"devassign:cleared": True},
    {"Original_Driver": "vfio-pci"},
    {"original driver": "vfio-pci"},
    {"mdev_uuid": "\u0000"},
    {"original_driver": float("inf")},
]


def test_facts_must_be_few_small_and_named(world: World) -> None:
    red_device = world.red_vm["devices"][0]["id"]  # reserved: a setup result may carry facts
    before = _state(world)
    wrong: list[tuple[Any, ...]] = []
    for facts in BAD_FACTS:
        result = {
            "device_id": red_device,
            "action": "setup",
            "ok": True,
            "consumer": "red-vm",
            "facts": facts,
        }
        body = json.dumps({"results": [result]})  # Infinity as Python writes it: not JSON
        r = world.call(
            "agent_b",
            "POST",
            f"/v1/hosts/{HOST_B}/work",
            content=body,
            headers={"content-type": "application/json"},
        )
        if r.status_code != 400:
            wrong.append((json.dumps(facts)[:80], r.status_code, r.text[:200]))
    assert wrong == []
    assert _state(world) == before


def test_a_host_id_outside_a_small_alphabet_is_400(world: World) -> None:
    world.who["agent_c"] = _bearer(world.store, Role.AGENT, host="compute-c")
    before = _state(world)
    for host_id in ("\u202ea-mirrored-id", "<b>id</b>", "id\nsecond line", "id\x07", "id\u200b"):
        report: dict[str, Any] = {"generation": 1, "host_id": host_id, "devices": []}
        r = world.call("agent_c", "PUT", "/v1/hosts/compute-c/inventory", json=report)
        assert r.status_code == 400, (host_id, r.text[:200])
    assert _state(world) == before
