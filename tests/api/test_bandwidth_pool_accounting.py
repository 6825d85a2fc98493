"""What a VF's guaranteed rate takes of its PF's bandwidth: only the chosen VF is charged (not its IOMMU
group mates), refusals name the bandwidth, the current report's counters win over a missing VF's
old ones, and a pool already over its counters (a link that renegotiated lower) refuses only
what would take more of it."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

PF = "0000:5e:00.0"


def _bw_type(api: TestClient) -> None:
    rates = {"type": "integer", "min": 0, "max": 100000}
    body = {"name": "NIC_VF_BW", "description": "VF",
            "params": {"min_tx_rate_mbps": rates, "max_tx_rate_mbps": rates}}  # fmt: skip
    assert api.post("/v1/resource-types", json=body).status_code == 201


def _vf(i: int, group: int | None, bandwidth: int = 10_000) -> dict[str, Any]:
    return {
        "address": f"0000:5e:10.{i}",
        "kind": "sriov_vf",
        "type": "NIC_VF_BW",
        "parent": PF,
        "iommu_group": group,
        "pool_counters": {"bandwidth_mbps": bandwidth},
        "attributes": {},
    }


def _report(api: TestClient, host: str, devices: list[dict[str, Any]], generation: int = 1) -> dict[str, Any]:
    r = api.put(f"/v1/hosts/{host}/inventory", json={"generation": generation, "devices": devices})
    assert r.status_code == 200, r.text
    return r.json()


def _vf_claim(api: TestClient, consumer: str, rate: int, count: int = 1) -> Any:
    request = {"name": "nic", "type": "NIC_VF_BW", "count": count, "params": {"min_tx_rate_mbps": rate}}
    return api.post("/v1/claims", json={"consumer": consumer, "requests": [request], "hosts": ["h1"]})


def _consumed(api: TestClient) -> dict[str, Any]:
    devs = api.get("/v1/devices", params={"host": "h1"}).json()
    items = devs["items"] if isinstance(devs, dict) else devs
    return {d["address"]: d.get("consumed") for d in items}


def test_group_mates_are_not_charged_the_requests_guaranteed_rate(api: TestClient) -> None:
    """Two VFs share an IOMMU group (no ACS): claiming one takes the other along as a group
    mate. Only the chosen VF gets the guaranteed rate; the mate carries no traffic. The claim
    must charge the PF 4000 Mbit/s, so a second 4000 Mbit/s VF (10 Gbit/s PF) still fits."""
    _bw_type(api)
    _report(api, "h1", [_vf(0, 7), _vf(1, 7), _vf(2, 8), _vf(3, 9)])
    first = _vf_claim(api, "vm-1", 4000)
    assert first.status_code == 201, first.text
    second = _vf_claim(api, "vm-2", 4000)
    # 4000 + 4000 <= 10000: the second claim fits on VF 2 or 3
    assert second.status_code == 201, second.text


def test_a_guaranteed_rate_that_fits_with_a_group_mate_is_not_refused(api: TestClient) -> None:
    """The fit charges 6000 to the chosen VF and nothing to its group mate; the claim records
    6000 on both (12000 > 10000) and loses the race against itself on every retry."""
    _bw_type(api)
    _report(api, "h1", [_vf(0, 7), _vf(1, 7)])
    r = _vf_claim(api, "vm-1", 6000)
    assert r.status_code == 201, r.text


def test_a_refusal_for_lack_of_pf_bandwidth_says_so(api: TestClient) -> None:
    """Two free VFs, each in its own group, but the PF has only 4000 of its 10000 Mbit/s left.
    The refusal must name the bandwidth, not claim the request competes for the same devices
    or would put a device with its own parent."""
    _bw_type(api)
    _report(api, "h1", [_vf(0, 7), _vf(1, 8), _vf(2, 9)])
    assert _vf_claim(api, "vm-1", 6000).status_code == 201
    refused = _vf_claim(api, "vm-2", 6000)
    assert refused.status_code == 409, refused.text
    message = refused.json()["error"]["message"]
    assert "compete for the same devices" not in message, message
    assert f"{PF} has 4000 of 10000 bandwidth_mbps left" in message, message


def _vf_claim_at(api: TestClient, consumer: str, rate: int, address: str) -> Any:
    request = {"name": "nic", "type": "NIC_VF_BW", "params": {"min_tx_rate_mbps": rate},
               "selector": f'device.address == "{address}"'}  # fmt: skip
    return api.post("/v1/claims", json={"consumer": consumer, "requests": [request], "hosts": ["h1"]})


def test_a_missing_partitions_stale_counters_do_not_outvote_the_current_report(api: TestClient) -> None:
    """The PF's link drops from 25 to 10 Gbit/s and a held VF vanishes from the report
    (missing, still held). The current report says the PF carries 10000 Mbit/s; the missing VF's
    row still says 25000. With 2000 held, at most 8000 more may be promised."""
    _bw_type(api)
    _report(api, "h1", [_vf(i, 10 + i, bandwidth=25_000) for i in range(4)])
    held = _vf_claim_at(api, "vm-1", 2000, "0000:5e:10.3")
    assert held.status_code == 201, held.text
    again = _report(api, "h1", [_vf(i, 10 + i, bandwidth=10_000) for i in range(3)], generation=2)
    assert again["missing"] == ["0000:5e:10.3"], again
    over = _vf_claim(api, "vm-2", 9000)
    # 2000 + 9000 > 10000: the PF as reported now cannot carry it
    assert over.status_code == 409, over.text


def test_a_claim_taking_no_bandwidth_on_a_pf_whose_link_dropped_is_explained_truly(api: TestClient) -> None:
    """8000 Mbit/s are guaranteed on a 25 Gbit/s link; the link renegotiates at 5 Gbit/s (the
    agent reports bandwidth "link"). A VF asked for without a guaranteed rate takes nothing of
    the PF: the scheduler's view, explain and capacity all say it fits. The claim must then
    succeed, or at least be refused with a true reason - not "taken by concurrent claims"
    when there are none."""
    _bw_type(api)
    _report(api, "h1", [_vf(i, 10 + i, bandwidth=25_000) for i in range(4)])
    assert _vf_claim(api, "vm-1", 8000).status_code == 201
    _report(api, "h1", [_vf(i, 10 + i, bandwidth=5_000) for i in range(4)], generation=2)
    explained = api.post("/v1/explain", json={"requests": [{"name": "nic", "type": "NIC_VF_BW"}],
                                              "hosts": ["h1"]}).json()  # fmt: skip
    claim = api.post("/v1/claims", json={"consumer": "vm-2", "hosts": ["h1"],
                                         "requests": [{"name": "nic", "type": "NIC_VF_BW"}]})  # fmt: skip
    if explained["fits"]:
        assert claim.status_code == 201, (explained, claim.text)
    else:
        assert "concurrent" not in claim.text, claim.text


def test_a_held_partitions_share_of_its_pool_waits_until_it_is_free(api: TestClient) -> None:
    """A report that changes what a held partition takes of its pool (consumes, mode, pool)
    does not change it under its holder: the pool's other claims were counted against what it
    was claimed with. The change waits, and the same report applies it once the device is free."""
    _bw_type(api)
    parts = [{**_vf(i, 10 + i), "consumes": {"bandwidth_mbps": 1000}, "mode": "a"} for i in range(2)]
    _report(api, "h1", parts)
    held = _vf_claim_at(api, "vm-1", 0, "0000:5e:10.0")
    assert held.status_code == 201, held.text
    grown = [{**p, "consumes": {"bandwidth_mbps": 9000}, "mode": "b"} for p in parts]
    answer = _report(api, "h1", grown, generation=2)
    assert any("waits until the device is free" in w for w in answer["warnings"]), answer
    shown = {d["address"]: d for d in api.get("/v1/devices", params={"host": "h1"}).json()}
    assert (shown["0000:5e:10.0"]["consumes"], shown["0000:5e:10.0"]["mode"]) == (
        {"bandwidth_mbps": 1000},
        "a",
    )
    assert (shown["0000:5e:10.1"]["consumes"], shown["0000:5e:10.1"]["mode"]) == (
        {"bandwidth_mbps": 9000},
        "b",
    )
    # Free again (released, cleaned): the same report, unchanged, now applies the change.
    assert api.delete("/v1/allocations/vm-1").status_code == 204
    dev = held.json()["devices"][0]["id"]
    cleaned = api.post(
        "/v1/hosts/h1/work", json={"results": [{"device_id": dev, "action": "cleanup", "ok": True}]}
    )
    assert cleaned.json()[0]["state"] == "available", cleaned.text
    _report(api, "h1", grown, generation=2)
    shown = {d["address"]: d for d in api.get("/v1/devices", params={"host": "h1"}).json()}
    assert (shown["0000:5e:10.0"]["consumes"], shown["0000:5e:10.0"]["mode"]) == (
        {"bandwidth_mbps": 9000},
        "b",
    )
