"""The body of a ``403 quota_exceeded``.

docs/api.md (errors) and docs/requests.md (claim statuses): ``quota_exceeded`` comes "with
``limits``, ``usage``, ``requested``". Only the claim's last check under the quota's lock
(``store.quotas.enforce_quota``) adds ``requested``; the refusals made from the claim's read
(``Placer._place``, the usual way a claim at its quota is refused) and the gang's total
(``Gangs._check_quota``) leave it out.
"""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.conftest import vf


def _cloud(api: TestClient) -> None:
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}).status_code == 201
    r = api.put(
        "/v1/hosts/c1/inventory",
        json={"generation": 1, "devices": [vf(f"0000:3b:02.{i}") for i in range(6)]},
    )
    assert r.status_code == 200 and not r.json()["refused"], r.text
    assert api.put("/v1/quotas/p1/NIC_VF_1G", json={"limit": 1}).status_code == 204
    spec = {"hardware_resource:NIC_VF_1G": "1"}
    assert (
        api.post("/v1/claims", json={"consumer": "vm-1", "project": "p1", "extra_specs": spec}).status_code
        == 201
    )


def test_a_claim_over_its_quota_says_what_it_requested(api: TestClient) -> None:
    """User-visible: a client at its quota sends a claim for 2 VFs; the 403 carries ``limits``
    and ``usage`` but not the documented ``requested``, so a client that reads it (to say "you
    asked for 2, 0 left") fails on a missing key."""
    _cloud(api)
    r = api.post(
        "/v1/claims",
        json={"consumer": "vm-2", "project": "p1", "extra_specs": {"hardware_resource:NIC_VF_1G": "2"}},
    )
    assert r.status_code == 403, r.text
    err = r.json()["error"]
    assert err["code"] == "quota_exceeded"
    assert err["limits"] == {"NIC_VF_1G": 1} and err["usage"] == {"NIC_VF_1G": 1}
    assert err.get("requested") == {"NIC_VF_1G": 2}, err


def test_a_gang_over_its_quota_says_what_it_requested(api: TestClient) -> None:
    """User-visible: the same for a gang of 3 instances of 1 VF: the 403 for the gang's total
    has no ``requested`` (the message says "3 for the gang", the body does not)."""
    _cloud(api)
    r = api.post(
        "/v1/gangs",
        json={
            "instances": ["g-0", "g-1", "g-2"],
            "project": "p1",
            "extra_specs": {"hardware_resource:NIC_VF_1G": "1"},
        },
    )
    assert r.status_code == 403, r.text
    err = r.json()["error"]
    assert err["code"] == "quota_exceeded"
    assert err.get("requested") == {"NIC_VF_1G": 3}, err
