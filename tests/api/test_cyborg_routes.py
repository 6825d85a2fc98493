"""The Cyborg subset Nova calls (/accelerator/v2): profiles, ARQs, binds as claims, events.

Nova itself drives this API in tests/openstack/test_cyborg_api.py; here are the store and
route rules, the refusals above all, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from devassign import schemas
from devassign.domain import Role
from devassign.openstack.nova_events import NovaEvents
from devassign.server import cyborg
from devassign.store import Store
from tests.conftest import vf

A = "/accelerator/v2"
NIC = {"resources:CUSTOM_NIC_VF_1G": "2", "trait:CUSTOM_FAST": "required"}


@pytest.fixture
def cloud(api: TestClient) -> TestClient:
    """Type NIC_VF_1G and host compute-1 with 4 VFs; a profile ``nic2`` of two of them."""
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}).status_code == 201
    devices = [vf(f"0000:3b:02.{i}") for i in range(4)]
    r = api.put("/v1/hosts/compute-1/inventory", json={"generation": 1, "devices": devices})
    assert r.status_code == 200, r.text
    r = api.post(f"{A}/device_profiles", json=[{"name": "nic2", "groups": [NIC]}])
    assert r.status_code == 201, r.text
    return api


class Nova:
    """Nova's external-events API as a mock transport: records each body, answers ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[httpx.Headers] = []
        self.status = status

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(json.loads(request.content))
        self.headers.append(request.headers)
        return httpx.Response(self.status, json={"events": []})


def nova_for(api: TestClient, status: int = 200) -> Nova:
    nova = Nova(status)
    s = cyborg.sender(api.app)  # type: ignore[arg-type]
    s.nova = NovaEvents("http://nova.test/v2.1", "nova-token", transport=httpx.MockTransport(nova))
    return nova


def make_arqs(api: TestClient, profile: str = "nic2") -> list[str]:
    r = api.post(f"{A}/accelerator_requests", json={"device_profile_name": profile})
    assert r.status_code == 201, r.text
    return [a["uuid"] for a in r.json()["arqs"]]


def bind(api: TestClient, arqs: list[str], instance: str, host: str = "compute-1") -> httpx.Response:
    patch = {
        a: [
            {"path": "/hostname", "op": "add", "value": host},
            {"path": "/device_rp_uuid", "op": "add", "value": str(uuid.uuid4())},
            {"path": "/instance_uuid", "op": "add", "value": instance},
        ]
        for a in arqs
    }
    return api.patch(f"{A}/accelerator_requests", json=patch)


def of(api: TestClient, instance: str, **params: str) -> list[dict[str, Any]]:
    r = api.get(f"{A}/accelerator_requests", params={"instance": instance, **params})
    assert r.status_code == 200, r.text
    arqs: list[dict[str, Any]] = r.json()["arqs"]
    return arqs


def live(api: TestClient, instance: str) -> dict[str, Any] | None:
    r = api.get("/v1/allocations", params={"consumer": instance})
    assert r.status_code == 200
    found: list[dict[str, Any]] = r.json()
    return found[0] if found else None


def set_up(api: TestClient, instance: str, ok: bool = True) -> None:
    """What the agent of compute-1 posts after running the setups."""
    alloc = live(api, instance)
    assert alloc is not None
    results = [
        {"device_id": d["id"], "action": "setup", "ok": ok, "consumer": instance} for d in alloc["devices"]
    ]
    r = api.post("/v1/hosts/compute-1/work", json={"results": results})
    assert r.status_code == 200, r.text


# ---------------------------------------------------------------- device profiles


