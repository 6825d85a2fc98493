"""Claims through the API: placement, reasons, idempotency, release, expiry, quotas, groups."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import Clock, vf


def _setup(api: TestClient, *types: str) -> None:
    for t in types:
        assert api.post("/v1/resource-types", json={"name": t}).status_code == 201


def _report(api: TestClient, host: str, devices: list[dict[str, Any]], generation: int = 1) -> None:
    r = api.put(f"/v1/hosts/{host}/inventory", json={"generation": generation, "devices": devices})
    assert r.status_code == 200 and not r.json()["refused"], r.text


def _claim(api: TestClient, consumer: str, **body: Any) -> Any:
    if "requests" not in body and "extra_specs" not in body:
        body["extra_specs"] = {"hardware_resource:NIC_VF_1G": "1"}
    return api.post("/v1/claims", json={"consumer": consumer, **body})


def _states(api: TestClient) -> dict[str, str]:
    return {f"{d['host']}/{d['address']}": d["state"] for d in api.get("/v1/devices").json()}


def test_claim_reserves_specific_devices_and_release_sends_them_to_cleaning(api: TestClient) -> None:
    _setup(api, "NIC_VF_1G")
    _report(api, "c1", [vf("0000:3b:02.1"), vf("0000:3b:02.2")])
    r = _claim(api, "vm-1", extra_specs={"hardware_resource:NIC_VF_1G": "2"})
    assert r.status_code == 201, r.text
    alloc = r.json()
    assert alloc["host"] == "c1" and alloc["state"] == "reserved"
    assert sorted(d["address"] for d in alloc["devices"]) == ["0000:3b:02.1", "0000:3b:02.2"]
    assert set(_states(api).values()) == {"reserved"}
    assert api.get("/v1/resource-types").json()[0]["counts"]["reserved"] == 2

    assert api.get("/v1/allocations/vm-1").json()["host"] == "c1"
    assert api.delete("/v1/allocations/vm-1").status_code == 204
    assert set(_states(api).values()) == {"cleaning"}
    assert api.delete("/v1/allocations/vm-1").status_code == 204  # twice is harmless
    missing = api.delete("/v1/allocations/never-was")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "allocation_not_found"
    # Cleaning devices are never handed out.
    again = _claim(api, "vm-2")
    assert again.status_code == 409 and again.json()["error"]["code"] == "no_valid_host"


def test_a_failed_claim_says_why(api: TestClient) -> None:
    _setup(api, "NIC_VF_1G")
    _report(api, "compute-7", [vf("0000:3b:02.1", numa_node=0), vf("0000:3b:02.2", numa_node=1)])
    body = {
        "requests": [{"name": "nic", "type": "NIC_VF_1G", "count": 2}],
        "constraints": [{"requests": ["nic"], "match": "numa_node"}],
    }
    r = _claim(api, "vm-1", **body)
    assert r.status_code == 409
    err = r.json()["error"]
    assert err["code"] == "no_valid_host"
    assert "compute-7" in err["message"]
    assert err["explanation"]["closest"][0]["host"] == "compute-7"
    assert "NUMA" in err["explanation"]["closest"][0]["message"]
    # Ask about the host directly.
    exp = api.post("/v1/explain", json={**body, "hosts": ["compute-7"]}).json()
    assert exp["fits"] is False
    assert exp["hosts"][0]["host"] == "compute-7" and exp["hosts"][0]["reason"] == "constraint_unsatisfied"
    # Nothing was claimed.
    assert set(_states(api).values()) == {"available"}


def test_not_enough_devices_anywhere_reports_the_funnel(api: TestClient) -> None:
    _setup(api, "NIC_VF_1G", "GPU_A100")
    _report(api, "c1", [vf("0000:3b:02.1")])
    r = _claim(api, "vm-1", extra_specs={"hardware_resource:GPU_A100": "1"})
    assert r.status_code == 409
    assert r.json()["error"]["explanation"]["funnel"] == {"hosts": 1, "down": 0, "lacking_GPU_A100": 1}


def test_the_funnel_of_a_request_that_names_hosts_counts_only_those(api: TestClient) -> None:
    """A request naming its hosts can go nowhere else: its "before scheduling" counts left out
    the other hosts, or ``explain --host c1`` said "c1 fits" and "1 up host with too few" (c2)."""
    _setup(api, "NIC_VF_1G")
    _report(api, "c1", [vf("0000:3b:02.1"), vf("0000:3b:02.2")])
    _report(api, "c2", [vf("0000:3b:02.1")])
    two = {"extra_specs": {"hardware_resource:NIC_VF_1G": "2"}}
    fits = api.post("/v1/explain", json={**two, "hosts": ["c1"]}).json()
    assert fits["fits"] is True
    assert fits["funnel"] == {"hosts": 1, "down": 0, "lacking_NIC_VF_1G": 0}
    refused = _claim(api, "vm-1", hosts=["c2"], **two)
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert error["explanation"]["funnel"] == {"hosts": 1, "down": 0, "lacking_NIC_VF_1G": 1}
    assert "1 up host with too few free NIC_VF_1G" in error["message"], error["message"]
    # Without names, every host counts.
    everywhere = api.post("/v1/explain", json=two).json()
    assert everywhere["funnel"] == {"hosts": 2, "down": 0, "lacking_NIC_VF_1G": 1}


def test_same_claim_twice_with_key_returns_the_same_allocation(api: TestClient) -> None:
    _setup(api, "NIC_VF_1G")
    _report(api, "c1", [vf("0000:3b:02.1"), vf("0000:3b:02.2")])
    first = _claim(api, "vm-1", idempotency_key="k1")
    second = _claim(api, "vm-1", idempotency_key="k1")
    assert first.status_code == 201 and second.status_code == 200
    assert first.json()["devices"] == second.json()["devices"]
    assert len(api.get("/v1/allocations").json()) == 1
    other = _claim(api, "vm-1", idempotency_key="k2")
    assert other.status_code == 409 and other.json()["error"]["code"] == "consumer_conflict"


def test_unconfirmed_reservation_expires_to_cleaning(api: TestClient, clock: Clock) -> None:
    _setup(api, "NIC_VF_1G")
    _report(api, "c1", [vf("0000:3b:02.1")])
    assert _claim(api, "vm-1").status_code == 201
    clock.advance(299)
    api.app.state.store.sweep()  # type: ignore[attr-defined]
    assert set(_states(api).values()) == {"reserved"}
    clock.advance(2)
    api.post("/v1/hosts/c1/heartbeat")
    assert api.app.state.store.sweep() == ["vm-1"]  # type: ignore[attr-defined]
    assert set(_states(api).values()) == {"cleaning"}
    assert api.get("/v1/allocations").json() == []
    events = [e["action"] for e in api.get("/v1/events", params={"consumer": "vm-1"}).json()]
    assert events[0] == "allocation_expired"


def test_quota_is_a_403_with_the_numbers(api: TestClient) -> None:
    _setup(api, "NIC_VF_1G")
    _report(api, "c1", [vf(f"0000:3b:02.{i}") for i in range(4)])
    assert api.put("/v1/quotas/p1/NIC_VF_1G", json={"limit": 1}).status_code == 204
    assert _claim(api, "vm-1", project="p1").status_code == 201
    r = _claim(api, "vm-2", project="p1")
    assert r.status_code == 403, r.text
    err = r.json()["error"]
    assert err["code"] == "quota_exceeded" and "NIC_VF_1G" in err["message"]
    assert _claim(api, "vm-3", project="p2").status_code == 201
    assert api.get("/v1/quotas", params={"project": "p1"}).json() == [
        {"project": "p1", "type": "NIC_VF_1G", "limit": 1, "used": 1}
    ]


def test_iommu_group_is_claimed_whole(api: TestClient) -> None:
    _setup(api, "GPU")
    gpu = {"address": "0000:af:00.0", "kind": "pci", "type": "GPU", "iommu_group": 7}
    audio = {"address": "0000:af:00.1", "kind": "pci", "type": "GPU", "iommu_group": 7}
    _report(api, "c1", [gpu, audio])
    r = _claim(api, "vm-1", extra_specs={"hardware_resource:GPU": "1"})
    assert r.status_code == 201, r.text
    assert sorted(d["address"] for d in r.json()["devices"]) == ["0000:af:00.0", "0000:af:00.1"]


def test_pf_and_its_vfs_exclude_each_other(api: TestClient) -> None:
    _setup(api, "NIC_PF", "NIC_VF_1G")
    pf = {"address": "0000:3b:00.0", "kind": "sriov_pf", "type": "NIC_PF"}
    _report(api, "c1", [pf, vf("0000:3b:02.1")])
    assert _claim(api, "vm-1").status_code == 201
    r = _claim(api, "vm-2", extra_specs={"hardware_resource:NIC_PF": "1"})
    assert r.status_code == 409


def test_first_available_falls_back(api: TestClient) -> None:
    _setup(api, "GPU_A100", "GPU_T4")
    t4s = [{"address": f"0000:af:0{i}.0", "kind": "pci", "type": "GPU_T4"} for i in range(4)]
    _report(api, "c1", t4s)
    body = {
        "requests": [
            {
                "name": "gpu",
                "type": "GPU_A100",
                "count": 2,
                "first_available": [{"type": "GPU_T4", "count": 4}],
            }
        ]
    }
    r = _claim(api, "vm-1", **body)
    assert r.status_code == 201, r.text
    assert {d["type"] for d in r.json()["devices"]} == {"GPU_T4"} and len(r.json()["devices"]) == 4


def test_a_type_named_only_as_an_alternative_of_a_live_claim_is_not_deleted(api: TestClient) -> None:
    """vm-1 got T4s; its request still names A100 first, and a move places that request again,
    so A100 (no devices at all) cannot be deleted until vm-1 is released."""
    test_first_available_falls_back(api)
    _setup(api, "GPU_A100_80G")  # a name that contains the other: not named by vm-1
    r = api.delete("/v1/resource-types/GPU_A100")
    assert r.status_code == 409 and r.json()["error"]["code"] == "type_in_use", r.text
    assert "vm-1" in r.json()["error"]["message"] and r.json()["error"]["allocations"] == 1
    assert api.get("/v1/resource-types/GPU_A100").status_code == 200
    assert api.delete("/v1/resource-types/GPU_A100_80G").status_code == 204
    # Only the request's shape counts: a type named like its consumer, project or host is not
    # named by it, nor is anything by the internal consumer of a pending move.
    for name in ("vm", "c1", "default"):
        _setup(api, name)
    _report(api, "c2", [{"address": f"0000:b{i}:00.0", "kind": "pci", "type": "GPU_T4"} for i in range(4)])
    assert api.post("/v1/allocations/vm-1/moves", json={"host": "c2"}).status_code == 201
    for name in ("vm", "c1", "default"):
        r = api.delete(f"/v1/resource-types/{name}")
        assert r.status_code == 204, (name, r.text)
    held = api.delete("/v1/resource-types/GPU_A100")
    assert held.status_code == 409 and "_move:" not in held.text and "1 live allocation" in held.text
    assert api.delete("/v1/allocations/vm-1").status_code == 204
    assert api.delete("/v1/resource-types/GPU_A100").status_code == 204


def test_selector_picks_devices(api: TestClient) -> None:
    _setup(api, "GPU")
    small = {"address": "0000:af:00.0", "kind": "pci", "type": "GPU", "attributes": {"memory_mib": 16384}}
    big = {"address": "0000:b0:00.0", "kind": "pci", "type": "GPU", "attributes": {"memory_mib": 81920}}
    _report(api, "c1", [small, big])
    body = {"requests": [{"name": "g", "type": "GPU", "selector": "device.attributes.memory_mib >= 40960"}]}
    r = _claim(api, "vm-1", **body)
    assert r.status_code == 201 and [d["address"] for d in r.json()["devices"]] == ["0000:b0:00.0"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (
            {"requests": [{"name": "g", "type": "GPU", "selector": "device.attributes.memory_mib >="}]},
            "invalid_selector",
        ),
        ({"extra_specs": {"hardware_resource:GPU": "zero"}}, "invalid_spec"),
        ({"requests": []}, "no_requests"),
    ],
)
def test_bad_requests_are_400(api: TestClient, body: dict[str, Any], code: str) -> None:
    _setup(api, "GPU")
    r = api.post("/v1/claims", json={"consumer": "vm-1", **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == code


@pytest.mark.parametrize(
    "body",
    [
        {"requests": [{"name": "g", "type": "NOPE"}]},
        {"extra_specs": {"hardware_resource:NOPE": "1"}},
        {"requests": [{"name": "g", "type": "GPU", "first_available": [{"type": "NOPE"}]}]},
    ],
)
def test_a_type_not_in_the_catalog_is_404_type_not_found(api: TestClient, body: dict[str, Any]) -> None:
    _setup(api, "GPU")
    for path in ("/v1/claims", "/v1/explain"):
        r = api.post(path, json={"consumer": "vm-1", **body})
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "type_not_found"
        assert "unknown resource type NOPE" in r.json()["error"]["message"]


def test_capacity_counts_instances(api: TestClient) -> None:
    _setup(api, "NIC_VF_1G")
    _report(api, "c1", [vf(f"0000:3b:02.{i}") for i in range(5)])
    _report(api, "c2", [vf(f"0000:3b:02.{i}") for i in range(2)])
    r = api.get("/v1/capacity", params={"spec": "hardware_resource:NIC_VF_1G=2"})
    assert r.status_code == 200, r.text
    assert r.json()["per_host"] == {"c1": 2, "c2": 1} and r.json()["total"] == 3


def test_down_hosts_are_not_candidates(api: TestClient, clock: Clock) -> None:
    _setup(api, "NIC_VF_1G")
    _report(api, "c1", [vf("0000:3b:02.1")])
    clock.advance(120)
    r = _claim(api, "vm-1")
    assert r.status_code == 409
    assert r.json()["error"]["explanation"]["funnel"]["down"] == 1


def test_device_vanishing_while_reserved_is_missing_and_cleaned_after_release(api: TestClient) -> None:
    _setup(api, "NIC_VF_1G")
    _report(api, "c1", [vf("0000:3b:02.1"), vf("0000:3b:02.2")])
    r = _claim(api, "vm-1")
    held = r.json()["devices"][0]["address"]
    keep = "0000:3b:02.2" if held == "0000:3b:02.1" else "0000:3b:02.1"
    rep = api.put("/v1/hosts/c1/inventory", json={"generation": 2, "devices": [vf(keep)]}).json()
    assert rep["missing"] == [held]
    assert _states(api)[f"c1/{held}"] == "missing"
    api.delete("/v1/allocations/vm-1")
    assert _states(api)[f"c1/{held}"] == "missing"
    _report(api, "c1", [vf("0000:3b:02.1"), vf("0000:3b:02.2")], generation=3)
    assert _states(api)[f"c1/{held}"] == "cleaning"


def test_a_claim_naming_only_unknown_hosts_says_so(api: TestClient) -> None:
    """Not "0 hosts considered", nor (in the CLI) "no host has reported yet": the hosts named."""
    from devassign.cli.claims import summary

    _setup(api, "GPU")
    r = api.post(
        "/v1/claims",
        json={"consumer": "vm-1", "hosts": ["nohost"], "requests": [{"name": "g", "type": "GPU"}]},
    )
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert error["message"].endswith("no host fits: nohost: is not a known host, or has no devices")
    assert summary(error["explanation"]) == "no host fits: nohost: is not a known host, or has no devices"


def test_an_unknown_field_is_named_by_a_json_pointer(api: TestClient) -> None:
    for body, pointer in (
        ({"consumer": "a", "requets": []}, "/requets"),
        ({"consumer": "a", "requests": [{"name": "x", "type": "GPU", "cont": 1}]}, "/requests/0/cont"),
    ):
        r = api.post("/v1/claims", json=body)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "invalid_request"
        assert r.json()["error"]["pointer"] == pointer


def test_a_type_asked_for_by_a_request_and_an_extra_spec_is_refused(api: TestClient) -> None:
    """Both would be claimed (two devices where one was meant, usually): give the total once."""
    _setup(api, "GPU")
    body = {"extra_specs": {"hardware_resource:GPU": "1"}, "requests": [{"name": "x", "type": "GPU"}]}
    for path in ("/v1/claims", "/v1/explain"):
        r = api.post(path, json={"consumer": "vm-1", **body})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "invalid_spec"
        assert r.json()["error"]["pointer"] == "/extra_specs/hardware_resource:GPU"


def test_a_value_of_the_wrong_kind_is_named_once_at_its_place(api: TestClient) -> None:
    """Not ``.../str`` and ``.../int`` (the validator's branches), which are no place in the body."""
    r = api.post("/v1/claims", json={"consumer": "a", "extra_specs": {"hardware_resource:GPU": True}})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["pointer"] == "/extra_specs/hardware_resource:GPU"
    assert error["message"] == (
        "extra_specs.hardware_resource:GPU: Input should be a valid string or a valid integer"
    )


def test_a_device_spec_key_with_a_leading_space_is_a_misspelling_not_another_namespace(
    api: TestClient,
) -> None:
    _setup(api, "GPU")
    body = {"consumer": "vm-1", "extra_specs": {"hardware_resource:GPU": "1", " hardware_resource:GPU": "1"}}
    r = api.post("/v1/claims", json=body)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_spec", r.text
    assert "misspelt" in r.json()["error"]["message"]


def test_a_released_allocation_does_not_show_its_devices_next_holder(api: TestClient) -> None:
    """A former holder read its released allocation and saw the device's live state: reserved,
    assigned, cleaning as another project claimed and released it (occupancy of a named
    device on a named host). The state is the former holder's while the device is cleaned for
    it, then null."""
    _setup(api, "NIC_VF_1G")
    _report(api, "c1", [vf("0000:3b:02.1")])
    first = _claim(api, "vm-1")
    assert first.status_code == 201, first.text
    device = first.json()["devices"][0]["id"]
    assert api.delete("/v1/allocations/vm-1").status_code == 204
    states = lambda: [d["state"] for d in api.get("/v1/allocations/vm-1").json()["devices"]]  # noqa: E731
    assert states() == ["cleaning"]  # cleaned for vm-1: still its business
    cleaned = {"device_id": device, "action": "cleanup", "ok": True}
    assert api.post("/v1/hosts/c1/work", json={"results": [cleaned]}).status_code == 200
    assert states() == [None]
    assert _claim(api, "vm-2").status_code == 201
    assert states() == [None]
    listed = api.get("/v1/allocations", params={"consumer": "vm-1", "include_released": True}).json()
    assert [d["state"] for a in listed for d in a["devices"]] == [None]
    assert [d["state"] for d in api.get("/v1/allocations/vm-2").json()["devices"]] == ["reserved"]
