"""A taint's expiry at the edges: an offset that moves the instant out of the years a time can
hold is a 400, not a 500; ``true`` is no duration; the CLI's ``--until`` says the same."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from devassign.cli.client import CliError
from devassign.cli.taints import taint_body
from tests.conftest import vf


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"expires_at": "0001-01-01T00:00:00+14:00"}, "expires_at is out of range"),
        ({"expires_at": "9999-12-31T23:59:59-01:00"}, "expires_at is out of range"),
        ({"expires_in": True}, "not true or false"),
    ],
)
def test_expiries_out_of_range_are_refused(api: TestClient, body: dict[str, object], says: str) -> None:
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}).status_code == 201
    r = api.put("/v1/hosts/h1/inventory", json={"generation": 1, "devices": [vf("0000:3b:02.0")]})
    assert r.status_code == 200, r.text
    taint = {"effect": "Drain", "reason": "x", **body}
    for path in ("/v1/hosts/h1/taints", f"/v1/devices/{api.get('/v1/devices').json()[0]['id']}/taints"):
        r = api.post(path, json=taint)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "invalid_request" and says in r.json()["error"]["message"]
    assert api.get("/v1/taints").json() == []


@pytest.mark.parametrize("until", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-01:00"])
def test_the_cli_says_an_until_out_of_range_is(until: str) -> None:
    with pytest.raises(CliError, match="out of range") as raised:
        taint_body("Drain", "x", None, until)
    assert raised.value.exit_status == 2
