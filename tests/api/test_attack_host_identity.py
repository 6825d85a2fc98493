"""A host's identity: its host id stays with its name, renames are an admin's, one live agent.

The attack: an agent token for an unregistered name reported with another host's ``host_id``,
and the server followed it as a rename: the attacker's name took over the host's row, its
setup work and its tenants' devices, and the real agent got 404. A host id now belongs to the
name it was first reported under; a rename is ``POST /v1/hosts/{host}/rename`` (admin); two
live agent processes with one host id (a cloned state file) are told apart by their instance id.
"""

from __future__ import annotations

import json
import logging
import random
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from devassign import errors, schemas
from devassign.agent.config import parse_config
from devassign.agent.reporter import AgentConflict, Reporter, ReportRefused, ServerUnavailable
from devassign.cli import inventory as inventory_cli
from devassign.cli.client import Client
from devassign.cli.main import main
from devassign.domain import Role, instance_tag
from devassign.schemas import ReportedDevice
from devassign.store import Store
from tests.conftest import Clock, vf

A_ID = "3f1c9e0a-host-a"
I1 = "instance0000aaaa"
I2 = "instance0000bbbb"
DEVICES = [
    ReportedDevice.model_validate(vf("0000:3b:02.1")),
    ReportedDevice.model_validate(vf("0000:3b:02.2")),
]


def _token(store: Store, role: Role, **scope: str) -> dict[str, str]:
    secret = store.create_token(schemas.TokenCreate(role=role, **scope), "test").token
    return {"Authorization": f"Bearer {secret}"}


def _report(api: TestClient, host: str, who: dict[str, str], generation: int, **extra: Any) -> Any:
    body = {"generation": generation, "devices": [vf("0000:3b:02.1"), vf("0000:3b:02.2")], **extra}
    return api.put(f"/v1/hosts/{host}/inventory", json=body, headers=who)


def _cloud(api: TestClient, store: Store) -> dict[str, dict[str, str]]:
    """compute-a (host id A_ID) and compute-b, two VFs each; project p holds cons-p on compute-a."""
    who = {
        "admin": _token(store, Role.ADMIN),
        "agent_a": _token(store, Role.AGENT, host="compute-a"),
        "agent_b": _token(store, Role.AGENT, host="compute-b"),
        "evil": _token(store, Role.AGENT, host="evil"),
        "member_p": _token(store, Role.MEMBER, project="p"),
    }
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}, headers=who["admin"]).status_code == 201
    r = _report(api, "compute-a", who["agent_a"], 1, host_id=A_ID)
    assert r.status_code == 200, r.text
    r = _report(api, "compute-b", who["agent_b"], 1, host_id="host-b-id")
    assert r.status_code == 200, r.text
    r = api.post(
        "/v1/claims",
        json={
            "consumer": "cons-p",
            "project": "p",
            "hosts": ["compute-a"],
            "requests": [{"name": "n", "type": "NIC_VF_1G"}],
        },
        headers=who["admin"],
    )
    assert r.status_code == 201, r.text
    return who


def _world(api: TestClient, admin: dict[str, str]) -> tuple[Any, ...]:
    """Everything an admin can read about hosts: it must not change on a refusal."""
    return (
        api.get("/v1/hosts", headers=admin).json(),
        api.get("/v1/devices", headers=admin).json(),
        api.get("/v1/allocations", headers=admin).json(),
        api.get("/v1/events", params={"limit": 1000}, headers=admin).json(),
    )


def _events(api: TestClient, admin: dict[str, str], action: str) -> list[dict[str, Any]]:
    found = api.get("/v1/events", params={"limit": 1000}, headers=admin).json()
    return [e for e in found if e["action"] == action]


# ---------------------------------------------------------------- the takeover attack


