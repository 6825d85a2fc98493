"""One-time sign-in links to the dashboard: made by an admin for a token, used once, in time.

``POST /v1/tokens/{token_id}/login-link`` (admin) answers ``{url, expires_at}``; ``GET
/ui/login/once?code=`` exchanges the code, once and within 10 minutes, for a dashboard session
of that token (a cookie of its own, stored hashed, never the token's secret) and goes on to
``/ui/``. A used, expired, unknown or revoked-token code shows the sign-in form with a message.
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import parse_qs, urlsplit

import sqlalchemy as sa
from fastapi.testclient import TestClient

from devassign import schemas
from devassign.domain import Role
from devassign.store import Store
from devassign.store.schema import login_codes
from devassign.store.tokens import SESSION_PREFIX
from tests.conftest import Clock, make_client

REFUSED = "this sign-in link is unknown, used or expired"


def _token(store: Store, role: Role = Role.ADMIN, **scope: str) -> schemas.TokenCreated:
    return store.create_token(schemas.TokenCreate(role=role, **scope), "test")


def _link(client: TestClient, admin: str, token_id: int) -> dict[str, Any]:
    r = client.post(f"/v1/tokens/{token_id}/login-link", headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 201, r.text
    found: dict[str, Any] = r.json()
    return found


def _open(client: TestClient, url: str) -> Any:
    """Open a link as a browser would, without a cookie of its own."""
    client.cookies.clear()
    parts = urlsplit(url)
    page = client.get(f"{parts.path}?{parts.query}", follow_redirects=False)
    assert page.status_code == 200 and "devassign_token" not in page.cookies, page.text
    code = parse_qs(parts.query)["code"][0]
    assert f'value="{code}"' in page.text and 'action="/ui/login/once"' in page.text, page.text
    return client.post("/ui/login/once", data={"code": code}, follow_redirects=False)


def _page(client: TestClient, cookie: str, path: str = "/ui/") -> Any:
    client.cookies.clear()
    client.cookies.set("devassign_token", cookie)
    return client.get(path, follow_redirects=False)


def test_a_link_signs_a_browser_in_once(secure_api: TestClient, store: Store, clock: Clock) -> None:
    admin = _token(store).token
    member = _token(store, Role.MEMBER, project="p")
    made = _link(secure_api, admin, member.id)
    assert urlsplit(made["url"]).path == "/ui/login/once"
    assert made["expires_at"].startswith("2026-01-01T12:10:00")  # the test clock's noon + 10 min

    r = _open(secure_api, made["url"])
    assert r.status_code == 200 and r.headers["refresh"] == "0; url=/ui/", r.text
    assert r.headers["cache-control"] == "no-store" and r.headers["referrer-policy"] == "no-referrer"
    cookie = r.cookies["devassign_token"]
    set_cookie = r.headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=strict" in set_cookie
    # The cookie is a session of its own, not the member's token.
    assert cookie.startswith(SESSION_PREFIX) and cookie != member.token

    overview = _page(secure_api, cookie)
    assert overview.status_code == 200 and f"member:p#{member.id}" in overview.text
    # The session is the member's: no hosts page for it.
    assert _page(secure_api, cookie, "/ui/hosts").status_code == 403
    # and it is no API token.
    secure_api.cookies.clear()
    api = secure_api.get("/v1/allocations", headers={"Authorization": f"Bearer {cookie}"})
    assert api.status_code == 401 and "dashboard session" in api.json()["error"]["message"]

    again = _open(secure_api, made["url"])
    assert again.status_code == 200 and REFUSED in again.text
    assert "devassign_token" not in again.cookies
    actions = [e.action for e in store.list_events(limit=10)]
    assert "login_link_created" in actions and "login_link_used" in actions


def test_an_expired_or_unknown_code_shows_the_form_with_a_message(
    secure_api: TestClient, store: Store, clock: Clock
) -> None:
    admin = _token(store)
    made = _link(secure_api, admin.token, admin.id)
    clock.advance(10 * 60 + 1)
    r = _open(secure_api, made["url"])
    assert r.status_code == 200 and REFUSED in r.text and 'name="token"' in r.text
    for query in ("code=", "code=nope", "", "code=" + "x" * 5000, "code=%00"):
        r = secure_api.get(f"/ui/login/once?{query}", follow_redirects=False)
        assert r.status_code < 500, (query, r.status_code)
        assert "devassign_token" not in r.cookies


def test_only_admins_make_links_and_only_for_live_tokens(secure_api: TestClient, store: Store) -> None:
    admin = _token(store).token
    member = _token(store, Role.MEMBER, project="p")
    agent = _token(store, Role.AGENT, host="compute-1")
    for secret in (member.token, agent.token):
        r = secure_api.post(
            f"/v1/tokens/{member.id}/login-link", headers={"Authorization": f"Bearer {secret}"}
        )
        assert r.status_code == 403, r.text
    assert secure_api.post(f"/v1/tokens/{member.id}/login-link").status_code == 401
    as_admin = {"Authorization": f"Bearer {admin}"}
    for missing in (999, 0, 2**40):
        r = secure_api.post(f"/v1/tokens/{missing}/login-link", headers=as_admin)
        assert r.status_code == 404 and r.json()["error"]["code"] == "token_not_found", r.text
    store.revoke_token(member.id, "test")
    r = secure_api.post(f"/v1/tokens/{member.id}/login-link", headers=as_admin)
    assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_state", r.text


def test_revoking_the_token_ends_its_links_and_sessions(secure_api: TestClient, store: Store) -> None:
    admin = _token(store).token
    member = _token(store, Role.MEMBER, project="p")
    used = _link(secure_api, admin, member.id)
    waiting = _link(secure_api, admin, member.id)
    cookie = _open(secure_api, used["url"]).cookies["devassign_token"]
    assert _page(secure_api, cookie).status_code == 200
    r = secure_api.delete(f"/v1/tokens/{member.id}", headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 200, r.text
    gone = _page(secure_api, cookie)
    assert gone.status_code == 303 and gone.headers["location"].startswith("/ui/login")
    assert REFUSED in _open(secure_api, waiting["url"]).text


def test_a_session_ends_at_sign_out_and_after_12_hours(
    secure_api: TestClient, store: Store, clock: Clock
) -> None:
    admin = _token(store)
    first = _open(secure_api, _link(secure_api, admin.token, admin.id)["url"]).cookies["devassign_token"]
    second = _open(secure_api, _link(secure_api, admin.token, admin.id)["url"]).cookies["devassign_token"]
    assert first != second

    secure_api.cookies.clear()
    secure_api.cookies.set("devassign_token", first)
    assert secure_api.post("/ui/logout", follow_redirects=False).status_code == 303
    assert _page(secure_api, first).status_code == 303  # signed out on the server too
    assert _page(secure_api, second).status_code == 200  # another browser's session stays

    clock.advance(12 * 3600 + 1)
    secure_api.app.state.tokens.forget()  # type: ignore[attr-defined]  # the 10 s token cache
    assert _page(secure_api, second).status_code == 303
    # The admin token itself is not affected by its sessions.
    r = secure_api.get("/v1/tokens", headers={"Authorization": f"Bearer {admin.token}"})
    assert r.status_code == 200


def test_codes_and_sessions_are_stored_hashed(secure_api: TestClient, store: Store) -> None:
    admin = _token(store)
    made = _link(secure_api, admin.token, admin.id)
    code = made["url"].split("code=", 1)[1]
    cookie = _open(secure_api, made["url"]).cookies["devassign_token"]
    with store.db.engine.connect() as conn:
        rows = [tuple(str(v) for v in row) for row in conn.execute(sa.select(login_codes))]
    assert len(rows) == 1
    assert not any(code in v or cookie in v or cookie.removeprefix(SESSION_PREFIX) in v for v in rows[0])


def test_one_code_used_by_two_browsers_at_once_signs_in_only_one(store: Store) -> None:
    admin = _token(store)
    code, _ = store.create_login_code(admin.id, "test")
    got: list[str | None] = []
    start = threading.Barrier(4)

    def use() -> None:
        start.wait()
        got.append(store.use_login_code(code))

    threads = [threading.Thread(target=use) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(got) == 4 and sum(s is not None for s in got) == 1, got


def test_without_auth_the_link_page_goes_to_the_dashboard(store: Store) -> None:
    with make_client(store, auth=False) as client:
        r = client.get("/ui/login/once?code=anything", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/ui/"


def test_opening_the_link_spends_nothing_and_only_this_sites_page_spends_it(
    secure_api: TestClient, store: Store
) -> None:
    """A chat's or a mail scanner's preview fetches the link: that fetch must leave the code
    for the person it was sent to; and a page of another site cannot spend it for them."""
    admin = _token(store)
    made = _link(secure_api, admin.token, admin.id)
    parts = urlsplit(made["url"])
    for _ in range(3):  # previews
        secure_api.cookies.clear()
        preview = secure_api.get(f"{parts.path}?{parts.query}", follow_redirects=False)
        assert preview.status_code == 200 and "devassign_token" not in preview.cookies
    code = parse_qs(parts.query)["code"][0]
    secure_api.cookies.clear()
    elsewhere = secure_api.post(
        "/ui/login/once",
        data={"code": code},
        headers={"sec-fetch-site": "cross-site"},
        follow_redirects=False,
    )
    assert elsewhere.status_code == 403 and "devassign_token" not in elsewhere.cookies
    signed = _open(secure_api, made["url"])
    assert signed.status_code == 200 and signed.cookies["devassign_token"].startswith(SESSION_PREFIX)
    assert [e.action for e in store.list_events(limit=10)].count("login_link_used") == 1


def test_the_sign_in_and_sign_out_forms_are_small(secure_api: TestClient) -> None:
    """The one-time sign-in and the sign-out read up to 1 MiB from anyone, no token needed;
    they are forms as small as the sign-in's (8 KiB)."""
    form = {"content-type": "application/x-www-form-urlencoded", "sec-fetch-site": "same-origin"}
    for path in ("/ui/login", "/ui/login/once", "/ui/logout"):
        r = secure_api.post(path, content=b"code=" + b"a" * 9000, headers=form, follow_redirects=False)
        assert r.status_code == 413, (path, r.status_code)