def test_profile_is_found_by_name_and_uuid_and_deleted(cloud: TestClient) -> None:
    listed = cloud.get(f"{A}/device_profiles", params={"name": "nic2"}).json()["device_profiles"]
    assert [p["groups"] for p in listed] == [[NIC]]
    assert cloud.get(f"{A}/device_profiles", params={"name": "other"}).json() == {"device_profiles": []}
    assert cloud.get(f"{A}/device_profiles/{listed[0]['uuid']}").json()["name"] == "nic2"
    assert cloud.delete(f"{A}/device_profiles/nic2").status_code == 204
    r = cloud.get(f"{A}/device_profiles/nic2")
    assert r.status_code == 404 and "no device profile 'nic2'" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("groups", "says"),
    [
        ([{"resources:CUSTOM_GPU_H100": "1"}], "CUSTOM_GPU_H100 is no devassign type"),
        ([{"resources:CUSTOM_NIC_VF_1G": "two"}], "a count of 1 to 64"),
        ([{"resources:CUSTOM_NIC_VF_1G": "0"}], "a count of 1 to 64"),
        ([{"resources:CUSTOM_NIC_VF_1G": "1", "resources1:CUSTOM_NIC_VF_1G": "1"}], "one resources:"),
        ([{"trait:CUSTOM_X": "required"}], "found 0"),
        ([{"hw:cpu_policy": "dedicated", "resources:CUSTOM_NIC_VF_1G": "1"}], "is not resources:"),
        ([{"resources:CUSTOM_NIC_VF_1G": "1", "trait:CUSTOM_X": "maybe"}], "required or forbidden"),
        ([], "1 or more groups"),
        ("x", "1 or more groups"),
        ([{"resources:CUSTOM_NIC_VF_1G": 1}], "strings to strings"),
    ],
)
def test_bad_profile_is_a_400_that_says_what_to_fix(cloud: TestClient, groups: Any, says: str) -> None:
    r = cloud.post(f"{A}/device_profiles", json={"name": "bad", "groups": groups})
    assert r.status_code == 400, r.text
    assert says in r.json()["error"]["message"]
    assert cloud.get(f"{A}/device_profiles", params={"name": "bad"}).json()["device_profiles"] == []


def test_profile_names_and_duplicates(cloud: TestClient) -> None:
    r = cloud.post(f"{A}/device_profiles", json={"name": "nic2", "groups": [NIC]})
    assert r.status_code == 409 and "exists" in r.json()["error"]["message"]
    r = cloud.post(f"{A}/device_profiles", json={"name": "a b", "groups": [NIC]})
    assert r.status_code == 400
    r = cloud.post(
        f"{A}/device_profiles", json=[{"name": "x", "groups": [NIC]}, {"name": "y", "groups": [NIC]}]
    )
    assert r.status_code == 400 and "one device profile per call" in r.json()["error"]["message"]


def test_a_resource_class_maps_to_a_type_of_any_case(api: TestClient) -> None:
    assert api.post("/v1/resource-types", json={"name": "nicvf"}).status_code == 201
    r = api.post(f"{A}/device_profiles", json={"name": "lower", "groups": [{"resources:CUSTOM_NICVF": "1"}]})
    assert r.status_code == 201, r.text
    r = api.post(f"{A}/accelerator_requests", json={"device_profile_name": "lower"})
    assert [a["state"] for a in r.json()["arqs"]] == ["Initial"]


# ---------------------------------------------------------------- ARQs


def test_arqs_are_one_per_device_and_unknown_profile_is_404(cloud: TestClient) -> None:
    r = cloud.post(f"{A}/accelerator_requests", json={"device_profile_name": "nic2"})
    arqs = r.json()["arqs"]
    assert [(a["state"], a["device_profile_group_id"], a["device_profile_name"]) for a in arqs] == [
        ("Initial", 0, "nic2"),
        ("Initial", 0, "nic2"),
    ]
    assert cloud.get(f"{A}/accelerator_requests/{arqs[0]['uuid']}").json()["uuid"] == arqs[0]["uuid"]
    assert cloud.get(f"{A}/accelerator_requests/nope").status_code == 404
    r = cloud.post(f"{A}/accelerator_requests", json={"device_profile_name": "nope"})
    assert r.status_code == 404 and "no device profile 'nope'" in r.json()["error"]["message"]
    assert cloud.post(f"{A}/accelerator_requests", json={"name": "nic2"}).status_code == 400


