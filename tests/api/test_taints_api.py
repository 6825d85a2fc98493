"""The taint routes: who may taint what, what the views show, and bad input answered with the
stable error body and nothing changed."""

from __future__ import annotations

import json
from datetime import UTC
from typing import Any

import pytest
from fastapi.testclient import TestClient

from devassign import schemas
from devassign.domain import Role
from devassign.store import Store
from tests.conftest import vf

PF = "0000:3b:00.0"


def _headers(store: Store, role: Role, **scope: str) -> dict[str, str]:
    secret = store.create_token(schemas.TokenCreate(role=role, **scope), "test").token
    return {"Authorization": f"Bearer {secret}"}


def _fleet(client: TestClient, admin: dict[str, str], agents: dict[str, dict[str, str]]) -> None:
    assert client.post("/v1/resource-types", json={"name": "NIC_VF_1G"}, headers=admin).status_code == 201
    for host, headers in agents.items():
        r = client.put(
            f"/v1/hosts/{host}/inventory",
            json={"generation": 1, "devices": [vf("0000:3b:02.1"), vf("0000:3b:02.2")]},
            headers=headers,
        )
        assert r.status_code == 200, r.text


def _device(client: TestClient, headers: dict[str, str], host: str, address: str = "0000:3b:02.1") -> str:
    found = client.get("/v1/devices", params={"host": host, "address": address}, headers=headers).json()
    return str(found[0]["id"])


def _state(client: TestClient, admin: dict[str, str]) -> tuple[Any, ...]:
    return (
        client.get("/v1/taints", headers=admin).json(),
        [e["id"] for e in client.get("/v1/events", headers=admin).json()],
        client.get("/v1/resource-types", headers=admin).json(),
    )


@pytest.fixture
def world(secure_api: TestClient, store: Store) -> dict[str, Any]:
    admin = _headers(store, Role.ADMIN)
    agents = {
        "compute-a": _headers(store, Role.AGENT, host="compute-a"),
        "compute-b": _headers(store, Role.AGENT, host="compute-b"),
    }
    _fleet(secure_api, admin, agents)
    return {
        "admin": admin,
        "agent_a": agents["compute-a"],
        "agent_b": agents["compute-b"],
        "member": _headers(store, Role.MEMBER, project="p"),
        "monitor": _headers(store, Role.MONITOR),
    }


def test_an_agent_taints_its_own_devices_not_another_hosts(
    secure_api: TestClient, world: dict[str, Any]
) -> None:
    mine = _device(secure_api, world["admin"], "compute-a")
    theirs = _device(secure_api, world["admin"], "compute-b")
    body = {"effect": "NoSchedule", "reason": "link flapping"}
    r = secure_api.post(f"/v1/devices/{mine}/taints", json=body, headers=world["agent_a"])
    assert r.status_code == 201, r.text
    assert r.json()["set_by"].startswith("agent") or "compute-a" in r.json()["set_by"]
    before = _state(secure_api, world["admin"])
    r = secure_api.post(f"/v1/devices/{theirs}/taints", json=body, headers=world["agent_a"])
    assert r.status_code == 404 and r.json()["error"]["code"] == "device_not_found"
    r = secure_api.post("/v1/hosts/compute-b/taints", json=body, headers=world["agent_a"])
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = secure_api.delete(f"/v1/devices/{theirs}/taints", headers=world["agent_a"])
    assert r.status_code == 404
    assert _state(secure_api, world["admin"]) == before
    # Its own host's list only; another host's is refused.
    listed = secure_api.get("/v1/taints", headers=world["agent_a"]).json()
    assert [t["device_id"] for t in listed] == [mine]
    assert (
        secure_api.get("/v1/taints", params={"host": "compute-b"}, headers=world["agent_a"]).status_code
        == 403
    )
    assert secure_api.get("/v1/taints", headers=world["agent_b"]).json() == []
    for caller in ("member", "monitor"):
        assert secure_api.get("/v1/taints", headers=world[caller]).status_code == 403


