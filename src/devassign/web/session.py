"""Who is looking at the dashboard: the API's token, carried in a cookie instead of a header.

A browser cannot send ``Authorization: Bearer`` on a plain link, so the login form stores the
token in an HttpOnly, SameSite=Strict cookie; ``server/access.py`` reads it for dashboard
pages (never for the API) with the same ``TokenCache`` and the same access table.

A one-time sign-in link (``/ui/login/once?code=...``, made by ``devassign token login-link``)
puts a session of its token in the cookie instead: the server never knows a token's secret
after creating it, so the session has its own secret, stored hashed, that ends after
:data:`COOKIE_MAX_AGE`, at sign-out, or when the token is revoked.
"""

from __future__ import annotations

from fastapi import Request, Response

from devassign.server.access import COOKIE, LoginRequired
from devassign.store import Principal, Store
from devassign.store.tokens import SESSION_TTL

__all__ = [
    "COOKIE",
    "COOKIE_MAX_AGE",
    "LoginRequired",
    "auth_on",
    "end_session",
    "exchange_code",
    "keep_signed_in",
    "lookup",
    "safe_next",
]

COOKIE_MAX_AGE = int(SESSION_TTL.total_seconds())


def auth_on(request: Request) -> bool:
    return bool(request.app.state.settings.auth)


def lookup(request: Request, secret: str) -> Principal | None:
    found: Principal | None = request.app.state.tokens.get(secret)
    return found


def safe_next(target: str | None) -> str:
    """Only go back to a dashboard page after login: never to another site."""
    if not target or not target.startswith("/ui") or target.startswith("//") or "\\" in target:
        return "/ui/"
    return target


def keep_signed_in(request: Request, response: Response, secret: str) -> None:
    """The login cookie: a token's secret, or a session's from a sign-in link."""
    response.set_cookie(
        COOKIE,
        secret,
        max_age=COOKIE_MAX_AGE,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )


def exchange_code(request: Request, code: str) -> str | None:
    """A new session's secret for a one-time sign-in code; None if it is unknown, used or expired."""
    store: Store = request.app.state.store
    return store.use_login_code(code.strip())


def end_session(request: Request) -> None:
    """At sign-out, a session from a sign-in link stops working on the server too."""
    secret = request.cookies.get(COOKIE, "").strip()
    store: Store = request.app.state.store
    if secret and store.end_session(secret):
        request.app.state.tokens.forget()