def test_bind_claims_then_bound_after_setup_and_nova_is_told(cloud: TestClient) -> None:
    nova = nova_for(cloud)
    arqs, instance = make_arqs(cloud), str(uuid.uuid4())
    r = bind(cloud, arqs, instance)
    assert r.status_code == 202, r.text
    alloc = live(cloud, instance)
    assert alloc is not None and alloc["host"] == "compute-1" and len(alloc["devices"]) == 2
    assert {a["state"] for a in of(cloud, instance)} == {"BindStarted"}
    assert of(cloud, instance, bind_state="resolved") == []
    cyborg.sender(cloud.app).step()  # type: ignore[arg-type]
    assert nova.bodies == []  # not set up yet: nothing to tell

    set_up(cloud, instance)
    cyborg.sender(cloud.app).step()  # type: ignore[arg-type]
    bound = of(cloud, instance, bind_state="resolved")
    assert {a["state"] for a in bound} == {"Bound"} and len(bound) == 2
    addresses = {d["address"] for d in alloc["devices"]}
    for a in bound:
        assert a["attach_handle_type"] == "PCI" and a["hostname"] == "compute-1"
        h = a["attach_handle_info"]
        assert f"{h['domain']}:{h['bus']}:{h['device']}.{h['function']}" in addresses
    assert len(nova.bodies) == 1
    assert sorted(nova.bodies[0]["events"], key=lambda e: e["tag"]) == [
        {"name": "accelerator-request-bound", "server_uuid": instance, "tag": a, "status": "completed"}
        for a in sorted(arqs)
    ]
    assert nova.headers[0]["X-Auth-Token"] == "nova-token"
    assert nova.headers[0]["OpenStack-API-Version"] == "compute 2.82"
    cyborg.sender(cloud.app).step()  # type: ignore[arg-type]
    assert len(nova.bodies) == 1  # told once


def test_a_failed_setup_is_bind_failed_and_a_failed_event(cloud: TestClient) -> None:
    nova = nova_for(cloud)
    arqs, instance = make_arqs(cloud), str(uuid.uuid4())
    assert bind(cloud, arqs, instance).status_code == 202
    set_up(cloud, instance, ok=False)
    cyborg.sender(cloud.app).step()  # type: ignore[arg-type]
    assert {a["state"] for a in of(cloud, instance)} == {"BindFailed"}
    assert {e["status"] for e in nova.bodies[0]["events"]} == {"failed"}


def test_nova_unreachable_is_retried_until_it_answers(cloud: TestClient) -> None:
    nova = nova_for(cloud, status=503)
    arqs, instance = make_arqs(cloud), str(uuid.uuid4())
    assert bind(cloud, arqs, instance).status_code == 202
    set_up(cloud, instance)
    s = cyborg.sender(cloud.app)  # type: ignore[arg-type]
    s.step()
    s.step()
    assert len(nova.bodies) == 2 and s.delay > s.interval
    nova.status = 200
    s.step()
    s.step()
    assert len(nova.bodies) == 3 and s.delay == s.interval


def test_bind_refusals_change_nothing(cloud: TestClient) -> None:
    arqs, instance = make_arqs(cloud), str(uuid.uuid4())
    r = bind(cloud, arqs, instance, host="compute-9")
    assert r.status_code == 404 and "host 'compute-9' is not known" in r.json()["error"]["message"]
    r = bind(cloud, [*arqs, "no-such-arq"], instance)
    assert r.status_code == 404 and "no accelerator request no-such-arq" in r.json()["error"]["message"]
    r = bind(cloud, arqs, "not-a-uuid")
    assert r.status_code == 400 and "is not a UUID" in r.json()["error"]["message"]
    assert live(cloud, instance) is None
    assert {a["state"] for a in cloud.get(f"{A}/accelerator_requests").json()["arqs"]} == {"Initial"}
    # more than the host has: the claim's own refusal
    more = make_arqs(cloud) + make_arqs(cloud) + make_arqs(cloud)
    r = bind(cloud, more, instance)
    assert r.status_code == 409 and r.json()["error"]["code"] == "no_valid_host"
    assert live(cloud, instance) is None


@pytest.mark.parametrize(
    ("patch", "says"),
    [
        ([{"path": "/hostname", "op": "add", "value": "compute-1"}], "a bind adds /instance_uuid"),
        ([{"path": "/state", "op": "add", "value": "Bound"}], "only /hostname"),
        (
            [{"path": "/hostname", "op": "add", "value": "x"}, {"path": "/instance_uuid", "op": "remove"}],
            "all operations",
        ),
        ([], "a JSON patch"),
        ([{"path": "/hostname", "op": ["add"], "value": "compute-1"}], "both strings"),
        ([{"path": "/hostname", "op": {"a": 1}, "value": "compute-1"}], "both strings"),
        ([{"path": ["/hostname"], "op": "add", "value": "compute-1"}], "both strings"),
    ],
)
def test_bad_patches_are_400(cloud: TestClient, patch: Any, says: str) -> None:
    arq = make_arqs(cloud)[0]
    r = cloud.patch(f"{A}/accelerator_requests", json={arq: patch})
    assert r.status_code == 400 and says in r.json()["error"]["message"], r.text


