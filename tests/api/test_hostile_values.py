"""Values from hostile or careless callers that once got a 500 or got through: a declared
pattern that backtracks for ever, a taint's expiry past the calendar, a count in superscript
digits, a MAC address with a trailing newline."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.conftest import vf


def _type(api: TestClient, name: str, **body: Any) -> None:
    r = api.post("/v1/resource-types", json={"name": name, **body})
    assert r.status_code == 201, r.text


def _report(api: TestClient, devices: list[dict[str, Any]]) -> None:
    r = api.put("/v1/hosts/h1/inventory", json={"generation": 1, "devices": devices})
    assert r.status_code == 200 and not r.json()["refused"], r.text


def test_a_backtracking_pattern_refuses_the_value_instead_of_holding_the_server(api: TestClient) -> None:
    """``(a+)+`` on 40 a's and a b backtracks for hours in Python's ``re``, holding the GIL: the
    match is stopped and the value refused; a value that matches still passes."""
    _type(api, "L2", params={"label": {"type": "string", "pattern": "^(a+)+$"}})
    _report(api, [vf("0000:3b:02.1", type="L2")])
    bad = {"requests": [{"name": "x", "type": "L2", "params": {"label": "a" * 40 + "b"}}]}
    r = api.post("/v1/explain", json=bad)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_params" or "label" in r.json()["error"]["message"]
    good = {"consumer": "vm-1", "requests": [{"name": "x", "type": "L2", "params": {"label": "aaaa"}}]}
    assert api.post("/v1/claims", json=good).status_code == 201


def test_a_taint_expiring_past_the_calendar_is_400(api: TestClient) -> None:
    _type(api, "NIC_VF_1G")
    _report(api, [vf("0000:3b:02.1")])
    device = api.get("/v1/devices").json()[0]["id"]
    for expires_in in (1_000_000_000_000, "P999999999D"):
        body = {"effect": "NoSchedule", "reason": "x", "expires_in": expires_in}
        for path in (f"/v1/devices/{device}/taints", "/v1/hosts/h1/taints"):
            r = api.post(path, json=body)
            assert r.status_code == 400, (path, r.text)
            assert "3650 days" in r.json()["error"]["message"]
    ok = api.post("/v1/hosts/h1/taints", json={"effect": "NoSchedule", "reason": "x", "expires_in": "P3650D"})
    assert ok.status_code == 201, ok.text


def test_a_device_profile_count_in_superscript_digits_is_400(api: TestClient) -> None:
    _type(api, "GPU_A100")
    for count in ("\u00b2", "\u0663", " 1"):
        r = api.post(
            "/accelerator/v2/device_profiles",
            json={"name": "p1", "groups": [{"resources:CUSTOM_GPU_A100": count}]},
        )
        assert r.status_code == 400, (count, r.text)
        assert "in digits" in r.json()["error"]["message"]
    assert api.get("/accelerator/v2/device_profiles").status_code == 200


def test_a_mac_param_with_a_trailing_newline_is_400(api: TestClient) -> None:
    _type(api, "NIC_VF_1G", params={"mac": {"type": "mac"}})
    _report(api, [vf("0000:3b:02.1")])
    body = {"consumer": "vm-1", "requests": [{"name": "nic", "type": "NIC_VF_1G", "params": {"mac": ""}}]}
    body["requests"][0]["params"]["mac"] = "52:54:00:12:34:56\n"
    r = api.post("/v1/claims", json=body)
    assert r.status_code == 400, r.text
    body["requests"][0]["params"]["mac"] = "52:54:00:12:34:56"
    assert api.post("/v1/claims", json=body).status_code == 201


def test_a_device_profile_with_unstorable_text_is_400_and_the_listing_keeps_working(api: TestClient) -> None:
    """Cyborg's routes take raw JSON: a lone surrogate in a trait key was stored on SQLite, and
    every profile listing answered 500 after it; NUL characters were stored too."""
    _type(api, "GPU_A100")
    bodies = [
        '{"name":"p3","groups":[{"resources:CUSTOM_GPU_A100":"1","trait:\\ud800":"required"}]}',
        '{"name":"p4","description":"a\\u0000b","groups":[{"resources:CUSTOM_GPU_A100":"1"}]}',
        '{"name":"p5","groups":[{"resources:CUSTOM_GPU_A100":"1","trait:X\\u0000":"required"}]}',
    ]
    for raw in bodies:
        r = api.post(
            "/accelerator/v2/device_profiles", content=raw, headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 400, (raw, r.text)
    listing = api.get("/accelerator/v2/device_profiles")
    assert listing.status_code == 200 and listing.json()["device_profiles"] == []
    r = api.post(
        "/accelerator/v2/accelerator_requests",
        content='{"device_profile_name":"p\\ud800"}',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 400, r.text


def test_a_device_profile_keeps_what_its_caller_gave_or_refuses_it(api: TestClient) -> None:
    """A description that is not text is a 400 (it was stored as ""), and a uuid given is the
    profile's (it was replaced by a random one); a uuid that is none, or taken, is refused."""
    _type(api, "GPU_A100")
    groups = [{"resources:CUSTOM_GPU_A100": "1"}]
    for description in (0, False, [], {}):
        r = api.post(
            "/accelerator/v2/device_profiles",
            json={"name": "p1", "groups": groups, "description": description},
        )
        assert r.status_code == 400 and "description" in r.json()["error"]["message"], r.text
    for uuid in ("not-a-uuid", 7, "3f2a9c4e-8b1d-4e6f-9a7c-2d5b8e1f0a36" * 2):
        r = api.post("/accelerator/v2/device_profiles", json={"name": "p1", "groups": groups, "uuid": uuid})
        assert r.status_code == 400 and "uuid" in r.json()["error"]["message"], r.text
    mine = "3F2A9C4E-8B1D-4E6F-9A7C-2D5B8E1F0A36"
    r = api.post("/accelerator/v2/device_profiles", json={"name": "p1", "groups": groups, "uuid": mine})
    assert r.status_code == 201 and r.json()["uuid"] == mine.lower(), r.text
    again = api.post("/accelerator/v2/device_profiles", json={"name": "p2", "groups": groups, "uuid": mine})
    assert again.status_code == 409, again.text
    assert [p["uuid"] for p in api.get("/accelerator/v2/device_profiles").json()["device_profiles"]] == [
        mine.lower()
    ]