def test_views_show_taints_and_counts_set_them_apart(secure_api: TestClient, world: dict[str, Any]) -> None:
    admin = world["admin"]
    r = secure_api.post(
        "/v1/hosts/compute-a/taints",
        json={"effect": "Drain", "reason": "maintenance: PSU swap", "expires_in": 7200},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    taint = r.json()
    assert taint["expires_at"] and taint["device_id"] is None and taint["parent"] is None
    host = secure_api.get("/v1/hosts/compute-a", headers=admin).json()
    assert [t["id"] for t in host["taints"]] == [taint["id"]]
    device = secure_api.get(f"/v1/devices/{_device(secure_api, admin, 'compute-a')}", headers=admin).json()
    assert [t["id"] for t in device["taints"]] == [taint["id"]]
    counts = secure_api.get("/v1/resource-types/NIC_VF_1G", headers=admin).json()["counts"]
    assert (counts["available"], counts["tainted"], counts["total"]) == (2, 2, 4)
    for_member = secure_api.get("/v1/resource-types", headers=world["member"]).json()[0]["counts"]
    assert for_member["tainted"] == 2
    actions = [e["action"] for e in secure_api.get("/v1/events", headers=admin).json()]
    assert "device_tainted" in actions
    r = secure_api.delete("/v1/hosts/compute-a/taints", params={"taint": taint["id"]}, headers=admin)
    assert r.status_code == 200 and [t["id"] for t in r.json()] == [taint["id"]]
    r = secure_api.delete("/v1/hosts/compute-a/taints", params={"taint": taint["id"]}, headers=admin)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert "device_untainted" in [e["action"] for e in secure_api.get("/v1/events", headers=admin).json()]


def test_a_member_reads_why_without_host_names(secure_api: TestClient, world: dict[str, Any]) -> None:
    admin = world["admin"]
    for host in ("compute-a", "compute-b"):
        r = secure_api.post(
            f"/v1/hosts/{host}/taints",
            json={"effect": "NoSchedule", "reason": "maintenance"},
            headers=world["agent_a" if host == "compute-a" else "agent_b"],
        )
        assert r.status_code == 201, r.text
    body = {"consumer": "vm-1", "project": "p", "requests": [{"name": "nic", "type": "NIC_VF_1G"}]}
    r = secure_api.post("/v1/explain", json={**body, "hosts": ["compute-a"]}, headers=admin)
    message = r.json()["hosts"][0]["message"]
    assert "2 NIC_VF_1G devices are tainted NoSchedule (maintenance, by " in message, message
    refused = secure_api.post("/v1/claims", json=body, headers=world["member"])
    assert refused.status_code == 409, refused.text
    text = refused.text
    assert "compute-a" not in text and "compute-b" not in text
    explained = secure_api.post("/v1/explain", json=body, headers=world["member"]).json()
    assert "compute-" not in str(explained)


def test_a_parent_taint_through_the_host_route(secure_api: TestClient, world: dict[str, Any]) -> None:
    admin = world["admin"]
    r = secure_api.post(
        "/v1/hosts/compute-a/taints",
        json={"effect": "NoSchedule", "reason": "PF firmware", "parent": PF},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    devices = secure_api.get("/v1/devices", params={"host": "compute-a"}, headers=admin).json()
    assert all(d["taints"] and d["taints"][0]["parent"] == PF for d in devices)
    assert all(
        not d["taints"]
        for d in secure_api.get("/v1/devices", params={"host": "compute-b"}, headers=admin).json()
    )
    r = secure_api.delete("/v1/hosts/compute-a/taints", params={"parent": PF}, headers=admin)
    assert r.status_code == 200 and len(r.json()) == 1


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        (
            "/v1/devices/no-such-device/taints",
            {"effect": "NoSchedule", "reason": "x"},
            404,
            "device_not_found",
        ),
        ("/v1/hosts/nowhere/taints", {"effect": "NoSchedule", "reason": "x"}, 404, "host_not_found"),
        ("/v1/hosts/compute-a/taints", {"effect": "Evict", "reason": "x"}, 400, "invalid_request"),
        ("/v1/hosts/compute-a/taints", {"effect": "NoSchedule", "reason": ""}, 400, "invalid_request"),
        ("/v1/hosts/compute-a/taints", {"effect": "NoSchedule"}, 400, "invalid_request"),
        (
            "/v1/hosts/compute-a/taints",
            {"effect": "NoSchedule", "reason": "x", "expires_at": "2001-01-01T00:00:00Z"},
            400,
            "invalid_request",
        ),
        (
            "/v1/hosts/compute-a/taints",
            {"effect": "NoSchedule", "reason": "x", "expires_in": 0},
            400,
            "invalid_request",
        ),
        (
            "/v1/hosts/compute-a/taints",
            {"effect": "NoSchedule", "reason": "x", "parent": "0000:99:00.0"},
            404,
            "device_not_found",
        ),
        (
            "/v1/hosts/compute-a/taints",
            {"effect": "NoSchedule", "reason": "x", "extra": 1},
            400,
            "invalid_request",
        ),
    ],
)
def test_bad_input_is_a_stable_4xx_and_changes_nothing(
    secure_api: TestClient, world: dict[str, Any], path: str, body: dict[str, Any], status: int, code: str
) -> None:
    before = _state(secure_api, world["admin"])
    r = secure_api.post(path, json=body, headers=world["admin"])
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["message"]
    assert _state(secure_api, world["admin"]) == before


