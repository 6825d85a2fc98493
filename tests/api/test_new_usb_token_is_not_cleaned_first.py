"""A device first reported while a held device of its type on the host is gone is cleaned
before use: it may be the gone one under a new address (a bus renumbered). A USB device with
another serial than the gone one's cannot be: the serial is read from the token. A new token plugged
in while a tenant's token is unplugged was cleaned first, and for a one-time-use type that
cleanup quarantined it: a token nobody ever used waited for an operator's clear."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

HELD, NEW = "usb:1050:0407:AAA1", "usb:1050:0407:BBB2"


def _token(address: str) -> dict[str, Any]:
    return {"address": address, "kind": "usb", "type": "USB_TOKEN", "vendor_id": "1050", "product_id": "0407"}


def _state(api: TestClient, address: str) -> str:
    (dev,) = api.get("/v1/devices", params={"address": address}).json()
    return str(dev["state"])


def test_a_new_token_is_offered_while_a_held_one_is_unplugged(api: TestClient) -> None:
    body = {"name": "USB_TOKEN", "config": {"one_time_use": True}}
    assert api.post("/v1/resource-types", json=body).status_code == 201
    first = {"generation": 1, "host_id": "m-1", "devices": [_token(HELD)]}
    assert api.put("/v1/hosts/h1/inventory", json=first).status_code == 200
    claim = {"consumer": "vm-1", "hosts": ["h1"], "requests": [{"name": "t", "type": "USB_TOKEN"}]}
    assert api.post("/v1/claims", json=claim).status_code == 201

    second = {"generation": 2, "host_id": "m-1", "devices": [_token(NEW)]}
    assert api.put("/v1/hosts/h1/inventory", json=second).status_code == 200
    assert _state(api, HELD) == "missing"
    assert _state(api, NEW) == "available", "a token never used is cleaned (and quarantined) first"
