"""Nova takes an ARQ's attach handle for a device its instance holds: it attaches what a
``BindFailed`` ARQ names when its build had stopped waiting, and attaches a ``Bound`` ARQ's
device again at a reboot. So once an instance's allocation ends, however it ends (a failed
setup, an expired reservation, an operator's release, a device that left its host), its ARQs
name no device. A tenant holding a token of the project Nova's claims are made in cannot
release or move a Nova instance's devices; profiles Nova could never bind are refused, and a
delete names one profile."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi.testclient import TestClient

from devassign import schemas
from devassign.domain import Role
from devassign.server import cyborg
from devassign.store import Store
from tests.api.test_cyborg_routes import (
    NIC,
    A,
    bind,
    cloud,  # noqa: F401  (the fixture)
    make_arqs,
    nova_for,
    of,
    set_up,
)
from tests.conftest import Clock, vf

HANDLES = ("attach_handle_type", "attach_handle_info", "attach_handle_uuid")


def _step(api: TestClient) -> None:
    cyborg.sender(api.app).step()  # type: ignore[arg-type]


def _named_nothing(arqs: list[dict[str, Any]]) -> None:
    assert {a["state"] for a in arqs} == {"BindFailed"}, arqs
    assert all(a[h] is None for a in arqs for h in HANDLES), arqs


def test_a_failed_setup_leaves_arqs_that_name_no_device(cloud: TestClient) -> None:  # noqa: F811
    api = cloud
    nova = nova_for(api)
    arqs, instance = make_arqs(api), str(uuid.uuid4())
    assert bind(api, arqs, instance).status_code == 202
    # While binding, the handles are the devices held.
    assert all(a["attach_handle_info"] for a in of(api, instance))
    set_up(api, instance, ok=False)
    _named_nothing(of(api, instance, bind_state="resolved"))
    _step(api)
    assert {e["status"] for e in nova.bodies[0]["events"]} == {"failed"}


def test_an_expired_reservation_leaves_arqs_that_name_no_device(cloud: TestClient, clock: Clock) -> None:  # noqa: F811
    api = cloud
    arqs, instance = make_arqs(api), str(uuid.uuid4())
    assert bind(api, arqs, instance).status_code == 202
    clock.advance(3600)
    api.app.state.store.sweep()  # type: ignore[attr-defined]
    _named_nothing(of(api, instance))


def test_a_release_outside_the_cyborg_api_unnames_bound_arqs(cloud: TestClient) -> None:  # noqa: F811
    api = cloud
    nova = nova_for(api)
    arqs, instance = make_arqs(api), str(uuid.uuid4())
    assert bind(api, arqs, instance).status_code == 202
    set_up(api, instance)
    _step(api)
    assert {a["state"] for a in of(api, instance)} == {"Bound"}
    told = len(nova.bodies)
    assert api.delete(f"/v1/allocations/{instance}").status_code == 204
    _named_nothing(of(api, instance))
    _step(api)
    assert len(nova.bodies) == told  # the build is long over: no event for a bound ARQ
    # Nova's delete of the instance's ARQs still works, and releases nothing twice.
    assert api.delete(f"{A}/accelerator_requests", params={"instance": instance}).status_code == 204
    assert of(api, instance) == []


def test_a_bound_device_that_leaves_its_host_is_named_no_more_once_released(cloud: TestClient) -> None:  # noqa: F811
    api = cloud
    arqs, instance = make_arqs(api), str(uuid.uuid4())
    assert bind(api, arqs, instance).status_code == 202
    r = api.put("/v1/hosts/compute-1/inventory", json={"generation": 2, "devices": [vf("0000:3b:02.3")]})
    assert r.status_code == 200, r.text  # two reserved devices gone before their setup
    _named_nothing(of(api, instance))


def test_a_tenant_of_novas_project_cannot_release_or_move_an_instances_devices(
    secure_api: TestClient, store: Store
) -> None:
    admin = {"Authorization": "Bearer " + store.create_token(schemas.TokenCreate(role=Role.ADMIN), "t").token}
    member = store.create_token(schemas.TokenCreate(role=Role.MEMBER, project="default"), "t").token
    tenant = {"Authorization": f"Bearer {member}"}
    agent = store.create_token(schemas.TokenCreate(role=Role.AGENT, host="compute-1"), "t").token
    assert secure_api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}, headers=admin).status_code == 201
    for host, token in (("compute-1", agent),):
        devices = [vf(f"0000:3b:02.{i}") for i in range(4)]
        r = secure_api.put(
            f"/v1/hosts/{host}/inventory",
            json={"generation": 1, "devices": devices},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 200, r.text
    r = secure_api.post(f"{A}/device_profiles", json=[{"name": "nic2", "groups": [NIC]}], headers=admin)
    assert r.status_code == 201, r.text
    arqs = [
        a["uuid"]
        for a in secure_api.post(
            f"{A}/accelerator_requests", json={"device_profile_name": "nic2"}, headers=admin
        ).json()["arqs"]
    ]
    instance = str(uuid.uuid4())
    patch = {
        a: [
            {"path": "/hostname", "op": "add", "value": "compute-1"},
            {"path": "/instance_uuid", "op": "add", "value": instance},
        ]
        for a in arqs
    }
    assert secure_api.patch(f"{A}/accelerator_requests", json=patch, headers=admin).status_code == 202
    r = secure_api.delete(f"/v1/allocations/{instance}", headers=tenant)
    assert r.status_code == 403 and "Nova instance" in r.json()["error"]["message"], r.text
    r = secure_api.post(f"/v1/allocations/{instance}/moves", json={"host": "compute-2"}, headers=admin)
    assert r.status_code in (404, 409), r.text
    assert secure_api.get(f"/v1/allocations/{instance}", headers=admin).json()["released_at"] is None
    # An admin may release them: the ARQs then name nothing.
    assert secure_api.delete(f"/v1/allocations/{instance}", headers=admin).status_code == 204
    arqs_now = secure_api.get(f"{A}/accelerator_requests", params={"instance": instance}, headers=admin)
    _named_nothing(arqs_now.json()["arqs"])


def test_a_devassign_move_of_a_nova_instance_is_refused(cloud: TestClient) -> None:  # noqa: F811
    api = cloud
    r = api.put(
        "/v1/hosts/compute-2/inventory",
        json={"generation": 1, "devices": [vf("0000:5e:02.0"), vf("0000:5e:02.1")]},
    )
    assert r.status_code == 200, r.text
    arqs, instance = make_arqs(api), str(uuid.uuid4())
    assert bind(api, arqs, instance).status_code == 202
    r = api.post(f"/v1/allocations/{instance}/moves", json={"host": "compute-2"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_state", r.text
    assert "Nova moves its instances" in r.json()["error"]["message"]
    assert {a["state"] for a in of(api, instance)} == {"BindStarted"}
    assert {d["state"] for d in api.get("/v1/devices", params={"host": "compute-2"}).json()} == {"available"}


def test_a_profile_nova_could_never_bind_is_refused(api: TestClient) -> None:
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}).status_code == 201
    groups = [{"resources:CUSTOM_NIC_VF_1G": "64"}] * 16
    r = api.post(f"{A}/device_profiles", json={"name": "huge", "groups": groups})
    assert r.status_code == 400 and "1024 devices in all" in r.json()["error"]["message"], r.text
    groups = [{"resources:CUSTOM_NIC_VF_1G": "64"}] * 15 + [{"resources:CUSTOM_NIC_VF_1G": "40"}]
    assert api.post(f"{A}/device_profiles", json={"name": "big", "groups": groups}).status_code == 201


def test_deleting_a_profile_by_its_uuid_leaves_one_named_like_it(api: TestClient) -> None:
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}).status_code == 201
    one = api.post(f"{A}/device_profiles", json={"name": "one", "groups": [NIC]}).json()
    r = api.post(f"{A}/device_profiles", json={"name": one["uuid"], "groups": [NIC]})
    assert r.status_code == 201, r.text
    assert api.get(f"{A}/device_profiles/{one['uuid']}").json()["name"] == "one"
    assert api.delete(f"{A}/device_profiles/{one['uuid']}").status_code == 204
    names = [p["name"] for p in api.get(f"{A}/device_profiles").json()["device_profiles"]]
    assert names == [one["uuid"]]
    assert api.delete(f"{A}/device_profiles/{one['uuid']}").status_code == 204  # now by name
    assert api.get(f"{A}/device_profiles").json()["device_profiles"] == []