def test_the_funnel_says_hosts_lack_only_because_of_taints(
    secure_api: TestClient, world: dict[str, Any]
) -> None:
    for host, agent in (("compute-a", "agent_a"), ("compute-b", "agent_b")):
        r = secure_api.post(
            f"/v1/hosts/{host}/taints", json={"effect": "Drain", "reason": "r"}, headers=world[agent]
        )
        assert r.status_code == 201, r.text
    body = {"consumer": "vm-1", "project": "p", "requests": [{"name": "nic", "type": "NIC_VF_1G"}]}
    refused = secure_api.post("/v1/claims", json=body, headers=world["member"])
    assert refused.status_code == 409
    message = refused.json()["error"]["message"]
    assert (
        "2 up hosts with too few free NIC_VF_1G (2 of them only because 4 NIC_VF_1G devices are tainted "
        "Drain)" in message
    ), message


def test_capacity_leaves_tainted_devices_out_and_counts_them(
    secure_api: TestClient, world: dict[str, Any]
) -> None:
    spec = {"spec": "hardware_resource:NIC_VF_1G=1"}
    assert secure_api.get("/v1/capacity", params=spec, headers=world["member"]).json() == {
        "total": 4,
        "truncated": False,
    }
    r = secure_api.post(
        "/v1/hosts/compute-a/taints", json={"effect": "NoSchedule", "reason": "r"}, headers=world["admin"]
    )
    assert r.status_code == 201
    found = secure_api.get("/v1/capacity", params=spec, headers=world["member"]).json()
    assert found == {"total": 2, "truncated": False, "tainted": {"NIC_VF_1G": 2}}


def test_capacity_of_named_hosts_counts_their_tainted_devices_not_the_clouds(
    secure_api: TestClient, world: dict[str, Any]
) -> None:
    """``capacity --host compute-b`` says what a taint keeps out of compute-b's count: none of
    compute-a's tainted devices, which were never in it."""
    r = secure_api.post(
        "/v1/hosts/compute-a/taints", json={"effect": "NoSchedule", "reason": "r"}, headers=world["admin"]
    )
    assert r.status_code == 201
    spec = {"spec": "hardware_resource:NIC_VF_1G=1"}
    on_b = secure_api.get("/v1/capacity", params={**spec, "host": "compute-b"}, headers=world["admin"])
    assert on_b.json() == {"total": 2, "per_host": {"compute-b": 2}, "truncated": False}
    on_a = secure_api.get("/v1/capacity", params={**spec, "host": "compute-a"}, headers=world["admin"])
    assert on_a.json() == {
        "total": 0,
        "per_host": {"compute-a": 0},
        "truncated": False,
        "tainted": {"NIC_VF_1G": 2},
    }
    body = {"extra_specs": {"hardware_resource:NIC_VF_1G": "1"}, "hosts": ["compute-b"]}
    assert "tainted" not in secure_api.post("/v1/capacity", json=body, headers=world["admin"]).json()