def test_a_replayed_bind_is_the_same_and_a_second_bind_is_refused(cloud: TestClient) -> None:
    arqs, instance = make_arqs(cloud), str(uuid.uuid4())
    assert bind(cloud, arqs, instance).status_code == 202
    before = live(cloud, instance)
    assert bind(cloud, arqs, instance).status_code == 202  # Nova retried: same allocation
    assert live(cloud, instance) == before
    r = bind(cloud, make_arqs(cloud), instance)
    assert r.status_code == 409 and "one allocation per instance" in r.json()["error"]["message"]
    assert live(cloud, instance) == before


def test_unbind_and_delete_release_the_devices(cloud: TestClient) -> None:
    arqs, instance = make_arqs(cloud), str(uuid.uuid4())
    assert bind(cloud, arqs, instance).status_code == 202
    unbind = {
        a: [{"path": f"/{f}", "op": "remove"} for f in ("hostname", "device_rp_uuid", "instance_uuid")]
        for a in arqs
    }
    assert cloud.patch(f"{A}/accelerator_requests", json=unbind).status_code == 202
    assert live(cloud, instance) is None
    assert {a["state"] for a in cloud.get(f"{A}/accelerator_requests").json()["arqs"]} == {"Initial"}
    # bound again (the instance may bind anew once its devices are released), then deleted
    assert bind(cloud, arqs, instance).status_code == 202, "a second bind after an unbind"
    assert live(cloud, instance) is not None
    assert cloud.delete(f"{A}/accelerator_requests", params={"instance": instance}).status_code == 204
    assert live(cloud, instance) is None and of(cloud, instance) == []
    assert cloud.delete(f"{A}/accelerator_requests", params={"instance": instance}).status_code == 204
    r = cloud.get("/v1/devices", params={"host": "compute-1"})
    assert [d["state"] for d in r.json()] == ["cleaning"] * 4  # two by the unbind, two by the delete


def test_delete_by_uuid_releases_and_404s_the_unknown(cloud: TestClient) -> None:
    arqs, instance = make_arqs(cloud), str(uuid.uuid4())
    spare = make_arqs(cloud)
    assert bind(cloud, arqs, instance).status_code == 202
    r = cloud.delete(f"{A}/accelerator_requests", params={"arqs": ",".join([*arqs, spare[0], "gone"])})
    assert r.status_code == 404 and "gone" in r.json()["error"]["message"]
    assert live(cloud, instance) is None
    left = [a["uuid"] for a in cloud.get(f"{A}/accelerator_requests").json()["arqs"]]
    assert left == [spare[1]]
    r = cloud.delete(f"{A}/accelerator_requests")
    assert r.status_code == 400


def test_a_device_nova_cannot_attach_is_refused_and_released(api: TestClient) -> None:
    assert api.post("/v1/resource-types", json={"name": "TOKEN_KEY"}).status_code == 201
    usb = {
        "address": "usb:1-2",
        "kind": "usb",
        "type": "TOKEN_KEY",
        "vendor_id": "1050",
        "product_id": "0407",
        "attributes": {},
    }
    assert (
        api.put("/v1/hosts/compute-1/inventory", json={"generation": 1, "devices": [usb]}).status_code == 200
    )
    profile = {"name": "key", "groups": [{"resources:CUSTOM_TOKEN_KEY": "1"}]}
    assert api.post(f"{A}/device_profiles", json=profile).status_code == 201
    once = {"config": {"one_time_use": True}}
    assert api.patch("/v1/resource-types/TOKEN_KEY", json=once).status_code == 200
    instance = str(uuid.uuid4())
    r = bind(api, make_arqs(api, "key"), instance)
    assert r.status_code == 409 and "Nova can attach" in r.json()["error"]["message"], r.text
    assert live(api, instance) is None
    # Never claimed, so never cleaned: a one-time-use token is not used up by a refused bind.
    (token,) = api.get("/v1/devices", params={"host": "compute-1"}).json()
    assert token["state"] == "available", token
    kinds = {e["action"] for e in api.get("/v1/events").json()}
    assert not kinds & {"allocation_created", "allocation_released", "device_quarantined"}, kinds


