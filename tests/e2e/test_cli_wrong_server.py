"""The CLI pointed at an HTTP server that is not devassign (a wrong port, a proxy's sign-in
page, another JSON API): one error line, never a traceback, and never a success it did not
have (a release "done" through a sign-in page). A devassign server marks every answer with its
version header, its own early refusals included."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

import devassign
from devassign.cli.client import VERSION_HEADER
from tests.e2e.servers import cli
from tests.security.test_client_side_review import _http_server


def _server(body: bytes, content_type: str) -> Iterator[str]:
    with _http_server(lambda: (200, {"content-type": content_type}, body)) as url:
        yield url


@pytest.fixture
def sign_in_page() -> Iterator[str]:
    """A web server that answers every request with a 200 HTML page."""
    yield from _server(b"<html><body>Please sign in</body></html>", "text/html")


@pytest.fixture
def other_json_api() -> Iterator[str]:
    """Another JSON API: every request answers 200 ``{}``."""
    yield from _server(b"{}", "application/json")


COMMANDS = [
    ["types"],
    ["hosts"],
    ["devices"],
    ["allocations"],
    ["events"],
    ["claim", "--consumer", "vm-1", "--spec", "hardware_resource:NIC_VF_1G=1"],
    ["capacity", "--spec", "hardware_resource:NIC_VF_1G=1"],
]


@pytest.mark.parametrize("server", ["sign_in_page", "other_json_api"])
@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: a[0])
def test_another_server_at_the_url_is_one_error_line_not_a_traceback(
    request: pytest.FixtureRequest, server: str, args: list[str]
) -> None:
    result = cli("--url", request.getfixturevalue(server), *args, check=False)
    assert "Traceback" not in result.stderr, result.stderr[-400:]
    assert result.returncode == 2, (result.returncode, result.stderr[-400:])
    assert result.stderr.strip().startswith("error: "), result.stderr[-400:]
    assert "is not a devassign server" in result.stderr, result.stderr[-400:]


def test_release_through_a_sign_in_page_does_not_claim_success(sign_in_page: str) -> None:
    result = cli("--url", sign_in_page, "release", "--consumer", "vm-1", check=False)
    assert result.returncode != 0, (result.stdout, result.stderr)
    assert "released" not in result.stdout, result.stdout


def test_every_answer_of_a_devassign_server_carries_its_version(api: TestClient) -> None:
    """Answers from routes, from the NUL check and from the body limit, before any route."""
    answers = [
        api.get("/healthz"),
        api.get("/v1/resource-types"),
        api.get("/v1/hosts/nope"),
        api.get("/v1/hosts/a%00b"),
        api.post("/v1/claims", content=b"{" * 10, headers={"content-type": "application/json"}),
        api.post("/v1/claims", content=b"x" * (20 * 1024 * 1024)),
    ]
    assert {r.status_code for r in answers} >= {200, 400, 404, 413}, [r.status_code for r in answers]
    for r in answers:
        assert r.headers.get(VERSION_HEADER) == devassign.__version__, (r.status_code, r.headers)
