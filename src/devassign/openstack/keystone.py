"""Keystone tokens on the Cyborg API: Nova sends the request's user token, not a devassign one.

Nova's Cyborg client sends the token of the request's context in ``X-Auth-Token`` (the user
who boots the instance) and, with ``[service_user] send_service_user_token``, its own service
user's token in ``X-Service-Token``. Each is validated against Keystone
(``GET /v3/auth/tokens``, the token validating itself: Keystone's ``token_subject`` rule, so
devassign needs no Keystone credentials of its own). A service token, or a user token, with
one of the accepted roles (``admin``, ``service``) is a devassign admin on the Cyborg API; any
other valid token a member of no project (it may read device profiles). Answers are cached by
the token's SHA-256 (never the token) for at most a minute and never past its expiry.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

import httpx

from devassign.domain import Role
from devassign.store import Principal

log = logging.getLogger(__name__)

_CACHE_SECONDS = 60.0
_MAX_CACHED = 10_000


class KeystoneUnavailable(Exception):
    """Keystone could not say whether a token is valid (unreachable, 5xx)."""


class KeystoneAuth:
    def __init__(
        self,
        url: str,
        roles: tuple[str, ...] = ("admin", "service"),
        *,
        timeout: float = 5.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/") + "/auth/tokens"
        self.roles = frozenset(r.lower() for r in roles)
        self._client = httpx.Client(timeout=timeout, transport=transport)
        self._cache: dict[bytes, tuple[float, dict[str, Any] | None]] = {}
        self._lock = threading.Lock()

    def principal(self, auth_token: str, service_token: str | None = None) -> Principal | None:
        """Who the caller is on the Cyborg API; None: no valid token (raises
        :class:`KeystoneUnavailable` when Keystone cannot tell)."""
        user = self.validate(auth_token) if auth_token else None
        service = self.validate(service_token) if service_token else None
        for token in (service, user):
            if token is not None and self._admitted(token):
                return Principal(name=_name(token, user), role=Role.ADMIN)
        if user is not None:
            return Principal(name=_name(user, None), role=Role.MEMBER, project="")
        return None

    def _admitted(self, token: dict[str, Any]) -> bool:
        return any(str(r.get("name", "")).lower() in self.roles for r in token.get("roles") or [])

    def validate(self, secret: str) -> dict[str, Any] | None:
        """Keystone's ``token`` object of a valid token, or None."""
        # Keystone's tokens are ASCII; another (a header read as latin-1) cannot be sent on.
        if len(secret) > 4096 or not secret.isascii():
            return None
        key = hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            r = self._client.get(self.url, headers={"X-Auth-Token": secret, "X-Subject-Token": secret})
        except httpx.HTTPError as exc:
            raise KeystoneUnavailable(f"{self.url} unreachable: {type(exc).__name__}") from exc
        if r.status_code >= 500:
            raise KeystoneUnavailable(f"{self.url} answered {r.status_code}")
        token: dict[str, Any] | None = None
        until = now + _CACHE_SECONDS
        if r.status_code == 200:
            try:
                token = r.json()["token"]
                expires = datetime.fromisoformat(str(token["expires_at"]).replace("Z", "+00:00"))
            except (ValueError, KeyError, TypeError):
                raise KeystoneUnavailable(f"{self.url} answered 200 without a token") from None
            left = (expires - datetime.now(UTC)).total_seconds()
            if left <= 0:
                token = None
            until = now + max(0.0, min(_CACHE_SECONDS, left))
        with self._lock:
            if len(self._cache) >= _MAX_CACHED:
                self._cache = {}
            self._cache[key] = (until, token)
        return token


def _name(token: dict[str, Any], user: dict[str, Any] | None) -> str:
    who = (token.get("user") or {}).get("name") or (token.get("user") or {}).get("id") or "?"
    name = f"keystone:{who}"
    if user is not None and user is not token:
        name += f" for {(user.get('user') or {}).get('name') or '?'}"
    return name[:160]


def for_app(state: Any) -> KeystoneAuth | None:
    """The application's validator (``app.state.keystone``), made from its settings on first
    use; None when no Keystone is configured."""
    found: KeystoneAuth | None = getattr(state, "keystone", None)
    if found is None:
        url = getattr(state.settings, "keystone_url", None)
        if not url:
            return None
        roles = tuple(r.strip() for r in state.settings.keystone_roles.split(",") if r.strip())
        found = state.keystone = KeystoneAuth(url, roles)
    return found