def test_the_redacted_explanation_keeps_the_taints_effect_not_its_reason_or_setter() -> None:
    """A taint's reason is free text (an operator's or a host agent's): host names, racks,
    tickets. A member reads the effect alone."""
    from devassign.server.views import redact_explanation

    found = {
        "summary": "fits nowhere",
        "hosts": [
            {
                "host": "compute-a",
                "reason": "not_enough_free",
                "message": "needs 1 NIC_VF_1G, has 0 free; 2 NIC_VF_1G devices are tainted "
                "NoSchedule (compute-a PSU swap, RMA 4411, by agent:compute-a#3)",
            }
        ],
    }
    redacted = redact_explanation(found)
    assert redacted["tainted"] == ["2 NIC_VF_1G devices are tainted NoSchedule"]
    assert "compute-a" not in str(redacted) and "RMA" not in str(redacted)


def test_hosts_held_back_before_scheduling_say_what_their_taints_are(
    secure_api: TestClient, world: dict[str, Any]
) -> None:
    """Every host lacks free devices only because of taints, so none reaches the scheduler to
    say which: the refusal and the explanation name the taints (a member's by their effect
    alone), and a member's message does not read "0 hosts considered"."""
    for host, agent in (("compute-a", "agent_a"), ("compute-b", "agent_b")):
        r = secure_api.post(
            f"/v1/hosts/{host}/taints",
            json={"effect": "NoSchedule", "reason": "psu swap"},
            headers=world[agent],
        )
        assert r.status_code == 201, r.text
    body = {"consumer": "vm-1", "project": "p", "requests": [{"name": "nic", "type": "NIC_VF_1G"}]}
    refused = secure_api.post("/v1/claims", json=body, headers=world["member"])
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert "0 hosts considered" not in error["message"], error["message"]
    assert "(2 of them only because 4 NIC_VF_1G devices are tainted NoSchedule)" in error["message"]
    assert error["explanation"]["tainted"] == ["4 NIC_VF_1G devices are tainted NoSchedule"]
    assert "compute-" not in refused.text and "agent" not in refused.text and "psu" not in refused.text
    explained = secure_api.post("/v1/explain", json=body, headers=world["member"]).json()
    assert explained["tainted"] == ["4 NIC_VF_1G devices are tainted NoSchedule"]
    assert "psu" not in str(explained)
    admin = secure_api.post("/v1/explain", json=body, headers=world["admin"]).json()
    assert len(admin["taints"]) == 1 and admin["taints"][0].count("(psu swap, by agent:compute-") == 2, admin
    operator = secure_api.post("/v1/claims", json=body, headers=world["admin"]).json()["error"]["message"]
    assert "only because 2 NIC_VF_1G devices are tainted NoSchedule (psu swap, by agent:compute-" in operator


def test_a_type_not_held_back_by_taints_names_none() -> None:
    from devassign.scheduler.reasons import funnel_sentence

    funnel = {"hosts": 3, "down": 0, "lacking_GPU": 3, "tainted_GPU": 1, "lacking_VF": 2}
    taints = ["2 GPU devices are tainted Drain (rack move)", "1 VF device is tainted NoSchedule (x)"]
    assert funnel_sentence(funnel, taints) == (
        "3 up hosts with too few free GPU (1 of them only because 2 GPU devices are tainted Drain "
        "(rack move)), 2 up hosts with too few free VF"
    )


