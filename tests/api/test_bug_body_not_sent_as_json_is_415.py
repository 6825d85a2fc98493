"""A JSON body sent with another content type (``curl -d`` sends a form's) was answered
"body: Input should be a valid dictionary", which hides the fix; it is a 415 that names the
type sent and the one to send, and changes nothing."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient


@pytest.mark.parametrize("media", ["text/plain", "application/x-www-form-urlencoded", "application/xml"])
def test_a_json_body_of_another_content_type_is_a_415_naming_the_fix(api: TestClient, media: str) -> None:
    body = b'{"name": "GPU"}'
    r = api.post("/v1/resource-types", content=body, headers={"Content-Type": media})
    assert r.status_code == 415, r.text
    error = r.json()["error"]
    assert error["code"] == "unsupported_media_type"
    assert media in error["message"] and "Content-Type: application/json" in error["message"]
    assert api.get("/v1/resource-types").json() == []


@pytest.mark.parametrize("media", ["application/json", "application/json; charset=utf-8", None])
def test_json_and_no_content_type_are_decoded(api: TestClient, media: str | None) -> None:
    headers = {"Content-Type": media} if media else {}
    r = api.post("/v1/resource-types", content=b'{"name": "GPU"}', headers=headers)
    assert r.status_code == 201, r.text


def test_a_route_without_a_body_ignores_the_content_type(api: TestClient) -> None:
    r = api.get("/v1/resource-types", headers={"Content-Type": "text/plain"})
    assert r.status_code == 200, r.text
