"""Idempotent replays of gangs, the same key with another gang, and the CLI's retries.

A gang sent again with its idempotency_key after every instance was claimed must answer 200
with the same allocations (docs/requests.md, "Gangs"); a retry is what a client does after a
timeout, so a replay that fails makes the client believe the gang was not claimed.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from devassign.cli import gangs as gangs_cli
from devassign.cli.client import Client
from devassign.cli.main import app as cli_app
from devassign.cli.main import run
from tests.api.test_gangs import _cloud, _gang


def test_a_gang_replay_is_not_refused_for_the_quota_it_already_holds(api: TestClient) -> None:
    """A project with a GPU limit of 10 claims a gang of 2 x 4 GPUs (201), then resends the
    same body with the same idempotency_key: it must get 200 and the same allocations. It was refused:
    ``Gangs._prepare`` checks the gang's total against the quota left (which now counts the
    gang's own 8 GPUs) before ``gang_replays`` looks for the replay: 403 quota_exceeded
    ("8 for the gang, 2 left"), although nothing new would be claimed. A single claim's replay
    under the same quota answers 200."""
    _cloud(api, {"a": 8, "b": 8})
    assert api.put("/v1/quotas/p/GPU", json={"limit": 10}).status_code == 204
    body = _gang(["q1", "q2"], project="p", idempotency_key="job-1")
    first = api.post("/v1/gangs", json=body)
    assert first.status_code == 201, first.text
    again = api.post("/v1/gangs", json=body)
    assert again.status_code == 200, again.text
    assert again.json() == first.json()


def test_the_same_key_with_other_instances_is_idempotency_key_reused(api: TestClient) -> None:
    """docs/requests.md: "another body with the same key: 409 idempotency_key_reused". A gang
    sent with key k and other instances (no gang id given) is answered 409 consumer_conflict
    "gang id '<uuid>' already names 2 live allocations ...; choose another id" -- an id the
    client never chose (it is derived from the key), and a code the docs do not give for it."""
    _cloud(api, {"a": 8, "b": 8})
    assert api.post("/v1/gangs", json=_gang(["a1", "a2"], gpus=1, idempotency_key="k")).status_code == 201
    other = api.post("/v1/gangs", json=_gang(["b1", "b2"], gpus=1, idempotency_key="k"))
    assert other.status_code == 409, other.text
    assert other.json()["error"]["code"] == "idempotency_key_reused", other.text
    assert api.get("/v1/allocations/b1").status_code == 404


def test_the_cli_retry_with_the_same_key_and_instances_n_claims_nothing_new(
    api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``devassign gang claim --instances N --idempotency-key KEY`` says "Send the same key to
    retry safely: the same allocations come back". Without --gang the CLI makes a random gang
    id (``gang-<hex>``) and names the instances after it, so the retry sends other instances
    and another gang id: a second gang of N allocations is claimed (double the devices held by
    one job). The retry must return the first gang's allocations."""
    _cloud(api, {"a": 8, "b": 8})
    client = Client("http://testserver", None, transport=api._transport, retry_for=0)
    monkeypatch.setattr(gangs_cli, "client", lambda ctx: client)
    runner = CliRunner()
    argv = [
        "gang", "claim", "--spec", "hardware_resource:GPU=2", "--instances", "2",
        "--idempotency-key", "job-7", "-f", "json",
    ]  # fmt: skip
    first = runner.invoke(cli_app, argv)
    assert first.exit_code == 0, first.output
    again = runner.invoke(cli_app, argv)
    assert again.exit_code == 0, again.output
    made: dict[str, Any] = json.loads(first.output)
    retried: dict[str, Any] = json.loads(again.output)
    assert retried["gang"] == made["gang"]
    assert len(api.get("/v1/allocations").json()) == 2, "the retry claimed a second gang"


def test_the_cli_retry_with_the_same_key_and_another_spec_is_idempotency_key_reused(
    api: TestClient, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The instances the CLI names after the key are the same; the body is not: the key was
    reused for another request (exit 1, the server's code), and nothing more is claimed."""
    _cloud(api, {"a": 8, "b": 8})
    client = Client("http://testserver", None, transport=api._transport, retry_for=0)
    monkeypatch.setattr(gangs_cli, "client", lambda ctx: client)
    argv = ["gang", "claim", "--instances", "2", "--idempotency-key", "job-8", "-f", "json"]
    assert run([*argv, "--spec", "hardware_resource:GPU=2"]) == 0
    capsys.readouterr()
    assert run([*argv, "--spec", "hardware_resource:GPU=3"]) == 1
    assert "[idempotency_key_reused]" in capsys.readouterr().err
    assert len(api.get("/v1/allocations").json()) == 2


def test_the_cli_gang_id_is_made_from_the_key_and_project_else_random() -> None:
    """The same key (and project) give the same id; another project, or no key, another one."""
    made = gangs_cli.gang_id("job-7", None)
    assert made == gangs_cli.gang_id("job-7", None)
    assert made.startswith("gang-") and len(made) == len("gang-") + 12
    assert gangs_cli.gang_id("job-7", "p") not in {made, gangs_cli.gang_id("job-7", "q")}
    assert gangs_cli.gang_id(None, None) != gangs_cli.gang_id(None, None)


def test_a_gang_with_an_explicit_id_and_another_key_is_still_consumer_conflict(api: TestClient) -> None:
    """An id chosen by the client that names another key's live gang is the id's conflict,
    not a reused key."""
    _cloud(api, {"a": 8, "b": 8})
    made = api.post("/v1/gangs", json=_gang(["a1"], gpus=1, gang="g", idempotency_key="k1"))
    assert made.status_code == 201, made.text
    other = api.post("/v1/gangs", json=_gang(["b1"], gpus=1, gang="g", idempotency_key="k2"))
    assert other.status_code == 409, other.text
    assert other.json()["error"]["code"] == "consumer_conflict", other.text


def test_a_gang_over_the_quota_left_is_still_refused_before_it_is_read(api: TestClient) -> None:
    """The quota check moved after the look for a replay; a new gang over it is still a 403."""
    _cloud(api, {"a": 8, "b": 8})
    assert api.put("/v1/quotas/p/GPU", json={"limit": 10}).status_code == 204
    made = api.post("/v1/gangs", json=_gang(["q1", "q2"], project="p", idempotency_key="j1"))
    assert made.status_code == 201, made.text
    again = api.post("/v1/gangs", json=_gang(["q3"], project="p", idempotency_key="j2"))
    assert again.status_code == 403, again.text
    assert again.json()["error"]["code"] == "quota_exceeded"
