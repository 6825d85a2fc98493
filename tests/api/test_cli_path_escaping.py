"""The CLI puts the names it is given (consumers, gangs, hosts, devices, tokens) into API
paths escaped, one path segment each: a name with ``?``, ``#`` or dots only names itself, one
with ``/`` is refused; never another route (a release of ``../hosts/h`` deleted host ``h``; of
``x?y=1``, consumer ``x``)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from devassign import schemas
from devassign.cli import claims as claims_cli
from devassign.cli import gangs as gangs_cli
from devassign.cli import inventory as inventory_cli
from devassign.cli import moves as moves_cli
from devassign.cli import taints as taints_cli
from devassign.cli.client import Client, CliError, api_path
from devassign.cli.main import app as cli_app
from devassign.domain import Role
from devassign.store import Store
from tests.conftest import vf

MODULES = (claims_cli, gangs_cli, inventory_cli, moves_cli, taints_cli)


def test_names_are_one_escaped_segment_each() -> None:
    assert api_path("/v1/allocations/{}", "vm-1") == "/v1/allocations/vm-1"
    with pytest.raises(CliError, match="no name holds '/'"):
        api_path("/v1/allocations/{}", "../hosts/h")
    assert api_path("/v1/allocations/{}/moves", "x?y=1#z") == "/v1/allocations/x%3Fy%3D1%23z/moves"
    assert api_path("/v1/hosts/{}", "..") == "/v1/hosts/%2E%2E"
    assert api_path("/v1/hosts/{}", ".") == "/v1/hosts/%2E"
    assert api_path("/v1/hosts/{}", "a.b") == "/v1/hosts/a.b"
    assert api_path("/v1/quotas/{}/{}", "p", "GPU") == "/v1/quotas/p/GPU"


def _as(monkeypatch: pytest.MonkeyPatch, api: TestClient, token: str) -> None:
    client = Client("http://testserver", token, transport=api._transport, retry_for=0)
    for module in MODULES:
        monkeypatch.setattr(module, "client", lambda ctx, c=client: c)


def test_a_crafted_name_reaches_no_other_route(
    secure_api: TestClient, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin_token = store.create_token(schemas.TokenCreate(role=Role.ADMIN), "test").token
    admin = {"Authorization": f"Bearer {admin_token}"}
    member = store.create_token(schemas.TokenCreate(role=Role.MEMBER, project="p"), "test")
    spare = store.create_token(schemas.TokenCreate(role=Role.MEMBER, project="q"), "test")
    assert secure_api.post("/v1/resource-types", json={"name": "NIC_VF_1G"}, headers=admin).status_code == 201
    devices = [vf(f"0000:3b:02.{i}") for i in range(3)]
    r = secure_api.put("/v1/hosts/h1/inventory", json={"generation": 1, "devices": devices}, headers=admin)
    assert r.status_code == 200, r.text
    for consumer in ("x", "x1"):
        body = {"consumer": consumer, "requests": [{"name": "nic", "type": "NIC_VF_1G"}]}
        r = secure_api.post("/v1/claims", json=body, headers={"Authorization": f"Bearer {member.token}"})
        assert r.status_code == 201, r.text
    runner = CliRunner()

    _as(monkeypatch, secure_api, admin_token)
    for argv, said in (
        (["release", "--consumer", "../hosts/h1"], "no name holds '/'"),
        (["release", "--consumer", f"../../v1/tokens/{spare.id}"], "no name holds '/'"),
        (["release", "--consumer", "x?y=1"], "consumer 'x?y=1' holds no allocation"),
        (["release", "--consumer", "x#y"], "consumer 'x#y' holds no allocation"),
        (["release", "--consumer", ".."], "consumer '..' holds no allocation"),
        (["host", "show", "../allocations/x"], "no name holds '/'"),
        (["host", "delete", "h1?x=1"], "h1?x=1"),
        (["type", "delete", "NIC_VF_1G?x=1"], "NIC_VF_1G?x=1"),
        (["move", "abort", "x/../x1"], "no name holds '/'"),
    ):
        result = runner.invoke(cli_app, argv)
        assert isinstance(result.exception, CliError), (argv, result.output, result.exception)
        assert said in result.exception.message, (argv, result.exception.message)

    _as(monkeypatch, secure_api, member.token)
    for gang in ("a/../../allocations/x1", "x1?y", "%2e%2e"):
        result = runner.invoke(cli_app, ["gang", "release", gang])
        assert isinstance(result.exception, CliError), (gang, result.output, result.exception)

    # Nothing was released, deleted or revoked.
    live = {a["consumer"] for a in secure_api.get("/v1/allocations", headers=admin).json()}
    assert live == {"x", "x1"}
    assert secure_api.get("/v1/hosts/h1", headers=admin).status_code == 200
    assert secure_api.get("/v1/resource-types/NIC_VF_1G", headers=admin).status_code == 200
    tokens = {t["id"]: t for t in secure_api.get("/v1/tokens", headers=admin).json()}
    assert tokens[spare.id]["revoked_at"] is None


def test_a_path_no_route_has_is_named_in_the_404(secure_api: TestClient) -> None:
    r = secure_api.delete("/v1/allocations/..%2Fhosts%2Fh1")
    assert r.status_code == 404
    assert r.json()["error"] == {
        "code": "not_found",
        "message": "no such route: DELETE /v1/allocations/../hosts/h1 (the routes are listed at /docs)",
    }
