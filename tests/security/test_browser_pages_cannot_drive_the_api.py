"""A web page in a developer's browser must not drive a server: a browser POSTs from any site
without asking first (a body without a type needs no preflight), and with ``--no-auth`` every
caller is an admin; a DNS name the page's owner points at the machine reads it as well."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from devassign import schemas
from devassign.domain import Role
from devassign.store import Store

_BROWSER_CROSS_SITE = [
    {"sec-fetch-site": "cross-site", "origin": "http://evil.example"},
    {"sec-fetch-site": "same-site", "origin": "http://a.example"},
    {"origin": "http://evil.example"},  # an older browser: Origin alone
    {"origin": "null"},  # a sandboxed page or a redirect
]


def _types(api: TestClient, headers: dict[str, str] | None = None) -> list[Any]:
    return [t["name"] for t in api.get("/v1/resource-types", headers=headers).json()]


def test_a_cross_site_post_is_refused_and_changes_nothing(api: TestClient) -> None:
    for headers in _BROWSER_CROSS_SITE:
        # No content type: the request a page's fetch(..., {mode: "no-cors"}) sends.
        r = api.post("/v1/tokens", content=b'{"role": "admin", "name": "evil"}', headers=headers)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", (headers, r.text)
        assert "from another site's page" in r.json()["error"]["message"]
        r = api.post("/v1/resource-types", json={"name": "EVIL"}, headers=headers)
        assert r.status_code == 403, (headers, r.text)
    assert _types(api) == [] and api.get("/v1/tokens").json() == []
    # A program sends neither header; the dashboard's own page says same-origin.
    assert api.post("/v1/resource-types", json={"name": "A"}).status_code == 201
    same = {"sec-fetch-site": "same-origin", "origin": "http://testserver"}
    assert api.post("/v1/resource-types", json={"name": "B"}, headers=same).status_code == 201
    assert (
        api.post(
            "/v1/resource-types", json={"name": "C"}, headers={"origin": "http://testserver"}
        ).status_code
        == 201
    )
    # Reading is not refused (a page cannot read another site's answers without CORS).
    assert api.get("/v1/resource-types", headers=_BROWSER_CROSS_SITE[0]).status_code == 200


def test_a_cross_site_post_with_a_token_is_refused_too(secure_api: TestClient, store: Store) -> None:
    secret = store.create_token(schemas.TokenCreate(role=Role.ADMIN), "test").token
    auth = {"Authorization": f"Bearer {secret}"}
    r = secure_api.post(
        "/v1/resource-types", json={"name": "EVIL"}, headers={**auth, **_BROWSER_CROSS_SITE[0]}
    )
    assert r.status_code == 403, r.text
    assert _types(secure_api, auth) == []


def test_without_auth_only_addresses_and_one_label_names_are_answered(api: TestClient) -> None:
    """DNS rebinding: a page of evil.example whose name now points at 127.0.0.1 sends
    ``Host: evil.example``; the server answers only an address or a one-label name."""
    for host in ("evil.example", "evil.example:8470", "devassign.attacker.test."):
        r = api.get("/v1/tokens", headers={"host": host})
        assert r.status_code == 403 and "without --no-auth" in r.json()["error"]["message"], (host, r.text)
        r = api.post("/v1/resource-types", json={"name": "EVIL"}, headers={"host": host})
        assert r.status_code == 403, (host, r.text)
    assert _types(api) == []
    for host in ("127.0.0.1:8470", "[::1]:8470", "localhost", "app.localhost", "devbox", "10.1.2.3"):
        assert api.get("/v1/resource-types", headers={"host": host}).status_code == 200, host
    assert api.get("/healthz", headers={"host": "evil.example"}).status_code == 200  # says only "up"


def test_with_auth_a_dns_name_is_answered(secure_api: TestClient, store: Store) -> None:
    secret = store.create_token(schemas.TokenCreate(role=Role.ADMIN), "test").token
    r = secure_api.get(
        "/v1/resource-types", headers={"Authorization": f"Bearer {secret}", "host": "da.example.com"}
    )
    assert r.status_code == 200, r.text