def test_a_type_of_pci_and_usb_devices_binds_only_the_pci_ones(api: TestClient) -> None:
    assert api.post("/v1/resource-types", json={"name": "CRYPTO"}).status_code == 201
    tokens = [
        {"address": f"usb:1-{i}", "kind": "usb", "type": "CRYPTO", "vendor_id": "1050", "product_id": "0407"}
        for i in range(3)
    ]
    devices = [*tokens, *(vf(f"0000:3b:02.{i}", "CRYPTO") for i in range(3))]
    r = api.put("/v1/hosts/compute-1/inventory", json={"generation": 1, "devices": devices})
    assert r.status_code == 200, r.text
    profile = {"name": "crypto", "groups": [{"resources:CUSTOM_CRYPTO": "1"}]}
    assert api.post(f"{A}/device_profiles", json=profile).status_code == 201
    held = []
    for _ in range(3):
        instance = str(uuid.uuid4())
        assert bind(api, make_arqs(api, "crypto"), instance).status_code == 202
        held += [d["address"] for d in api.get(f"/v1/allocations/{instance}").json()["devices"]]
    assert sorted(held) == [f"0000:3b:02.{i}" for i in range(3)]
    r = bind(api, make_arqs(api, "crypto"), str(uuid.uuid4()))  # three USB tokens left, no VF
    assert r.status_code == 409 and "Nova can attach" in r.json()["error"]["message"], r.text


def test_mdev_handle_names_its_parent_type_and_the_uuid_the_agent_creates(api: TestClient) -> None:
    from devassign.lifecycle.handlers.mdev import MDEV_NAMESPACE

    assert api.post("/v1/resource-types", json={"name": "VGPU_A10"}).status_code == 201
    slot = {
        "address": "0000:81:00.0/nvidia-558/0",
        "kind": "mdev_type",
        "type": "VGPU_A10",
        "parent": "0000:81:00.0",
        "attributes": {},
    }
    r = api.put("/v1/hosts/compute-1/inventory", json={"generation": 1, "devices": [slot]})
    assert r.status_code == 200 and not r.json()["refused"], r.text
    assert (
        api.post(
            f"{A}/device_profiles", json={"name": "vgpu", "groups": [{"resources:CUSTOM_VGPU_A10": "1"}]}
        ).status_code
        == 201
    )
    instance = str(uuid.uuid4())
    assert bind(api, make_arqs(api, "vgpu"), instance).status_code == 202
    (arq,) = of(api, instance)
    assert arq["attach_handle_type"] == "MDEV"
    assert arq["attach_handle_info"] == {
        "domain": "0000",
        "bus": "81",
        "device": "00",
        "function": "0",
        "asked_type": "nvidia-558",
    }
    assert arq["attach_handle_uuid"] == str(
        uuid.uuid5(MDEV_NAMESPACE, f"{instance}/0000:81:00.0/nvidia-558/0")
    )


def test_nova_token_header_is_accepted_and_roles_apply(secure_api: TestClient, store: Store) -> None:
    admin = store.create_token(schemas.TokenCreate(role=Role.ADMIN), "test").token
    member = store.create_token(schemas.TokenCreate(role=Role.MEMBER, project="p"), "test").token
    r = secure_api.get(f"{A}/accelerator_requests", headers={"X-Auth-Token": admin})
    assert r.status_code == 200, r.text
    assert secure_api.get(f"{A}/accelerator_requests", headers={"X-Auth-Token": member}).status_code == 403
    assert secure_api.get(f"{A}/device_profiles", headers={"X-Auth-Token": member}).status_code == 200
    assert secure_api.get(f"{A}/accelerator_requests").status_code == 401
    # X-Auth-Token is read on the Cyborg API only
    assert secure_api.get("/v1/hosts", headers={"X-Auth-Token": admin}).status_code == 401
    # version discovery needs no token, and points at itself
    r = secure_api.get(A)
    assert r.status_code == 200 and r.json()["version"]["links"][0]["href"].endswith("/accelerator/v2/")