def test_another_hosts_id_does_not_take_it_over(secure_api: TestClient, store: Store) -> None:
    who = _cloud(secure_api, store)
    before = _world(secure_api, who["admin"])

    r = _report(secure_api, "evil", who["evil"], 99, host_id=A_ID)
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    assert err["code"] == errors.HOST_ID_MISMATCH
    assert f"host id {A_ID} belongs to another host, not 'evil'" in err["message"]
    assert "compute-a" not in err["message"], "the refusal names the host the id is another's"
    assert "devassign host rename OLD evil" in err["message"]
    assert "state file" in err["message"] and "cloned image" in err["message"]

    assert _world(secure_api, who["admin"]) == before  # nothing written, not even an event
    assert secure_api.get("/v1/hosts/evil", headers=who["admin"]).status_code == 404
    assert secure_api.post("/v1/hosts/evil/heartbeat", headers=who["evil"]).status_code == 404
    assert secure_api.get("/v1/hosts/compute-a/work", headers=who["evil"]).status_code == 403
    assert secure_api.get("/v1/allocations/cons-p/libvirt", headers=who["evil"]).status_code == 404

    # The real agent carries on as if nothing happened.
    r = _report(secure_api, "compute-a", who["agent_a"], 2, host_id=A_ID)
    assert r.status_code == 200, r.text
    assert secure_api.post("/v1/hosts/compute-a/heartbeat", headers=who["agent_a"]).status_code == 204
    assert secure_api.get("/v1/hosts/compute-a/work", headers=who["agent_a"]).status_code == 200
    host = secure_api.get("/v1/hosts/compute-a", headers=who["admin"]).json()
    assert (host["host_id"], host["generation"], host["device_count"]) == (A_ID, 2, 2)


def test_a_registered_name_cannot_take_another_hosts_id(secure_api: TestClient, store: Store) -> None:
    who = _cloud(secure_api, store)
    before = _world(secure_api, who["admin"])
    r = _report(secure_api, "compute-b", who["agent_b"], 2, host_id=A_ID)
    assert r.status_code == 409 and r.json()["error"]["code"] == errors.HOST_ID_MISMATCH
    assert _world(secure_api, who["admin"]) == before


# ---------------------------------------------------------------- the admin's rename


def test_an_admin_renames_a_host_and_its_agent_follows(secure_api: TestClient, store: Store) -> None:
    who = _cloud(secure_api, store)
    admin = who["admin"]
    r = _report(secure_api, "compute-a", who["agent_a"], 2, host_id=A_ID, agent_instance=I1)
    assert r.status_code == 200, r.text

    r = secure_api.post("/v1/hosts/compute-a/rename", json={"new_name": "compute-z"}, headers=admin)
    assert r.status_code == 200, r.text
    assert (r.json()["name"], r.json()["host_id"], r.json()["device_count"]) == ("compute-z", A_ID, 2)
    assert [h["name"] for h in secure_api.get("/v1/hosts", headers=admin).json()] == [
        "compute-b",
        "compute-z",
    ]
    assert secure_api.get("/v1/allocations/cons-p", headers=admin).json()["host"] == "compute-z"
    (event,) = _events(secure_api, admin, "host_renamed")
    assert event["host"] == "compute-z"
    assert "compute-a" in event["message"] and "compute-z" in event["message"]
    assert event["detail"]["old_name"] == "compute-a" and event["detail"]["new_name"] == "compute-z"

    # The old name's agent no longer matches: its host id now belongs to compute-z.
    r = _report(secure_api, "compute-a", who["agent_a"], 3, host_id=A_ID, agent_instance=I1)
    assert r.status_code == 409 and r.json()["error"]["code"] == errors.HOST_ID_MISMATCH
    assert "belongs to another host" in r.json()["error"]["message"]
    assert "compute-z" not in r.json()["error"]["message"]
    assert secure_api.get("/v1/hosts/compute-a", headers=admin).status_code == 404
    assert secure_api.get("/v1/hosts/compute-z", headers=who["agent_a"]).status_code == 403

    # With a token for the new name, the same agent (restarted: a new instance) goes on at once.
    agent_z = _token(store, Role.AGENT, host="compute-z")
    r = _report(secure_api, "compute-z", agent_z, 3, host_id=A_ID, agent_instance=I2)
    assert r.status_code == 200, r.text
    assert r.json()["added"] == [] and r.json()["removed"] == []
    assert secure_api.get("/v1/allocations/cons-p", headers=agent_z).json()["host"] == "compute-z"
    mine = {**agent_z, schemas.AGENT_INSTANCE_HEADER: I2}  # as the agent sends its calls
    assert secure_api.get("/v1/hosts/compute-z/work", headers=mine).status_code == 200


