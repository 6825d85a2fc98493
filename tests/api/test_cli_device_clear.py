"""``devassign device clear`` takes a device's address or its id, as ``device show`` does."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from devassign.cli import claims as claims_cli
from devassign.cli.client import Client, CliError
from devassign.cli.main import app as cli_app
from tests.conftest import vf


def _quarantined(api: TestClient) -> dict[str, str]:
    """A VF of h1 whose cleanup failed."""
    assert api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}).status_code == 201
    r = api.put("/v1/hosts/h1/inventory", json={"generation": 1, "devices": [vf("0000:3b:02.0")]})
    assert r.status_code == 200, r.text
    claimed = api.post("/v1/claims", json={"consumer": "x", "requests": [{"name": "n", "type": "NIC_VF_1G"}]})
    assert claimed.status_code == 201, claimed.text
    device = claimed.json()["devices"][0]
    for action, ok in (("setup", True), ("cleanup", False)):
        if action == "cleanup":
            assert api.delete("/v1/allocations/x").status_code == 204
        result = {"device_id": device["id"], "action": action, "ok": ok, "error": "stuck"}
        assert api.post("/v1/hosts/h1/work", json={"results": [result]}).status_code == 200
    assert api.get(f"/v1/devices/{device['id']}").json()["state"] == "quarantined"
    return device  # type: ignore[no-any-return]


@pytest.mark.parametrize("by", ["id", "address"])
def test_clear_by_id_or_address(api: TestClient, monkeypatch: pytest.MonkeyPatch, by: str) -> None:
    device = _quarantined(api)
    client = Client("http://testserver", None, transport=api._transport, retry_for=0)
    monkeypatch.setattr(claims_cli, "client", lambda ctx: client)
    argv = ["device", "clear", device[by], "--reason", "reseated", "-f", "json"]
    result = CliRunner().invoke(cli_app, argv)
    assert result.exit_code == 0, (result.output, result.exception)
    assert json.loads(result.output)["state"] == "cleaning"


def test_clear_of_an_unknown_name_says_so(api: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    device = _quarantined(api)
    client = Client("http://testserver", None, transport=api._transport, retry_for=0)
    monkeypatch.setattr(claims_cli, "client", lambda ctx: client)
    for argv, said in (
        (["device", "clear", "0000:99:00.0"], "no device '0000:99:00.0'"),
        (["device", "clear", device["id"], "--host", "h2"], "on h2"),
    ):
        result = CliRunner().invoke(cli_app, argv)
        assert isinstance(result.exception, CliError), result.output
        assert said in result.exception.message