def test_events_nova_refuses_or_too_old_are_dropped(cloud: TestClient, clock: Any) -> None:
    nova = nova_for(cloud, status=404)  # e.g. the instance is gone already
    s = cyborg.sender(cloud.app)  # type: ignore[arg-type]
    arqs, instance = make_arqs(cloud), str(uuid.uuid4())
    assert bind(cloud, arqs, instance).status_code == 202
    set_up(cloud, instance)
    s.step()
    s.step()
    assert len(nova.bodies) == 1  # refused for good: not sent again
    nova.status = 200
    late, other = make_arqs(cloud), str(uuid.uuid4())
    assert bind(cloud, late, other).status_code == 202
    set_up(cloud, other)
    cyborg._cyborg(cloud.app).resolve()  # type: ignore[arg-type]
    clock.advance(16 * 60)  # Nova stopped waiting long ago
    s.step()
    assert len(nova.bodies) == 1


def test_without_a_nova_url_events_are_not_kept(cloud: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    s = cyborg.sender(cloud.app)  # type: ignore[arg-type]
    s.nova = None
    arqs, instance = make_arqs(cloud), str(uuid.uuid4())
    assert bind(cloud, arqs, instance).status_code == 202
    set_up(cloud, instance)
    s.step()
    s.step()
    assert caplog.text.count("DEVASSIGN_NOVA_URL is not set") == 1
    assert cyborg._cyborg(cloud.app).pending_events() == []  # type: ignore[arg-type]
    assert {a["state"] for a in of(cloud, instance)} == {"Bound"}


def test_a_patch_for_two_instances_binds_both_or_neither(cloud: TestClient) -> None:
    # ``one`` sorts first: it is claimed, then undone when ``two`` does not fit
    one, two = "00000000-0000-4000-8000-000000000001", "ffffffff-0000-4000-8000-000000000002"
    first, second = make_arqs(cloud), make_arqs(cloud) + make_arqs(cloud)  # 2 + 4 VFs: 6 > 4
    patch = {**bind_patch(first, one, "compute-1"), **bind_patch(second, two, "compute-1")}
    r = cloud.patch(f"{A}/accelerator_requests", json=patch)
    assert r.status_code == 409 and r.json()["error"]["code"] == "no_valid_host", r.text
    assert live(cloud, one) is None and live(cloud, two) is None
    assert {a["state"] for a in cloud.get(f"{A}/accelerator_requests").json()["arqs"]} == {"Initial"}
    patch = {**bind_patch(first, one, "compute-1"), **bind_patch(second[:2], two, "compute-9")}
    assert cloud.patch(f"{A}/accelerator_requests", json=patch).status_code == 404
    assert live(cloud, one) is None


def bind_patch(arqs: list[str], instance: str, host: str) -> dict[str, Any]:
    return {
        a: [
            {"path": "/hostname", "op": "add", "value": host},
            {"path": "/instance_uuid", "op": "add", "value": instance},
        ]
        for a in arqs
    }


class Keystone:
    """Keystone's ``GET /v3/auth/tokens`` (a token validating itself) as a mock transport."""

    def __init__(self) -> None:
        later = "2099-01-01T00:00:00.000000Z"
        self.tokens = {
            "ks-admin": ("alice", ["admin", "member"], later),
            "ks-user": ("bob", ["member", "reader"], later),
            "ks-nova": ("nova", ["service"], later),
            "ks-old": ("carol", ["admin"], "2000-01-01T00:00:00Z"),
        }
        self.calls = 0
        self.up = True

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if not self.up:
            raise httpx.ConnectError("refused", request=request)
        subject = request.headers.get("X-Subject-Token")
        assert request.url.path == "/v3/auth/tokens" and subject == request.headers.get("X-Auth-Token")
        if subject not in self.tokens:
            return httpx.Response(404, json={"error": {"code": 404}})
        name, roles, expires = self.tokens[subject]
        token = {
            "user": {"name": name, "id": name},
            "roles": [{"name": r} for r in roles],
            "expires_at": expires,
        }
        return httpx.Response(200, json={"token": token})


def test_keystone_tokens_nova_sends_are_validated(secure_api: TestClient) -> None:
    from devassign.openstack.keystone import KeystoneAuth

    keystone = Keystone()
    secure_api.app.state.keystone = KeystoneAuth(  # type: ignore[attr-defined]
        "http://keystone.test/v3", transport=httpx.MockTransport(keystone)
    )
    arqs = f"{A}/accelerator_requests"

    def get(path: str, **headers: str) -> int:
        return secure_api.get(path, headers=headers).status_code

    assert get(arqs, **{"X-Auth-Token": "ks-admin"}) == 200
    assert get(arqs, **{"X-Auth-Token": "ks-user"}) == 403  # a member may not bind devices
    assert get(f"{A}/device_profiles", **{"X-Auth-Token": "ks-user"}) == 200
    # the user's token with Nova's service token ([service_user] send_service_user_token)
    assert get(arqs, **{"X-Auth-Token": "ks-user", "X-Service-Token": "ks-nova"}) == 200
    assert get(arqs, **{"X-Auth-Token": "ks-old"}) == 401
    assert get(arqs, **{"X-Auth-Token": "made-up"}) == 401
    assert get(arqs, **{"X-Auth-Token": "made-up", "X-Service-Token": "ks-user"}) == 401
    calls = keystone.calls
    assert get(arqs, **{"X-Auth-Token": "ks-admin"}) == 200
    assert keystone.calls == calls  # cached
    # Keystone is asked only on the Cyborg API
    assert secure_api.get("/v1/hosts", headers={"Authorization": "Bearer ks-admin"}).status_code == 401
    keystone.up = False
    r = secure_api.get(arqs, headers={"X-Auth-Token": "ks-new"})
    assert r.status_code == 401 and "cannot validate the Keystone token now" in r.json()["error"]["message"]


def test_arqs_of_two_profiles_bound_together_get_devices_of_their_own_types(api: TestClient) -> None:
    """Nova binds a flavor's ARQs and a port's in one PATCH; both profiles number their groups
    from 0, and each ARQ must get a device of its own profile's type."""
    for name in ("NIC_VF_1G", "NIC_VF_10G"):
        assert api.post("/v1/resource-types", json={"name": name}).status_code == 201
    devices = [vf(f"0000:3b:02.{i}") for i in range(2)]
    devices += [vf(f"0000:5e:02.{i}", type="NIC_VF_10G") for i in range(2)]
    r = api.put("/v1/hosts/compute-1/inventory", json={"generation": 1, "devices": devices})
    assert r.status_code == 200, r.text
    for name, rc in (("slow", "CUSTOM_NIC_VF_1G"), ("fast", "CUSTOM_NIC_VF_10G")):
        r = api.post(f"{A}/device_profiles", json=[{"name": name, "groups": [{f"resources:{rc}": "1"}]}])
        assert r.status_code == 201, r.text
    slow, fast = make_arqs(api, "slow"), make_arqs(api, "fast")
    instance = str(uuid.uuid4())
    assert bind(api, slow + fast, instance).status_code == 202
    held = live(api, instance)
    assert held is not None
    type_of = {d["address"]: d["type"] for d in held["devices"]}
    assert sorted(type_of.values()) == ["NIC_VF_10G", "NIC_VF_1G"]
    arqs = {a["uuid"]: a for a in api.get(f"{A}/accelerator_requests").json()["arqs"]}
    for uid, want in ((slow[0], "NIC_VF_1G"), (fast[0], "NIC_VF_10G")):
        info = arqs[uid]["attach_handle_info"]
        address = f"{info['domain']}:{info['bus']}:{info['device']}.{info['function']}"
        assert type_of[address] == want, (uid, address)


@pytest.mark.parametrize("header", ["X-Auth-Token", "X-Service-Token"])
def test_a_keystone_token_that_is_not_ascii_is_refused_with_401(secure_api: TestClient, header: str) -> None:
    from devassign.openstack.keystone import KeystoneAuth

    keystone = Keystone()
    secure_api.app.state.keystone = KeystoneAuth(  # type: ignore[attr-defined]
        "http://keystone.test/v3", transport=httpx.MockTransport(keystone)
    )
    headers: dict[str, bytes] = {"X-Auth-Token": b"ks-user"} if header == "X-Service-Token" else {}
    headers[header] = b"tok\xe9n"
    for path in (f"{A}/accelerator_requests", f"{A}/device_profiles"):
        r = secure_api.get(path, headers=headers)  # type: ignore[arg-type]
        # Alone it is no token (401); beside a user's token it is no service token (the user's
        # own rights: a member reads profiles, may not list ARQs).
        want = 401 if header == "X-Auth-Token" else 200 if path.endswith("profiles") else 403
        assert r.status_code == want, (path, r.status_code, r.text)


@pytest.mark.parametrize("when", ["before the claim", "after the claim"])
def test_a_delete_of_the_instances_arqs_while_its_bind_runs_leaves_nothing_held(
    cloud: TestClient, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """Nova deletes an instance's ARQs (``DELETE ?instance=``) while the PATCH binding them is
    still running (a delete during build). The delete answers 204; whichever way the two
    interleave, the instance must hold no device afterwards and its ARQs stay deleted (once, the
    bind's claim was made after the delete found nothing to release, and the devices stayed
    held for a deleted instance, Nova told they were Bound)."""
    arqs, instance = make_arqs(cloud), str(uuid.uuid4())
    app: Any = cloud.app
    placer = app.state.placer
    real = placer.claim

    def delete_now() -> None:
        cyborg._cyborg(app).unbind(instance, None, actor="nova", delete=True)  # the route's work

    def racing(body: Any, caller: Any) -> Any:
        if when == "before the claim":
            delete_now()
        out = real(body, caller)
        if when == "after the claim":
            delete_now()
        return out

    monkeypatch.setattr(placer, "claim", racing)
    r = bind(cloud, arqs, instance)
    assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_state", r.text
    assert "create and bind new ones" in r.json()["error"]["message"]
    assert live(cloud, instance) is None
    assert of(cloud, instance) == []
    held = [d for d in cloud.get("/v1/devices").json() if d["state"] in ("reserved", "assigned")]
    assert held == []


def test_two_binds_of_the_same_arqs_to_two_hosts_say_so(cloud: TestClient) -> None:
    devices = [vf(f"0000:5e:02.{i}") for i in range(4)]
    r = cloud.put("/v1/hosts/compute-2/inventory", json={"generation": 1, "devices": devices})
    assert r.status_code == 200, r.text
    arqs, instance = make_arqs(cloud), str(uuid.uuid4())
    assert bind(cloud, arqs, instance, host="compute-1").status_code == 202
    second = bind(cloud, arqs, instance, host="compute-2")
    assert second.status_code == 409, second.text
    assert second.json()["error"]["code"] == "invalid_state"
    assert "resend" not in second.json()["error"]["message"]
    assert live(cloud, instance)["host"] == "compute-1"  # type: ignore[index]


def test_a_bind_to_another_host_while_the_first_runs_says_so(
    cloud: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two conductors bind one instance's ARQs to two hosts at once: the second arrives while
    the first has claimed but not yet recorded its binding. Its claim is refused (one
    allocation per instance, its key made from the ARQs); the answer says what happened, not
    "resend that same request" (Nova sends no idempotency key)."""
    devices = [vf(f"0000:5e:02.{i}") for i in range(4)]
    r = cloud.put("/v1/hosts/compute-2/inventory", json={"generation": 1, "devices": devices})
    assert r.status_code == 200, r.text
    arqs, instance = make_arqs(cloud), str(uuid.uuid4())
    placer: Any = cloud.app.state.placer  # type: ignore[attr-defined]
    real = placer.claim
    answers: list[Any] = []

    def first_then_second(body: Any, caller: Any) -> Any:
        out = real(body, caller)
        if not answers:  # the first bind has claimed on compute-1: the second comes now
            answers.append(None)
            answers[0] = bind(cloud, arqs, instance, host="compute-2")
        return out

    monkeypatch.setattr(placer, "claim", first_then_second)
    assert bind(cloud, arqs, instance, host="compute-1").status_code == 202
    second = answers[0]
    assert second.status_code == 409, second.text
    error = second.json()["error"]
    assert error["code"] == "invalid_state" and "on another host" in error["message"], error
    assert "resend" not in error["message"]
    assert live(cloud, instance)["host"] == "compute-1"  # type: ignore[index]
    assert [a["state"] for a in of(cloud, instance)] == ["BindStarted", "BindStarted"]
