"""Who is looking at the dashboard: the API's token, carried in a cookie instead of a header.

A browser cannot send ``Authorization: Bearer`` on a plain link, so the login form stores the
token in an HttpOnly, SameSite=Strict cookie; ``server/access.py`` reads it for dashboard
pages (never for the API) with the same ``TokenCache`` and the same access table.
"""

from __future__ import annotations

from fastapi import Request

from devassign.server.access import COOKIE, LoginRequired
from devassign.store import Principal

__all__ = ["COOKIE", "COOKIE_MAX_AGE", "LoginRequired", "auth_on", "lookup", "safe_next"]

COOKIE_MAX_AGE = 12 * 3600


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