def test_an_agent_lifts_its_hosts_agent_taints_not_an_admins(
    secure_api: TestClient, world: dict[str, Any]
) -> None:
    """An admin's taint (a host under investigation) stayed only until the host's own agent
    token removed "all" of the host's taints: new claims landed there again."""
    admin, agent = world["admin"], world["agent_a"]
    mine = _device(secure_api, admin, "compute-a")
    held = {"effect": "NoSchedule", "reason": "host under investigation"}
    by_admin = secure_api.post("/v1/hosts/compute-a/taints", json=held, headers=admin).json()
    on_device = secure_api.post(f"/v1/devices/{mine}/taints", json=held, headers=admin).json()
    flapping = {"effect": "NoSchedule", "reason": "link flapping"}
    by_agent = secure_api.post(f"/v1/devices/{mine}/taints", json=flapping, headers=agent).json()
    for path in ("/v1/hosts/compute-a/taints", f"/v1/devices/{mine}/taints"):
        r = secure_api.delete(path, params={"taint": by_admin["id"]}, headers=agent)
        assert r.status_code in (403, 404), (path, r.text)
    r = secure_api.delete(f"/v1/devices/{mine}/taints", params={"taint": on_device["id"]}, headers=agent)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text
    assert "admin removes it" in r.json()["error"]["message"]
    lifted = secure_api.delete("/v1/hosts/compute-a/taints", headers=agent)
    assert lifted.status_code == 200 and [t["id"] for t in lifted.json()] == [by_agent["id"]], lifted.text
    left = sorted(t["id"] for t in secure_api.get("/v1/taints", headers=admin).json())
    assert left == sorted([by_admin["id"], on_device["id"]])
    assert len(secure_api.delete("/v1/hosts/compute-a/taints", headers=admin).json()) == 2


@pytest.mark.parametrize("offset", ["-05:00", "+05:30", "+14:00"])
def test_an_expiry_with_an_offset_is_the_same_instant(
    secure_api: TestClient, world: dict[str, Any], offset: str
) -> None:
    """An operator west of UTC writes the local time with its offset: the taint lasts until
    that instant, not until the same wall-clock time in UTC (which may be past already)."""
    from datetime import datetime, timedelta, timezone

    admin = world["admin"]
    device = _device(secure_api, admin, "compute-a")
    now = datetime.now(UTC)
    sign = -1 if offset[0] == "-" else 1
    hours, minutes = (int(x) for x in offset[1:].split(":"))
    zone = timezone(sign * timedelta(hours=hours, minutes=minutes))
    wanted = (now + timedelta(hours=2)).replace(microsecond=0)
    body = {"effect": "NoSchedule", "reason": "local time", "expires_at": wanted.astimezone(zone).isoformat()}
    made = secure_api.post(f"/v1/devices/{device}/taints", json=body, headers=admin)
    assert made.status_code == 201, made.text
    assert datetime.fromisoformat(made.json()["expires_at"]) == wanted
    listed = secure_api.get("/v1/taints", params={"device_id": device}, headers=admin).json()
    assert [datetime.fromisoformat(t["expires_at"]) for t in listed] == [wanted]
    counts = {t["name"]: t["counts"] for t in secure_api.get("/v1/resource-types", headers=admin).json()}
    assert counts["NIC_VF_1G"]["tainted"] == 1


def test_an_agent_never_lifts_an_admins_taint_whatever_the_token_names(
    secure_api: TestClient, store: Store, world: dict[str, Any]
) -> None:
    """Whether an agent set a taint is recorded when it is set: an agent token created under an
    admin's name (refused now, but older databases may hold one) does not make the admin's
    taints an agent's to lift."""
    admin = store.create_token(schemas.TokenCreate(role=Role.ADMIN, name="boss"), "test")
    boss = {"Authorization": f"Bearer {admin.token}"}
    r = secure_api.post("/v1/hosts/compute-a/taints", json={"effect": "Drain", "reason": "r"}, headers=boss)
    assert r.status_code == 201 and r.json()["set_by"] == "boss", r.text
    taint = r.json()["id"]
    # An agent token of another host named like the admin, as a database from before the
    # check on names could hold: written past the API.
    from devassign.store.schema import tokens

    with store.db.engine.begin() as conn:
        conn.execute(tokens.update().where(tokens.c.host == "compute-b").values(name="boss"))
    r = secure_api.delete("/v1/hosts/compute-a/taints", params={"taint": taint}, headers=world["agent_a"])
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text
    r = secure_api.delete("/v1/hosts/compute-a/taints", headers=world["agent_a"])
    assert r.status_code == 200 and r.json() == [], r.text
    assert [t["id"] for t in secure_api.get("/v1/taints", headers=boss).json()] == [taint]