def test_rename_refusals(secure_api: TestClient, store: Store) -> None:
    who = _cloud(secure_api, store)
    admin = who["admin"]
    before = _world(secure_api, admin)

    taken = secure_api.post("/v1/hosts/compute-a/rename", json={"new_name": "compute-b"}, headers=admin)
    assert taken.status_code == 409 and taken.json()["error"]["code"] == errors.HOST_EXISTS
    assert "already registered" in taken.json()["error"]["message"]
    same = secure_api.post("/v1/hosts/compute-a/rename", json={"new_name": "compute-a"}, headers=admin)
    assert same.status_code == 409 and same.json()["error"]["code"] == errors.HOST_EXISTS
    unknown = secure_api.post("/v1/hosts/nowhere/rename", json={"new_name": "compute-q"}, headers=admin)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == errors.HOST_NOT_FOUND
    for bad in ("bad name", "-dash", "x" * 254, ""):
        r = secure_api.post("/v1/hosts/compute-a/rename", json={"new_name": bad}, headers=admin)
        assert r.status_code == 400 and r.json()["error"]["code"] == errors.INVALID_REQUEST, bad
    extra = secure_api.post(
        "/v1/hosts/compute-a/rename", json={"new_name": "compute-q", "force": True}, headers=admin
    )
    assert extra.status_code == 400

    for caller in ("member_p", "agent_a", "agent_b", "evil"):
        r = secure_api.post("/v1/hosts/compute-a/rename", json={"new_name": "evil"}, headers=who[caller])
        assert r.status_code == 403 and r.json()["error"]["code"] == errors.FORBIDDEN, caller
    assert secure_api.post("/v1/hosts/compute-a/rename", json={"new_name": "evil"}).status_code == 401
    assert _world(secure_api, admin) == before


def test_rename_in_the_store(store: Store) -> None:
    """The store refuses what the API's validation would, for callers that skip it."""
    store.create_type(schemas.ResourceTypeCreate(name="NIC_VF_1G"), "test")
    report = schemas.InventoryReport(generation=1, host_id=A_ID, devices=DEVICES[:1])
    store.apply_report("compute-a", report, "test")
    with pytest.raises(errors.DevassignError) as bad:
        store.rename_host("compute-a", "no spaces", "admin")
    assert bad.value.code == errors.INVALID_REQUEST
    renamed = store.rename_host("compute-a", "compute-z", "admin")
    assert (renamed.name, renamed.host_id, renamed.device_count) == ("compute-z", A_ID, 1)
    event = store.list_events(host="compute-z")[0]
    assert (event.action, event.actor) == ("host_renamed", "admin")


def test_host_rename_through_the_cli(
    api: TestClient, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}).status_code == 201
    assert _report(api, "compute-a", {}, 1, host_id=A_ID).status_code == 200

    def client(_: Any) -> Client:
        c = Client("http://testserver")
        c.http = api
        return c

    def devassign(*args: str) -> int | str | None:
        monkeypatch.setattr(sys, "argv", ["devassign", *args])
        try:
            main()
        except SystemExit as exc:
            return exc.code
        return 0

    monkeypatch.setattr(inventory_cli, "client", client)
    assert devassign("host", "rename", "compute-a", "compute-z") in (0, None)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "renamed compute-a to compute-z" in out
    assert "devassign token create --role agent --host compute-z" in out
    assert [h["name"] for h in api.get("/v1/hosts").json()] == ["compute-z"]

    assert devassign("host", "rename", "compute-a", "compute-y") == 1  # compute-a is no more
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no host 'compute-a'" in err and "[host_not_found]" in err


