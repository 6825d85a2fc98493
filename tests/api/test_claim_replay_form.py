"""A retry repeats what a claim asks for, not how it was written: a count as ``2`` or ``"2"``,
a member naming its own project or not, a flavor's other extra specs. Another request with
the same key is still ``409 idempotency_key_reused``."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from devassign import schemas
from devassign.domain import Role
from devassign.store import Store
from tests.conftest import vf


def test_retries_written_otherwise_are_the_same_claim(secure_api: TestClient, store: Store) -> None:
    admin = {"Authorization": f"Bearer {store.create_token(schemas.TokenCreate(role=Role.ADMIN), 't').token}"}
    member = store.create_token(schemas.TokenCreate(role=Role.MEMBER, project="p2"), "t").token
    as_member = {"Authorization": f"Bearer {member}"}
    assert secure_api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}, headers=admin).status_code == 201
    devices = [vf(f"0000:3b:02.{i}") for i in range(4)]
    r = secure_api.put("/v1/hosts/h1/inventory", json={"generation": 1, "devices": devices}, headers=admin)
    assert r.status_code == 200, r.text

    def claim(**body: Any) -> Any:
        full = {"consumer": "vm-1", "idempotency_key": "k1", **body}
        return secure_api.post("/v1/claims", json=full, headers=as_member)

    first = claim(extra_specs={"hardware_resource:NIC_VF_1G": 2})
    assert first.status_code == 201, first.text
    for retry in (
        {"extra_specs": {"hardware_resource:NIC_VF_1G": "2"}},
        {"extra_specs": {"hardware_resource:NIC_VF_1G": "2"}, "project": "p2"},
        {"extra_specs": {"hardware_resource:NIC_VF_1G": 2, "hw:cpu_policy": "dedicated"}},
    ):
        again = claim(**retry)
        assert again.status_code == 200, (retry, again.text)
        assert again.json()["devices"] == first.json()["devices"]
    other = claim(extra_specs={"hardware_resource:NIC_VF_1G": "3"})
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