def test_a_chosen_token_name_is_one_tokens_only(secure_api: TestClient, world: dict[str, Any]) -> None:
    """A token's name is the actor of its events: a second token named like another (an
    admin's, or the name made for one) would sign its actions with that name."""
    admin = world["admin"]
    r = secure_api.post("/v1/tokens", json={"role": "admin", "name": "boss"}, headers=admin)
    assert r.status_code == 201, r.text
    body = {"role": "agent", "host": "compute-b", "name": "boss"}
    r = secure_api.post("/v1/tokens", json=body, headers=admin)
    assert r.status_code == 409 and r.json()["error"]["code"] == "token_name_taken", r.text
    assert "choose another" in r.json()["error"]["message"]
    for made in ("admin#1", "member:p1#5", "agent:compute-a#3", "monitor#9"):
        body = {"role": "member", "project": "p2", "name": made}
        r = secure_api.post("/v1/tokens", json=body, headers=admin)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request", (made, r.text)
        assert "form of the names made" in r.json()["error"]["message"]
    # Revoked, a token keeps its name: its events still say it.
    boss_id = next(t["id"] for t in secure_api.get("/v1/tokens", headers=admin).json() if t["name"] == "boss")
    assert secure_api.delete(f"/v1/tokens/{boss_id}", headers=admin).status_code in (200, 204)
    r = secure_api.post("/v1/tokens", json={"role": "admin", "name": "boss"}, headers=admin)
    assert r.status_code == 409, r.text
    r = secure_api.post("/v1/tokens", json={"role": "admin", "name": "ci:deploy#2"}, headers=admin)
    assert r.status_code == 201, r.text


def test_a_member_reads_that_its_devices_are_drained_not_why_nor_by_whom(
    secure_api: TestClient, world: dict[str, Any]
) -> None:
    """The drain's request to move is the member's to read; the taint's reason and setter are
    the operators' (free text: hosts, tickets, other customers), in events as in explanations."""
    body = {
        "consumer": "vm-p",
        "project": "p",
        "hosts": ["compute-a"],
        "requests": [{"name": "n", "type": "NIC_VF_1G"}],
    }
    assert secure_api.post("/v1/claims", json=body, headers=world["admin"]).status_code == 201
    taint = {"effect": "Drain", "reason": "SECRET-RMA-4411 acme"}
    r = secure_api.post("/v1/hosts/compute-a/taints", json=taint, headers=world["agent_a"])
    assert r.status_code == 201, r.text
    seen = secure_api.get("/v1/events", headers=world["member"]).json()
    (drain,) = [e for e in seen if e["action"] == "drain_requested"]
    assert "SECRET" not in json.dumps(seen) and "compute-a#" not in json.dumps(seen), seen
    assert drain["actor"] == "server" and "vm-p is asked to move off compute-a" in drain["message"], drain
    assert drain["detail"]["devices"], drain
    full = secure_api.get("/v1/events", headers=world["admin"]).json()
    (drain,) = [e for e in full if e["action"] == "drain_requested"]
    assert "SECRET-RMA-4411 acme" in drain["message"] and drain["detail"]["reason"] == taint["reason"]


@pytest.mark.parametrize("by_id", [True, False])
def test_an_agent_lifts_its_own_taint_written_by_a_replica_of_an_older_version(
    secure_api: TestClient, store: Store, world: dict[str, Any], by_id: bool
) -> None:
    """During a rolling upgrade a replica of the version before taints recorded their setter's
    kind writes an agent's taint as an operator's: the agent that set it (its name, no other
    token's but an agent's) may still lift it; another agent may not."""
    from devassign.store.schema import taints

    mine = _device(secure_api, world["admin"], "compute-a")
    r = secure_api.post(
        f"/v1/devices/{mine}/taints",
        json={"effect": "NoSchedule", "reason": "flap"},
        headers=world["agent_a"],
    )
    assert r.status_code == 201, r.text
    taint = r.json()["id"]
    with store.db.engine.begin() as conn:
        conn.execute(taints.update().where(taints.c.id == taint).values(by_agent=False))
    params = {"taint": taint} if by_id else {}
    other = secure_api.delete("/v1/hosts/compute-a/taints", params=params, headers=world["agent_b"])
    assert other.status_code == 403, other.text
    lifted = secure_api.delete("/v1/hosts/compute-a/taints", params=params, headers=world["agent_a"])
    assert lifted.status_code == 200 and [t["id"] for t in lifted.json()] == [taint], lifted.text
