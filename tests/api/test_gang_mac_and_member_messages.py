"""What a gang's one claim body means for N instances (one MAC), and what members read of it."""

from __future__ import annotations

from fastapi.testclient import TestClient

from devassign import schemas
from devassign.domain import Role
from devassign.store import Store
from tests.api.test_gangs import _gang, _gpu
from tests.conftest import vf


def test_one_mac_address_is_not_set_on_every_instance_of_a_gang(api: TestClient) -> None:
    """A MAC address belongs to one NIC: a claim that asks for it on 2 devices is a 400
    (``placement._check_params``). A gang repeats its one body for each instance, so a gang of
    3 with ``params.mac`` sets that one MAC on 3 VFs (3 NICs with the same MAC on one L2
    network). ``Gangs._prepare`` checked the params of one instance only: 201. It must
    be refused as the claim is (400 invalid_request) and nothing claimed."""
    body = {"name": "NIC_VF_1G", "params": {"mac": {"type": "mac"}}}
    assert api.post("/v1/resource-types", json=body).status_code == 201
    devices = [vf(f"0000:3b:02.{i}") for i in range(4)]
    assert api.put("/v1/hosts/c1/inventory", json={"generation": 1, "devices": devices}).status_code == 200
    gang = {
        "instances": ["vm-1", "vm-2", "vm-3"],
        "requests": [{"name": "nic", "type": "NIC_VF_1G", "params": {"mac": "52:54:00:12:34:56"}}],
    }
    r = api.post("/v1/gangs", json=gang)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_request"
    assert api.get("/v1/allocations").json() == []


def test_a_member_is_not_told_the_rack_of_the_hosts(secure_api: TestClient, store: Store) -> None:
    """A host's rack is the operators' to know (docs/requests.md: a member's refused move of a
    gang instance is redacted "since it would tell a real host and its rack"), and a gang's
    explanation for a member is "counts and reason codes only" (redact_explanation drops the
    ``same`` value). Yet the ``message`` of a member's gang explain and of its 409 says
    ``with rack=rack-42`` / ``(rack=rack-42, the most of 1 values)``: the plan's sentence from
    ``scheduler/gang.plan`` goes out unredacted (gang_routes.explain_gang, Gangs._refusal)."""
    admin = store.create_token(schemas.TokenCreate(role=Role.ADMIN), "t").token
    member = store.create_token(schemas.TokenCreate(role=Role.MEMBER, project="p"), "t").token
    as_admin, as_p = {"Authorization": f"Bearer {admin}"}, {"Authorization": f"Bearer {member}"}
    assert secure_api.post("/v1/resource-types", json={"name": "GPU"}, headers=as_admin).status_code == 201
    for name in ("a", "b"):
        devices = [_gpu(i, rack="rack-42") for i in range(2)]
        r = secure_api.put(
            f"/v1/hosts/{name}/inventory", json={"generation": 1, "devices": devices}, headers=as_admin
        )
        assert r.status_code == 200
    explained = secure_api.post(
        "/v1/gangs/explain", json=_gang(["m1", "m2"], gpus=2, layout={"same": "rack"}), headers=as_p
    )
    assert explained.status_code == 200, explained.text
    assert explained.json()["fits"]
    assert "rack-42" not in explained.text, explained.text
    refused = secure_api.post(
        "/v1/gangs", json=_gang(["m1", "m2", "m3"], gpus=2, layout={"same": "rack"}), headers=as_p
    )
    assert refused.status_code == 409, refused.text
    assert "rack-42" not in refused.text, refused.text
    # ... and says why in the codes a member reads (the reasons agree with the counts)
    why = refused.json()["error"]["explanation"]
    assert why["removed"] and why["reasons"] == why["removed"], why


def test_a_gang_of_one_instance_may_set_a_mac(api: TestClient) -> None:
    body = {"name": "NIC_VF_1G", "params": {"mac": {"type": "mac"}}}
    assert api.post("/v1/resource-types", json=body).status_code == 201
    devices = [vf(f"0000:3b:02.{i}") for i in range(2)]
    assert api.put("/v1/hosts/c1/inventory", json={"generation": 1, "devices": devices}).status_code == 200
    gang = {
        "instances": ["vm-1"],
        "requests": [{"name": "nic", "type": "NIC_VF_1G", "params": {"mac": "52:54:00:12:34:56"}}],
    }
    r = api.post("/v1/gangs", json=gang)
    assert r.status_code == 201, r.text


def test_a_member_reads_counts_and_an_admin_the_rack(secure_api: TestClient, store: Store) -> None:
    """The member's sentences keep the counts and the attribute's name; the admin's the value."""
    admin = store.create_token(schemas.TokenCreate(role=Role.ADMIN), "t").token
    member = store.create_token(schemas.TokenCreate(role=Role.MEMBER, project="p"), "t").token
    as_admin, as_p = {"Authorization": f"Bearer {admin}"}, {"Authorization": f"Bearer {member}"}
    assert secure_api.post("/v1/resource-types", json={"name": "GPU"}, headers=as_admin).status_code == 201
    for name in ("a", "b"):
        devices = [_gpu(i, rack="rack-42") for i in range(2)]
        r = secure_api.put(
            f"/v1/hosts/{name}/inventory", json={"generation": 1, "devices": devices}, headers=as_admin
        )
        assert r.status_code == 200
    fits = _gang(["m1", "m2"], gpus=2, layout={"same": "rack"}, project="p")
    member_fits = secure_api.post("/v1/gangs/explain", json=fits, headers=as_p).json()
    assert member_fits["message"] == "2 of 2 instances fit on 2 hosts with one rack"
    admin_fits = secure_api.post("/v1/gangs/explain", json=fits, headers=as_admin).json()
    assert admin_fits["message"] == "2 of 2 instances fit on 2 hosts with rack=rack-42"
    too_many = _gang(["m1", "m2", "m3"], gpus=2, layout={"same": "rack"}, project="p")
    member_no = secure_api.post("/v1/gangs", json=too_many, headers=as_p).json()["error"]["message"]
    assert member_no.startswith("gang of 3: 2 of 3 instances fit with the same rack; the 3rd fits on no host")
    admin_no = secure_api.post("/v1/gangs", json=too_many, headers=as_admin).json()["error"]["message"]
    assert "rack=rack-42" in admin_no
