"""Request params are declared, typed and bounded per resource type (SQLite and PostgreSQL).

A tenant once sent another tenant's ``mdev_uuid`` and an ``original_driver`` path as params and
the agent, running as root, used them. A type now accepts only the params it declares; anything
else is a 400 that changes nothing.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from devassign import schemas
from devassign.cli import inventory as inventory_cli
from devassign.cli import output
from devassign.cli.client import Client
from devassign.cli.main import app as cli_app
from devassign.domain import Role
from devassign.store import Database, Store
from tests.conftest import fresh_pg_database, vf

VF_PARAMS: dict[str, Any] = {
    "mac": {"type": "mac"},
    "vlan": {
        "type": "integer",
        "min": 1,
        "max": 4094,
        "allowed": [100, 101, 200],
        "allowed_by_project": {"demo": [100]},
    },
    "trust": {"type": "boolean"},
    "label": {"type": "string", "max_length": 64, "pattern": "^[a-z0-9-]+$"},
}


def _token(store: Store, role: Role, **scope: str) -> dict[str, str]:
    secret = store.create_token(schemas.TokenCreate(role=role, **scope), "test").token
    return {"Authorization": f"Bearer {secret}"}


def _cloud(api: TestClient, store: Store, **type_body: Any) -> dict[str, dict[str, str]]:
    """Type NIC_VF_1G with VF_PARAMS (unless given otherwise); host c1 with two free VFs."""
    who = {
        "admin": _token(store, Role.ADMIN),
        "agent": _token(store, Role.AGENT, host="c1"),
        "demo": _token(store, Role.MEMBER, project="demo"),
        "other": _token(store, Role.MEMBER, project="other"),
    }
    body = {"name": "NIC_VF_1G", "params": VF_PARAMS, **type_body}
    r = api.post("/v1/resource-types", json=body, headers=who["admin"])
    assert r.status_code == 201, r.text
    devices = [vf("0000:3b:02.1"), vf("0000:3b:02.2")]
    r = api.put("/v1/hosts/c1/inventory", json={"generation": 1, "devices": devices}, headers=who["agent"])
    assert r.status_code == 200 and not r.json()["refused"], r.text
    return who


def _claim(consumer: str, **params: Any) -> dict[str, Any]:
    return {"consumer": consumer, "requests": [{"name": "nic", "type": "NIC_VF_1G", "params": params}]}


def _nothing_changed(api: TestClient, who: dict[str, dict[str, str]], events_before: int) -> None:
    admin = who["admin"]
    assert api.get("/v1/allocations", headers=admin).json() == []
    states = [d["state"] for d in api.get("/v1/devices", headers=admin).json()]
    assert states == ["available", "available"]
    assert len(api.get("/v1/events", params={"limit": 1000}, headers=admin).json()) == events_before
    assert api.get("/v1/hosts/c1/work", headers=who["agent"]).json()["items"] == []


@pytest.mark.parametrize(
    "params",
    [
        {"mdev_uuid": "6f1c0b4e-0000-4000-8000-0000000000aa"},
        {"original_driver": "../../../../tmp/x"},
        {"pf_ifname": "eth0"},
        {"colour": "red"},
    ],
)
def test_a_member_cannot_send_an_undeclared_param(
    secure_api: TestClient, store: Store, params: dict[str, Any]
) -> None:
    who = _cloud(secure_api, store)
    events = len(secure_api.get("/v1/events", params={"limit": 1000}, headers=who["admin"]).json())
    name = next(iter(params))
    for verb in ("claims", "explain"):
        r = secure_api.post(f"/v1/{verb}", json=_claim("vm-1", **params), headers=who["demo"])
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "invalid_request"
        assert f"param {name!r}" in error["message"]
        assert error["pointer"] == f"/requests/0/params/{name}"
    _nothing_changed(secure_api, who, events)


def test_an_undeclared_param_names_the_accepted_ones(secure_api: TestClient, store: Store) -> None:
    who = _cloud(secure_api, store)
    r = secure_api.post("/v1/claims", json=_claim("vm-1", colour="red"), headers=who["demo"])
    assert "it accepts label, mac, trust, vlan" in r.json()["error"]["message"]


def test_a_type_that_declares_nothing_accepts_no_params(api: TestClient) -> None:
    assert api.post("/v1/resource-types", json={"name": "GPU"}).status_code == 201
    r = api.put("/v1/hosts/c1/inventory", json={"generation": 1, "devices": [vf("0000:3b:02.1", type="GPU")]})
    assert r.status_code == 200, r.text
    body = {"consumer": "vm-1", "requests": [{"name": "g", "type": "GPU", "params": {"vlan": 100}}]}
    r = api.post("/v1/claims", json=body)
    assert r.status_code == 400
    assert "type GPU accepts no param 'vlan'; it accepts no params" in r.json()["error"]["message"]
    # Without params the type is claimed as ever.
    body["requests"][0].pop("params")  # type: ignore[attr-defined]
    assert api.post("/v1/claims", json=body).status_code == 201


def test_declared_params_pass_normalised_to_the_agent(secure_api: TestClient, store: Store) -> None:
    who = _cloud(secure_api, store)
    params = {"mac": "52:54:00:AB:CD:EF", "vlan": 100, "trust": True, "label": "web-1"}
    r = secure_api.post("/v1/claims", json=_claim("vm-1", **params), headers=who["demo"])
    assert r.status_code == 201, r.text
    work = secure_api.get("/v1/hosts/c1/work", headers=who["agent"]).json()["items"]
    assert [w["params"] for w in work] == [{**params, "mac": "52:54:00:ab:cd:ef"}]


def test_a_declaration_written_later_leaves_held_devices_as_claimed(
    secure_api: TestClient, store: Store
) -> None:
    """A declaration narrowed or dropped applies to later claims: a device claimed before keeps
    the params it was claimed with (its VLAN dropped from its setup would put the guest on the
    untagged network), and a new claim with the dropped param is refused."""
    who = _cloud(secure_api, store)
    params = {"mac": "52:54:00:ab:cd:ef", "vlan": 100, "label": "web-1"}
    assert (
        secure_api.post("/v1/claims", json=_claim("vm-1", **params), headers=who["demo"]).status_code == 201
    )
    narrowed = {"mac": VF_PARAMS["mac"]}
    r = secure_api.patch("/v1/resource-types/NIC_VF_1G", json={"params": narrowed}, headers=who["admin"])
    assert r.status_code == 200, r.text
    work = secure_api.get("/v1/hosts/c1/work", headers=who["agent"]).json()["items"]
    assert [w["params"] for w in work] == [params]
    later = secure_api.post("/v1/claims", json=_claim("vm-2", vlan=100), headers=who["demo"])
    assert later.status_code == 400, later.text
    # A move of the held allocation (a host drained) takes its params along, as claimed.
    agent2 = _token(store, Role.AGENT, host="c2")
    r = secure_api.put(
        "/v1/hosts/c2/inventory", json={"generation": 1, "devices": [vf("0000:5e:02.1")]}, headers=agent2
    )
    assert r.status_code == 200, r.text
    moved = secure_api.post("/v1/allocations/vm-1/moves", json={"host": "c2"}, headers=who["demo"])
    assert moved.status_code == 201, moved.text
    there = secure_api.get("/v1/hosts/c2/work", headers=agent2).json()["items"]
    assert [w["params"] for w in there] == [params]


def test_a_retry_after_the_declaration_changed_answers_its_allocation(
    secure_api: TestClient, store: Store
) -> None:
    """A client (Nova) that lost the answer resends its claim word for word after an admin
    dropped a param it used: the claim was made and holds a device, so the retry answers it
    (200), not a 400 for a request it did not make anew. Another request with that key, or
    the same one with another key, is refused for its param as before."""
    who = _cloud(secure_api, store)
    sent = {**_claim("vm-1", vlan=100), "idempotency_key": "k-1"}
    made = secure_api.post("/v1/claims", json=sent, headers=who["demo"])
    assert made.status_code == 201, made.text
    r = secure_api.patch(
        "/v1/resource-types/NIC_VF_1G", json={"params": {"mac": VF_PARAMS["mac"]}}, headers=who["admin"]
    )
    assert r.status_code == 200, r.text
    again = secure_api.post("/v1/claims", json=sent, headers=who["demo"])
    assert again.status_code == 200, again.text
    assert [d["id"] for d in again.json()["devices"]] == [d["id"] for d in made.json()["devices"]]
    for other in (
        {**_claim("vm-1", vlan=100, trust=True), "idempotency_key": "k-1"},
        {**_claim("vm-1", vlan=100), "idempotency_key": "k-2"},
        {**_claim("vm-1", vlan=100)},
        {**sent, "project": "other"},
    ):
        r = secure_api.post(
            "/v1/claims", json=other, headers=who["admin"] if "project" in other else who["demo"]
        )
        assert r.status_code == 400 and "accepts no param 'vlan'" in r.text, r.text
    # Another project's member with the same consumer and key learns nothing of it.
    r = secure_api.post("/v1/claims", json=sent, headers=who["other"])
    assert r.status_code == 400 and "accepts no param 'vlan'" in r.text, r.text
    assert len(secure_api.get("/v1/allocations", headers=who["admin"]).json()) == 1


def test_a_gang_retry_after_the_declaration_changed_answers_its_gang(
    secure_api: TestClient, store: Store
) -> None:
    who = _cloud(secure_api, store)
    sent = {
        "instances": ["vm-1", "vm-2"],
        "idempotency_key": "job-1",
        "requests": [{"name": "nic", "type": "NIC_VF_1G", "params": {"vlan": 100}}],
    }
    made = secure_api.post("/v1/gangs", json=sent, headers=who["demo"])
    assert made.status_code == 201, made.text
    r = secure_api.patch("/v1/resource-types/NIC_VF_1G", json={"params": {}}, headers=who["admin"])
    assert r.status_code == 200, r.text
    again = secure_api.post("/v1/gangs", json=sent, headers=who["demo"])
    assert again.status_code == 200 and again.json() == made.json(), again.text
    for other in ({**sent, "idempotency_key": "job-2"}, {**sent, "instances": ["vm-1", "vm-3"]}):
        r = secure_api.post("/v1/gangs", json=other, headers=who["demo"])
        assert r.status_code == 400 and "accepts no param 'vlan'" in r.text, r.text
    r = secure_api.post("/v1/gangs/explain", json=sent, headers=who["demo"])
    assert r.status_code == 400 and "accepts no param 'vlan'" in r.text, r.text


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"vlan": 101}, "param 'vlan' of type NIC_VF_1G: 101 is not allowed for project demo; allowed: 100"),
        ({"vlan": 0}, "param 'vlan' of type NIC_VF_1G is an integer from 1 to 4094, not 0"),
        ({"mac": "01:00:5e:00:00:01"}, "param 'mac' of type NIC_VF_1G is a unicast MAC address"),
        ({"label": "Web 1"}, "param 'label' of type NIC_VF_1G is a string of at most 64 characters matching"),
        ({"trust": "yes"}, "param 'trust' of type NIC_VF_1G is true or false"),
    ],
)
def test_values_out_of_the_declaration_are_refused(
    secure_api: TestClient, store: Store, params: dict[str, Any], message: str
) -> None:
    who = _cloud(secure_api, store)
    events = len(secure_api.get("/v1/events", params={"limit": 1000}, headers=who["admin"]).json())
    r = secure_api.post("/v1/claims", json=_claim("vm-1", **params), headers=who["demo"])
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]["message"]
    _nothing_changed(secure_api, who, events)


def test_values_are_per_project(secure_api: TestClient, store: Store) -> None:
    who = _cloud(secure_api, store)
    refused = secure_api.post("/v1/claims", json=_claim("vm-1", vlan=200), headers=who["demo"])
    assert refused.status_code == 400 and "allowed: 100" in refused.json()["error"]["message"]
    r = secure_api.post("/v1/claims", json=_claim("vm-2", vlan=200), headers=who["other"])
    assert r.status_code == 201, r.text
    # An admin claims for the project it names, under that project's values.
    as_admin = {**_claim("vm-3", vlan=200), "project": "demo"}
    assert secure_api.post("/v1/claims", json=as_admin, headers=who["admin"]).status_code == 400


def test_first_available_checks_each_alternative(api: TestClient) -> None:
    for name, params in (("NIC_A", {"vlan": {"type": "integer"}}), ("NIC_B", {})):
        assert api.post("/v1/resource-types", json={"name": name, "params": params}).status_code == 201
    devices = [vf("0000:3b:02.1", type="NIC_A"), vf("0000:3b:02.2", type="NIC_B")]
    assert api.put("/v1/hosts/c1/inventory", json={"generation": 1, "devices": devices}).status_code == 200
    request = {"name": "n", "type": "NIC_A", "params": {"vlan": 7}, "first_available": [{"type": "NIC_B"}]}
    r = api.post("/v1/claims", json={"consumer": "vm-1", "requests": [request]})
    assert r.status_code == 400
    assert "type NIC_B accepts no param 'vlan'" in r.json()["error"]["message"]


def test_params_round_trip_through_the_api(secure_api: TestClient, store: Store) -> None:
    who = _cloud(secure_api, store)
    admin = who["admin"]
    found = secure_api.get("/v1/resource-types/NIC_VF_1G", headers=admin).json()["params"]
    assert list(found) == ["label", "mac", "trust", "vlan"]  # by name, on either database
    assert {k: v for k, v in found["vlan"].items() if v is not None} == {
        "type": "integer",
        "description": "",
        "min": 1,
        "max": 4094,
        "allowed": [100, 101, 200],
        "allowed_by_project": {"demo": [100]},
    }
    assert found["label"]["pattern"] == "^[a-z0-9-]+$" and found["label"]["max_length"] == 64
    # A member sees the values open to its project only, and no other project's.
    seen = secure_api.get("/v1/resource-types/NIC_VF_1G", headers=who["demo"]).json()["params"]["vlan"]
    assert (seen["allowed"], seen["allowed_by_project"]) == ([100], None)
    listed = secure_api.get("/v1/resource-types", headers=who["other"]).json()[0]["params"]["vlan"]
    assert (listed["allowed"], listed["allowed_by_project"]) == ([100, 101, 200], None)
    # PATCH replaces the declaration; {} accepts none.
    r = secure_api.patch(
        "/v1/resource-types/NIC_VF_1G", json={"params": {"mac": {"type": "mac"}}}, headers=admin
    )
    assert r.status_code == 200 and list(r.json()["params"]) == ["mac"], r.text
    refused = secure_api.post("/v1/claims", json=_claim("vm-1", vlan=100), headers=who["demo"])
    assert "it accepts mac" in refused.json()["error"]["message"]
    assert (
        secure_api.patch("/v1/resource-types/NIC_VF_1G", json={"params": {}}, headers=admin).json()["params"]
        == {}
    )
    events = secure_api.get("/v1/events", params={"limit": 1000}, headers=admin).json()
    assert {"mac": {"type": "mac", "description": ""}} in [e["detail"].get("params") for e in events]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"mdev_uuid": {"type": "string"}}, "param name 'mdev_uuid' is reserved"),
        ({"original_driver": {"type": "string"}}, "param name 'original_driver' is reserved"),
        ({"x": {"type": "string", "pattern": "[a-"}}, "params.x: pattern '[a-' is not a regular expression"),
        ({f"p{i}": {"type": "boolean"} for i in range(33)}, "at most 32 params per type"),
    ],
)
def test_bad_declarations_are_400_and_store_nothing(
    api: TestClient, params: dict[str, Any], message: str
) -> None:
    r = api.post("/v1/resource-types", json={"name": "T", "params": params})
    assert r.status_code == 400 and message in r.json()["error"]["message"], r.text
    assert api.get("/v1/resource-types").json() == []
    assert api.post("/v1/resource-types", json={"name": "T"}).status_code == 201
    r = api.patch("/v1/resource-types/T", json={"params": params})
    assert r.status_code == 400 and message in r.json()["error"]["message"], r.text
    assert api.get("/v1/resource-types/T").json()["params"] == {}


def test_type_create_and_show_through_the_cli(
    secure_api: TestClient, store: Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    admin = _token(store, Role.ADMIN)["Authorization"].removeprefix("Bearer ")
    client = Client("http://testserver", admin, transport=secure_api._transport)
    monkeypatch.setattr(inventory_cli, "client", lambda ctx: client)
    declaration = tmp_path / "params.json"
    declaration.write_text(json.dumps(VF_PARAMS))
    runner = CliRunner()
    made = runner.invoke(
        cli_app, ["type", "create", "NIC_VF_1G", "--params", f"@{declaration}", "-f", "json"]
    )
    assert made.exit_code == 0, made.output
    assert json.loads(made.output)["params"]["vlan"]["allowed_by_project"] == {"demo": [100]}
    # The table's console is made once at import, with the width the process had then.
    monkeypatch.setattr(output.console, "width", 400)
    shown = runner.invoke(cli_app, ["type", "show", "NIC_VF_1G"])
    assert shown.exit_code == 0, shown.output
    assert "vlan: integer 1..4094, allowed 100 101 200; demo: 100" in shown.output
    assert "mac: mac" in shown.output and "trust: boolean" in shown.output
    updated = runner.invoke(
        cli_app, ["type", "update", "NIC_VF_1G", "--params", '{"mac": {"type": "mac"}}', "-f", "json"]
    )
    assert updated.exit_code == 0 and list(json.loads(updated.output)["params"]) == ["mac"], updated.output
    bad = runner.invoke(
        cli_app, ["type", "update", "NIC_VF_1G", "--params", '{"mdev_uuid": {"type": "string"}}']
    )
    assert bad.exit_code == 1


def test_the_upgrade_declares_mac_and_vlan_for_existing_vf_types(db_url: str, tmp_path: Any) -> None:
    """Types that held VFs accepted mac and vlan before params were declared: they keep them."""
    if db_url.startswith("sqlite"):
        run(f"sqlite:///{tmp_path / 'old.db'}")
    else:
        with fresh_pg_database("devassign_params_upgrade") as url:
            run(url)


def run(url: str) -> None:
    db = Database(url)
    db.upgrade()
    with db.engine.connect() as conn:
        command.downgrade(db._alembic_config(conn), "0003")
        conn.commit()
    now = sa.text("CURRENT_TIMESTAMP")
    with db.engine.begin() as conn:
        for i, (name, handler) in enumerate((("VF", None), ("VF_BY_HANDLER", "sriov_vf"), ("GPU", None)), 1):
            conn.execute(
                sa.text(
                    "INSERT INTO resource_types (id, name, description, handler, config, created_at, "
                    f"updated_at) VALUES ({i}, :name, '', :handler, '{{}}', {now}, {now})"
                ),
                {"name": name, "handler": handler},
            )
        conn.execute(sa.text(f"INSERT INTO hosts (id, name, created_at) VALUES (1, 'c1', {now})"))
        for id_, kind, type_id in (("d1", "sriov_vf", 1), ("d2", "pci", 3)):
            conn.execute(
                sa.text(
                    "INSERT INTO devices (id, host_id, address, kind, type_id, state, attributes, "
                    f"state_changed_at, created_at, updated_at) VALUES (:id, 1, :id, :kind, :type_id, "
                    f"'available', '{{}}', {now}, {now}, {now})"
                ),
                {"id": id_, "kind": kind, "type_id": type_id},
            )
    db.upgrade()
    store = Store(db)
    declared = {t.name: sorted(t.params) for t in store.list_types()}
    assert declared == {"GPU": [], "VF": ["mac", "vlan"], "VF_BY_HANDLER": ["mac", "vlan"]}
    vlan = store.get_type("VF").params["vlan"]
    assert (vlan.type, vlan.min, vlan.max, vlan.allowed) == ("integer", 0, 4094, None)
    db.dispose()


def test_explain_and_capacity_refuse_the_params_the_claim_refuses(
    secure_api: TestClient, store: Store
) -> None:
    """Explain said "fits" and capacity counted requests whose params the claim refuses (one
    MAC for two devices, an undeclared param, a fact name, a value the project may not use)."""
    who = _cloud(secure_api, store)
    bad = [
        {"name": "nic", "type": "NIC_VF_1G", "count": 2, "params": {"mac": "52:54:00:12:34:57"}},
        {"name": "nic", "type": "NIC_VF_1G", "params": {"undeclared": "x"}},
        {"name": "nic", "type": "NIC_VF_1G", "params": {"mdev_uuid": "abc"}},
        {"name": "nic", "type": "NIC_VF_1G", "params": {"vlan": 200}},  # not demo's to use
    ]
    for request in bad:
        body = {"consumer": "vm-1", "requests": [request]}
        claim = secure_api.post("/v1/claims", json=body, headers=who["demo"])
        assert claim.status_code == 400, (request, claim.text)
        for path in ("/v1/explain", "/v1/capacity"):
            r = secure_api.post(path, json=body, headers=who["demo"])
            assert r.status_code == 400, (path, request, r.text)
            assert r.json()["error"]["code"] == claim.json()["error"]["code"], (path, request, r.text)
    fine = {"requests": [{"name": "nic", "type": "NIC_VF_1G", "params": {"vlan": 100}}]}
    assert secure_api.post("/v1/capacity", json=fine, headers=who["demo"]).json()["total"] == 2