# ---------------------------------------------------------------- two live agents


def test_two_live_agents_with_one_host_id_are_refused(
    secure_api: TestClient, store: Store, clock: Clock
) -> None:
    who = _cloud(secure_api, store)
    admin, agent = who["admin"], who["agent_a"]
    assert _report(secure_api, "compute-a", agent, 2, host_id=A_ID, agent_instance=I1).status_code == 200

    clock.advance(5)
    r = _report(secure_api, "compute-a", agent, 3, host_id=A_ID, agent_instance=I2)
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    assert err["code"] == errors.AGENT_CONFLICT and err["retry_after"] == 25
    assert "another agent is live for host 'compute-a'" in err["message"] and A_ID not in err["message"]
    assert "state file" in err["message"] and "restarted" in err["message"]
    assert secure_api.get("/v1/hosts/compute-a", headers=admin).json()["generation"] == 2

    # The two alternate: the live one goes on, the other is refused each time.
    for _ in range(3):
        clock.advance(8)
        assert _report(secure_api, "compute-a", agent, 3, host_id=A_ID, agent_instance=I1).status_code == 200
        beat = secure_api.post(
            "/v1/hosts/compute-a/heartbeat", headers={**agent, schemas.AGENT_INSTANCE_HEADER: I1}
        )
        assert beat.status_code == 204, beat.text
        clock.advance(1)
        r = _report(secure_api, "compute-a", agent, 4, host_id=A_ID, agent_instance=I2)
        assert r.status_code == 409 and r.json()["error"]["code"] == errors.AGENT_CONFLICT
        beat = secure_api.post(
            "/v1/hosts/compute-a/heartbeat", headers={**agent, schemas.AGENT_INSTANCE_HEADER: I2}
        )
        assert beat.status_code == 409 and beat.json()["error"]["code"] == errors.AGENT_CONFLICT

    conflicts = _events(secure_api, admin, "agent_conflict")
    assert len(conflicts) == 7  # each refusal, report or heartbeat
    assert all(e["host"] == "compute-a" and instance_tag(I2) in e["message"] for e in conflicts)
    assert conflicts[0]["detail"] == {
        "instance": instance_tag(I2),
        "live_instance": instance_tag(I1),
        "host_id": A_ID,
    }
    # A report without an instance (an older agent, an admin) is neither checked nor recorded.
    assert _report(secure_api, "compute-a", admin, 4, host_id=A_ID).status_code == 200
    r = _report(secure_api, "compute-a", agent, 5, host_id=A_ID, agent_instance=I2)
    assert r.status_code == 409


def test_a_silent_agent_is_taken_over(secure_api: TestClient, store: Store, clock: Clock) -> None:
    """An agent restart: the new process is refused until the old one has been silent 30 s."""
    who = _cloud(secure_api, store)
    admin, agent = who["admin"], who["agent_a"]
    assert _report(secure_api, "compute-a", agent, 2, host_id=A_ID, agent_instance=I1).status_code == 200
    clock.advance(10)
    store.heartbeat("compute-a", "agent", instance=I1)  # last heard
    clock.advance(29)
    r = _report(secure_api, "compute-a", agent, 3, host_id=A_ID, agent_instance=I2)
    assert r.status_code == 409 and r.json()["error"]["retry_after"] == 1
    clock.advance(1)
    r = _report(secure_api, "compute-a", agent, 3, host_id=A_ID, agent_instance=I2)
    assert r.status_code == 200, r.text
    store.heartbeat("compute-a", "agent", instance=I2)
    # Now the old process is the one refused, should it come back.
    r = _report(secure_api, "compute-a", agent, 4, host_id=A_ID, agent_instance=I1)
    assert r.status_code == 409 and instance_tag(I2) in r.json()["error"]["message"]
    with pytest.raises(errors.DevassignError):
        store.heartbeat("compute-a", "agent", instance=I1)
    # A heartbeat may take over too, after the same silence.
    clock.advance(30)
    store.heartbeat("compute-a", "agent", instance=I1)
    r = _report(secure_api, "compute-a", agent, 4, host_id=A_ID, agent_instance=I2)
    assert r.status_code == 409 and r.json()["error"]["code"] == errors.AGENT_CONFLICT
    assert len(_events(secure_api, admin, "agent_conflict")) == 4


