"""Review: the CLI's gang ids made from an idempotency key, for members of two projects."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from devassign import schemas
from devassign.cli import gangs as gangs_cli
from devassign.cli.client import Client
from devassign.cli.main import app as cli_app
from devassign.domain import Role
from devassign.store import Store
from tests.api.test_gangs import _gpu


def _eight_gpus(secure_api: TestClient, store: Store) -> None:
    """Type GPU and host ``a`` with eight of them, made by an admin."""
    admin = {
        "Authorization": f"Bearer {store.create_token(schemas.TokenCreate(role=Role.ADMIN), 'test').token}"
    }
    assert secure_api.post("/v1/resource-types", json={"name": "GPU"}, headers=admin).status_code == 201
    devices = [_gpu(i) for i in range(8)]
    r = secure_api.put("/v1/hosts/a/inventory", json={"generation": 1, "devices": devices}, headers=admin)
    assert r.status_code == 200, r.text


def test_two_projects_using_the_same_key_with_instances_n_do_not_collide(
    secure_api: TestClient, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member's token carries its project, so ``devassign gang claim --instances 2
    --idempotency-key nightly`` needs no ``--project``. ``gang_id(key, None)`` then makes the
    gang id (and the instance names ``gang-<hex>-0``, ``-1``) from the key alone: the first
    project to use a key as common as ``nightly`` takes those consumer names, and every other
    project's job with that key is refused (409, the consumers are in use) although it shares
    nothing with it. Keys are scoped per project on the server; the names the CLI makes from
    them must be too (or not guessable from the key)."""
    _eight_gpus(secure_api, store)
    runner = CliRunner()
    argv = [
        "gang", "claim", "--spec", "hardware_resource:GPU=1", "--instances", "2",
        "--idempotency-key", "nightly", "-f", "json",
    ]  # fmt: skip
    outputs = []
    for project in ("red", "blue"):
        token = store.create_token(schemas.TokenCreate(role=Role.MEMBER, project=project), "test").token
        client = Client("http://testserver", token, transport=secure_api._transport, retry_for=0)
        monkeypatch.setattr(gangs_cli, "client", lambda ctx, c=client: c)
        result = runner.invoke(cli_app, argv)
        assert result.exit_code == 0, f"project {project}: {result.output}"
        outputs.append(json.loads(result.output))
    red, blue = ({a["consumer"] for a in o["allocations"]} for o in outputs)
    assert not red & blue


def test_two_projects_gangs_of_one_id_name_different_instances(
    secure_api: TestClient, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Gang ids are per project, consumer ids cloud-wide: ``--gang docs-job --instances 2`` run
    by two projects (and again by the first after it released its gang) must not be refused
    because the other project holds (or once held) consumers of the same names."""
    _eight_gpus(secure_api, store)
    runner = CliRunner()
    claim = ["gang", "claim", "--spec", "hardware_resource:GPU=1", "--instances", "2", "--gang", "docs-job"]
    names: dict[str, set[str]] = {}
    for project in ("red", "blue", "red"):
        token = store.create_token(schemas.TokenCreate(role=Role.MEMBER, project=project), "test").token
        client = Client("http://testserver", token, transport=secure_api._transport, retry_for=0)
        monkeypatch.setattr(gangs_cli, "client", lambda ctx, c=client: c)
        result = runner.invoke(cli_app, [*claim, "-f", "json"])
        assert result.exit_code == 0, f"project {project}: {result.output}"
        made = {a["consumer"] for a in json.loads(result.output)["allocations"]}
        assert all(n.startswith("docs-job-") for n in made), made
        names.setdefault(project, made)
        result = runner.invoke(cli_app, ["gang", "release", "docs-job"])
        assert result.exit_code == 0, result.output
    assert not names["red"] & names["blue"]
