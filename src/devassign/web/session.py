"""Who is looking at the dashboard: the API's token, carried in a cookie instead of a header.

A browser cannot send ``Authorization: Bearer`` on a plain link, so the login form stores the
token in an HttpOnly, SameSite=Strict cookie; each page looks it up with the same
``TokenCache`` the API uses, and the same role rules apply. With auth off everyone is admin,
as in the API.
"""

from __future__ import annotations

from fastapi import Request

from devassign.server.auth import ANONYMOUS_ADMIN
from devassign.store import Principal

COOKIE = "devassign_token"
COOKIE_MAX_AGE = 12 * 3600


class LoginRequired(Exception):
    """No usable token: the page answers with a redirect to the login form."""

    def __init__(self, message: str = "", *, stale: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.stale = stale  # a cookie was sent but is no longer valid: clear it


def auth_on(request: Request) -> bool:
    return bool(request.app.state.settings.auth)


def secret_of(request: Request) -> str | None:
    """The token from the cookie, or from a Bearer header (scripts, curl)."""
    cookie = request.cookies.get(COOKIE, "").strip()
    if cookie:
        return cookie
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and secret.strip():
        return secret.strip()
    return None


def lookup(request: Request, secret: str) -> Principal | None:
    found: Principal | None = request.app.state.tokens.get(secret)
    return found


def viewer(request: Request) -> Principal:
    """The principal of this page view; remembered on the request for the error pages."""
    if not auth_on(request):
        principal = ANONYMOUS_ADMIN
    else:
        secret = secret_of(request)
        if not secret:
            raise LoginRequired()
        found = lookup(request, secret)
        if found is None:
            raise LoginRequired("that token is unknown or was revoked; sign in again", stale=True)
        principal = found
    request.state.viewer = principal
    return principal


def safe_next(target: str | None) -> str:
    """Only go back to a dashboard page after login: never to another site."""
    if not target or not target.startswith("/ui") or target.startswith("//") or "\\" in target:
        return "/ui/"
    return target