def test_a_malformed_instance_is_refused(secure_api: TestClient, store: Store) -> None:
    who = _cloud(secure_api, store)
    r = _report(secure_api, "compute-a", who["agent_a"], 2, agent_instance="a b")
    assert r.status_code == 400 and r.json()["error"]["code"] == errors.INVALID_REQUEST
    with pytest.raises(errors.DevassignError) as bad:
        store.heartbeat("compute-a", "agent", instance="x" * 65)
    assert bad.value.code == errors.INVALID_REQUEST


# ---------------------------------------------------------------- the agent's side


def _agent(
    tmp_path: Path,
    api: TestClient,
    token: dict[str, str],
    clock: Clock,
    sleeps: list[float],
    host: str = "compute-a",
) -> Reporter:
    """A reporter (one agent process of compute-a, whose state file holds A_ID) talking to the
    test server; its sleeps move the server's clock."""
    state = tmp_path / "state.json"
    if not state.exists():
        state.write_text(json.dumps({"host_id": A_ID, "generation": 1}))
    config = parse_config(
        {
            "host": host,
            "server": "http://testserver",
            "state_file": "state.json",
            "token": token["Authorization"].removeprefix("Bearer "),
            "report_interval": 30,
            "heartbeat_interval": 10,
        },
        base_dir=tmp_path,
    )

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.advance(seconds)

    def monotonic() -> float:
        return clock.now.timestamp()

    return Reporter(
        config,
        lambda: DEVICES,
        api,
        clock=monotonic,
        sleep=sleep,
        rng=random.Random(1),
    )


def test_a_restarted_agent_waits_then_takes_over(
    secure_api: TestClient, store: Store, clock: Clock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    who = _cloud(secure_api, store)
    sleeps: list[float] = []
    old = _agent(tmp_path, secure_api, who["agent_a"], clock, sleeps)
    old.report()
    clock.advance(3)

    new = _agent(tmp_path, secure_api, who["agent_a"], clock, sleeps)  # same state file
    assert new.instance != old.instance
    caplog.set_level(logging.WARNING)
    with pytest.raises(AgentConflict) as first:
        new.report()
    assert first.value.retry_after == 27 and "is live for host 'compute-a'" in str(first.value)
    with pytest.raises(AgentConflict) as again:
        new.report()
    assert "still refused" in str(again.value) and "is live" not in str(again.value)
    with pytest.raises(ServerUnavailable, match="no lifecycle work while refused"):
        new.request("GET", "work")  # a refused agent touches no device

    new.run(iterations=2)  # waits as long as the server said, then is taken: no giving up
    assert sleeps[0] >= 27 and new.conflict is None
    assert "takes this agent" in caplog.text
    assert new.request("GET", "work").status_code == 200
    with pytest.raises(AgentConflict):
        old.report()
    assert len(_events(secure_api, who["admin"], "agent_conflict")) == 4


def test_a_one_shot_run_claims_no_instance(
    secure_api: TestClient, store: Store, clock: Clock, tmp_path: Path
) -> None:
    who = _cloud(secure_api, store)
    daemon = _agent(tmp_path, secure_api, who["agent_a"], clock, [])
    daemon.report()
    once = _agent(tmp_path, secure_api, who["agent_a"], clock, [])
    result = once.run(once=True)  # right after the other process: not refused
    assert result is not None and once.instance is None
    assert _events(secure_api, who["admin"], "agent_conflict") == []


def test_an_agent_quoting_another_hosts_id_says_which_state_file(
    secure_api: TestClient, store: Store, clock: Clock, tmp_path: Path
) -> None:
    who = _cloud(secure_api, store)
    clone = _agent(tmp_path, secure_api, who["evil"], clock, [], host="evil")  # a copied state file
    with pytest.raises(ReportRefused, match="host_id_mismatch") as refused:
        clone.report()
    assert f"this agent's state file: {tmp_path / 'state.json'}" in str(refused.value)
    assert secure_api.get("/v1/hosts/evil", headers=who["admin"]).status_code == 404


def test_a_refused_machine_never_learns_the_live_agents_instance(
    secure_api: TestClient, store: Store, clock: Clock
) -> None:
    """The live agent's instance id fences the host's work: a second machine holding a copy of
    the agent token, refused as the host, must not read it in any answer or event, so it can
    neither fetch nor answer the host's work; and naming an instance never skips the heartbeat's
    host id check."""
    who = _cloud(secure_api, store)
    agent = who["agent_a"]
    assert _report(secure_api, "compute-a", agent, 2, host_id=A_ID, agent_instance=I1).status_code == 200
    clock.advance(2)
    answers = [
        _report(secure_api, "compute-a", agent, 3, host_id=A_ID, agent_instance=I2),
        secure_api.get("/v1/hosts/compute-a/work", headers={**agent, schemas.AGENT_INSTANCE_HEADER: I2}),
        secure_api.post(
            "/v1/hosts/compute-a/work",
            headers={**agent, schemas.AGENT_INSTANCE_HEADER: I2},
            json={"results": []},
        ),
        secure_api.get("/v1/hosts/compute-a/work", headers=agent),
        secure_api.post(
            "/v1/hosts/compute-a/heartbeat", headers={**agent, schemas.AGENT_INSTANCE_HEADER: I2}, json={}
        ),
    ]
    assert [a.status_code for a in answers] == [409] * 5, [a.text for a in answers]
    events = secure_api.get("/v1/events", params={"limit": 1000}, headers=agent)
    assert events.status_code == 200
    for text in [
        *(a.text for a in answers),
        events.text,
        secure_api.get("/v1/hosts/compute-a", headers=agent).text,
    ]:
        assert I1 not in text
    # Naming the live instance does not make another machine's host id pass.
    beat = secure_api.post(
        "/v1/hosts/compute-a/heartbeat",
        headers={**agent, schemas.AGENT_INSTANCE_HEADER: I1},
        json={"host_id": "9999-other-machine"},
    )
    assert beat.status_code == 409 and beat.json()["error"]["code"] == errors.HOST_ID_MISMATCH, beat.text
    beat = secure_api.post(
        "/v1/hosts/compute-a/heartbeat",
        headers={**agent, schemas.AGENT_INSTANCE_HEADER: I1},
        json={"host_id": A_ID},
    )
    assert beat.status_code == 204, beat.text


def test_no_one_but_an_admin_reads_a_hosts_id(secure_api: TestClient, store: Store) -> None:
    """The host id and the host's agent token together make a machine the host's agent. A
    machine with a copy of the token (not the state file) read the id from its host's record,
    its events or a heartbeat's refusal, reported with it once the real agent was quiet, and
    was taken for the host (the real machine then refused)."""
    who = _cloud(secure_api, store)
    assert secure_api.post("/v1/hosts/compute-a/rename", json={"new_name": "compute-z"}, headers=who["admin"])
    assert secure_api.post("/v1/hosts/compute-z/rename", json={"new_name": "compute-a"}, headers=who["admin"])

    assert secure_api.get("/v1/hosts/compute-a", headers=who["admin"]).json()["host_id"] == A_ID
    one = secure_api.get("/v1/hosts/compute-a", headers=who["agent_a"])
    assert one.status_code == 200 and one.json()["host_id"] is None, one.text
    listed = secure_api.get("/v1/hosts", headers=who["agent_a"]).json()
    assert [h["host_id"] for h in listed] == [None]
    assert secure_api.get("/v1/hosts", headers=who["member_p"]).status_code == 403
    # A rename recorded before the id was the admins' alone said it in its message too.
    from devassign.store import events as event_log

    store.db.retrying(
        lambda c: event_log.record(
            c,
            at=store.clock(),
            actor="admin#1",
            action="host_renamed",
            host="compute-a",
            message=f"host old renamed to compute-a (host id {A_ID}); its agent needs a token for compute-a",
            detail={"old_name": "old", "new_name": "compute-a", "host_id": A_ID},
        )
    )
    events = secure_api.get("/v1/events", params={"limit": 1000}, headers=who["agent_a"]).json()
    assert sum(e["action"] == "host_renamed" for e in events) == 3
    assert A_ID not in str(events), "an agent read its host's id from the events"

    beat = secure_api.post(
        "/v1/hosts/compute-a/heartbeat", json={"host_id": "a-clone"}, headers=who["agent_a"]
    )
    assert beat.status_code == 409 and beat.json()["error"]["code"] == errors.HOST_ID_MISMATCH
    assert A_ID not in beat.text
    r = _report(secure_api, "compute-a", who["agent_a"], 7, host_id="a-clone")
    assert r.status_code == 409 and A_ID not in r.text


def test_an_agent_that_leaves_the_host_id_out_is_not_taken_for_the_host(
    secure_api: TestClient, store: Store, clock: Clock
) -> None:
    """A machine with a copy of the host's token, not its state file, sent its reports with
    no host id and was taken for the host once the real agent had been quiet a while: it
    fetched the host's work, and the real agent was then the one refused."""
    who = _cloud(secure_api, store)
    assert (
        _report(secure_api, "compute-a", who["agent_a"], 2, host_id=A_ID, agent_instance=I1).status_code
        == 200
    )
    clock.advance(120)  # the real agent of compute-a is quiet
    r = _report(secure_api, "compute-a", who["agent_a"], 5, agent_instance=I2)
    assert r.status_code == 409 and r.json()["error"]["code"] == errors.HOST_ID_MISMATCH, r.text
    assert "sends none" in r.json()["error"]["message"] and A_ID not in r.text
    beat = secure_api.post(
        "/v1/hosts/compute-a/heartbeat", headers={**who["agent_a"], "X-Devassign-Agent-Instance": I2}
    )
    assert beat.status_code == 409 and beat.json()["error"]["code"] == errors.HOST_ID_MISMATCH, beat.text
    # A bare heartbeat only keeps the host up; the work stays the host's agent's.
    assert secure_api.post("/v1/hosts/compute-a/heartbeat", headers=who["agent_a"]).status_code == 204
    work = secure_api.get("/v1/hosts/compute-a/work", headers=who["agent_a"])
    assert work.status_code == 409 and work.json()["error"]["code"] == errors.AGENT_CONFLICT
    # The real agent, with its id, goes on; an admin's report (a loaded file) needs none.
    assert (
        _report(secure_api, "compute-a", who["agent_a"], 6, host_id=A_ID, agent_instance=I1).status_code
        == 200
    )
    assert secure_api.post("/v1/hosts/compute-a/heartbeat", json={"host_id": A_ID}, headers=who["agent_a"])
    assert _report(secure_api, "compute-a", who["admin"], 7).status_code == 200
    # A client that never sends a host id (the API's plain report) registers none: not fenced.
    fresh = _token(store, Role.AGENT, host="plain-1")
    assert _report(secure_api, "plain-1", fresh, 1).status_code == 200
    assert _report(secure_api, "plain-1", fresh, 2).status_code == 200
    assert secure_api.post("/v1/hosts/plain-1/heartbeat", headers=fresh).status_code == 204


def test_an_agent_reads_its_hosts_id_only_by_naming_it(secure_api: TestClient, store: Store) -> None:
    """What a renamed host's agent confirms the rename by; it learns nothing it did not hold."""
    who = _cloud(secure_api, store)
    named = secure_api.get("/v1/hosts/compute-a", params={"host_id": A_ID}, headers=who["agent_a"])
    assert named.status_code == 200 and named.json()["host_id"] == A_ID
    guessed = secure_api.get("/v1/hosts/compute-a", params={"host_id": "a-guess"}, headers=who["agent_a"])
    assert guessed.status_code == 200 and guessed.json()["host_id"] is None
