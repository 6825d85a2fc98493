"""Who may call what, and what they see: one table for the API and the dashboard.

Every route of the application is declared once in :data:`POLICY` with the callers it admits
(Placement's route table with its policy rules, Kubernetes' node authorizer for agents).
:func:`authorize` enforces it before any handler runs, and hands the handler a :class:`Scope`:
the one object that says which project, which host and which details the caller may read.
The API (``server/routes.py``, ``server/claims.py``, ``server/lifecycle.py``) and the dashboard
(``web/dashboard.py``) both read through ``server/views.py`` with that scope, so visibility is
decided in one place. A route missing from the table stops the application from starting.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.routing import BaseRoute, Route

from devassign import errors
from devassign.domain import Role, check_project
from devassign.store import Principal
from devassign.store.tokens import SESSION_PREFIX

ANONYMOUS_ADMIN = Principal(name="no-auth", role=Role.ADMIN)
# The scope of a public route: a member of no project, so every scoped read is empty.
NOBODY = Principal(name="anonymous", role=Role.MEMBER, project="")


class Need(StrEnum):
    """Who a route admits. Scoping within what a caller is admitted to is the :class:`Scope`'s."""

    PUBLIC = "public"  # no token: health, the login form, the API description
    ANY = "any"  # any valid token but a monitor's; members and agents see only their part
    TENANT = "tenant"  # admins and members: claims, explain, capacity, quotas, release
    OPERATOR = "operator"  # admins and agents: hosts and devices (an agent: its own host)
    HOST = "host"  # admins, and the agent of the host named in the path
    ADMIN = "admin"
    MONITOR = "monitor"  # admins and monitor tokens: the metrics, which name projects and hosts


# (method, path) -> who may call it. The table in docs/api.md is this one; a test compares them.
POLICY: dict[tuple[str, str], Need] = {
    # the service itself
    ("GET", "/healthz"): Need.PUBLIC,
    ("GET", "/metrics"): Need.MONITOR,
    ("GET", "/openapi.json"): Need.PUBLIC,
    ("GET", "/docs"): Need.PUBLIC,
    ("GET", "/redoc"): Need.PUBLIC,
    # the catalog
    ("GET", "/v1/resource-types"): Need.ANY,
    ("POST", "/v1/resource-types"): Need.ADMIN,
    ("GET", "/v1/resource-types/{name}"): Need.ANY,
    ("PATCH", "/v1/resource-types/{name}"): Need.ADMIN,
    ("DELETE", "/v1/resource-types/{name}"): Need.ADMIN,
    # hosts and devices
    ("GET", "/v1/hosts"): Need.OPERATOR,
    ("GET", "/v1/hosts/{host}"): Need.HOST,
    ("DELETE", "/v1/hosts/{host}"): Need.ADMIN,
    ("POST", "/v1/hosts/{host}/rename"): Need.ADMIN,
    ("PUT", "/v1/hosts/{host}/inventory"): Need.HOST,
    ("POST", "/v1/hosts/{host}/heartbeat"): Need.HOST,
    ("POST", "/v1/reports"): Need.ADMIN,
    ("GET", "/v1/hosts/{host}/work"): Need.HOST,
    ("POST", "/v1/hosts/{host}/work"): Need.HOST,
    ("GET", "/v1/devices"): Need.OPERATOR,
    ("GET", "/v1/devices/{device_id}"): Need.OPERATOR,
    ("POST", "/v1/devices/{device_id}/clear"): Need.ADMIN,
    # taints (an agent: its own host's devices)
    ("GET", "/v1/taints"): Need.OPERATOR,
    ("POST", "/v1/devices/{device_id}/taints"): Need.OPERATOR,
    ("DELETE", "/v1/devices/{device_id}/taints"): Need.OPERATOR,
    ("POST", "/v1/hosts/{host}/taints"): Need.HOST,
    ("DELETE", "/v1/hosts/{host}/taints"): Need.HOST,
    # requests and allocations
    ("POST", "/v1/claims"): Need.TENANT,
    ("POST", "/v1/explain"): Need.TENANT,
    ("GET", "/v1/capacity"): Need.TENANT,
    ("POST", "/v1/capacity"): Need.TENANT,
    ("POST", "/v1/gangs"): Need.TENANT,
    ("POST", "/v1/gangs/explain"): Need.TENANT,
    ("DELETE", "/v1/gangs/{gang}"): Need.TENANT,
    ("GET", "/v1/allocations"): Need.ANY,
    ("GET", "/v1/allocations/{consumer}"): Need.ANY,
    ("DELETE", "/v1/allocations/{consumer}"): Need.TENANT,
    ("GET", "/v1/allocations/{consumer}/libvirt"): Need.ANY,
    ("POST", "/v1/allocations/{consumer}/moves"): Need.TENANT,
    ("GET", "/v1/allocations/{consumer}/moves"): Need.TENANT,
    ("GET", "/v1/allocations/{consumer}/moves/libvirt"): Need.TENANT,
    ("POST", "/v1/allocations/{consumer}/moves/commit"): Need.TENANT,
    ("POST", "/v1/allocations/{consumer}/moves/abort"): Need.TENANT,
    ("GET", "/v1/events"): Need.ANY,
    ("GET", "/v1/events/stream"): Need.ANY,
    ("GET", "/v1/quotas"): Need.TENANT,
    ("PUT", "/v1/quotas/{project}/{type_name}"): Need.ADMIN,
    # Cyborg's API for Nova (server/cyborg.py): version discovery is public, as Cyborg's
    ("GET", "/accelerator/v2"): Need.PUBLIC,
    ("GET", "/accelerator/v2/device_profiles"): Need.ANY,
    ("POST", "/accelerator/v2/device_profiles"): Need.ADMIN,
    ("GET", "/accelerator/v2/device_profiles/{profile}"): Need.ANY,
    ("DELETE", "/accelerator/v2/device_profiles/{profile}"): Need.ADMIN,
    ("GET", "/accelerator/v2/accelerator_requests"): Need.ADMIN,
    ("POST", "/accelerator/v2/accelerator_requests"): Need.ADMIN,
    ("PATCH", "/accelerator/v2/accelerator_requests"): Need.ADMIN,
    ("DELETE", "/accelerator/v2/accelerator_requests"): Need.ADMIN,
    ("GET", "/accelerator/v2/accelerator_requests/{arq}"): Need.ADMIN,
    # operations
    ("GET", "/v1/audit"): Need.ADMIN,
    ("POST", "/v1/audit/fix"): Need.ADMIN,
    # tokens
    ("POST", "/v1/tokens"): Need.ADMIN,
    ("GET", "/v1/tokens"): Need.ADMIN,
    ("DELETE", "/v1/tokens/{token_id}"): Need.ADMIN,
    ("POST", "/v1/tokens/{token_id}/login-link"): Need.ADMIN,
    # the dashboard
    ("GET", "/"): Need.PUBLIC,
    ("GET", "/ui/login"): Need.PUBLIC,
    ("POST", "/ui/login"): Need.PUBLIC,
    ("GET", "/ui/login/once"): Need.PUBLIC,
    ("POST", "/ui/login/once"): Need.PUBLIC,
    ("POST", "/ui/logout"): Need.PUBLIC,
    ("GET", "/ui/"): Need.ANY,
    ("GET", "/ui/hosts"): Need.OPERATOR,
    ("GET", "/ui/hosts/{host}"): Need.HOST,
    ("GET", "/ui/devices"): Need.OPERATOR,
    ("GET", "/ui/devices/{device_id}"): Need.OPERATOR,
    ("GET", "/ui/allocations"): Need.ANY,
    ("GET", "/ui/events"): Need.ANY,
    ("GET", "/ui/explain"): Need.TENANT,
    # the dashboard's live updates: its stream, the parts of pages it re-renders, its script
    ("GET", "/ui/events/stream"): Need.ANY,
    ("GET", "/ui/fragments/overview"): Need.ANY,
    ("GET", "/ui/fragments/hosts"): Need.OPERATOR,
    ("GET", "/ui/fragments/hosts/{host}"): Need.HOST,
    ("GET", "/ui/fragments/devices/{device_id}"): Need.OPERATOR,
    ("GET", "/ui/fragments/events"): Need.ANY,
    ("GET", "/ui/static/live.js"): Need.PUBLIC,
}

_ADMITS: dict[Need, frozenset[Role]] = {
    Need.ANY: frozenset(Role) - {Role.MONITOR},
    Need.TENANT: frozenset({Role.ADMIN, Role.MEMBER}),
    Need.OPERATOR: frozenset({Role.ADMIN, Role.AGENT}),
    Need.HOST: frozenset({Role.ADMIN, Role.AGENT}),
    Need.ADMIN: frozenset({Role.ADMIN}),
    Need.MONITOR: frozenset({Role.ADMIN, Role.MONITOR}),
}
_WHO = {
    Need.TENANT: "an admin or a member token",
    Need.OPERATOR: "an admin or an agent token",
    Need.HOST: "an admin token or the agent token of this host",
    Need.ADMIN: "an admin token",
    Need.ANY: "a token of an admin, an agent or a member (a monitor token reads only /metrics)",
    Need.MONITOR: "an admin or a monitor token (`devassign token create --role monitor`)",
}


class LoginRequired(Exception):
    """A dashboard page without a usable token: answered with a redirect to the login form."""

    def __init__(self, message: str = "", *, stale: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.stale = stale  # a cookie was sent but is no longer valid: clear it


def forbidden(message: str) -> errors.DevassignError:
    return errors.DevassignError(errors.FORBIDDEN, message)


@dataclass(frozen=True, slots=True)
class Scope:
    """What one caller may read: all of it (admin), one project (member) or one host (agent).

    Handlers never look at roles themselves; they ask the scope for the filter to apply, so a
    member's ``?project=other`` or an agent's ``?host=other`` is refused the same way everywhere.
    """

    principal: Principal

    @property
    def role(self) -> Role:
        return self.principal.role

    @property
    def actor(self) -> str:
        return self.principal.name

    @property
    def project(self) -> str | None:
        """The one project a member is limited to (None: not limited to one)."""
        return (self.principal.project or "") if self.role is Role.MEMBER else None

    @property
    def host(self) -> str | None:
        """The one host an agent is limited to (None: not limited to one)."""
        return self.principal.host if self.role is Role.AGENT else None

    @property
    def infrastructure(self) -> bool:
        """Whether host names, device ids and addresses beyond the caller's own are visible."""
        return self.role is Role.ADMIN

    @property
    def operator(self) -> bool:
        """Admins and agents see hosts and devices (agents: their own); members do not."""
        return self.role is not Role.MEMBER

    def host_filter(self, asked: str | None) -> str | None:
        """The host a listing is limited to: the agent's own, whatever it asked for."""
        if self.role is Role.MEMBER and asked:
            raise forbidden("members do not see hosts: leave out the host filter")
        if self.host is None:
            return asked
        if asked and asked != self.host:
            raise forbidden(f"the agent of host {self.host!r} sees only its own host, not {asked!r}")
        return self.host

    def project_filter(self, asked: str | None) -> str | None:
        """The project a listing is limited to: the member's own, whatever it asked for. A name
        that cannot be a project is a 400, not an empty list that looks like "no such rows"."""
        if asked is not None:
            check_project(asked)
        if self.project is None:
            return asked
        if asked and asked != self.project:
            raise forbidden(f"a member of project {self.project!r} sees only its own project, not {asked!r}")
        return self.project

    def sees_host(self, host: str) -> bool:
        return self.host is None or self.host == host

    def check_targets(self, hosts: list[str]) -> None:
        """Members place requests anywhere the scheduler chooses; naming hosts is for operators."""
        if hosts and self.role is Role.MEMBER:
            raise forbidden("members cannot name hosts in a request: leave out hosts")


def one_header(request: Request, name: str) -> str:
    """The request's one ``name`` header ("" where none), for those that say who is calling
    (a credential, an agent process's id). Two are a 400: a proxy or a policy check in front
    of the server may read the other one (the last, or both joined) and see another caller than
    the server would, as with a repeated JSON key."""
    found = request.headers.getlist(name)
    if len(found) > 1:
        raise errors.DevassignError(
            errors.INVALID_REQUEST, f"{len(found)} {name.title()} headers: send one, in one header"
        )
    return found[0] if found else ""


async def _principal(request: Request, *, cookie: bool) -> Principal:
    """The caller from ``Authorization: Bearer`` (and, for dashboard pages, the login cookie).

    Async so that a cached token costs no trip through the thread pool; only a cache miss reads
    the database, in a worker thread. The API never reads the cookie (no cross-site requests).
    """
    state = request.app.state
    if not state.settings.auth:
        _check_local_name(request)
        return ANONYMOUS_ADMIN
    secret = ""
    if cookie:
        secret = request.cookies.get(COOKIE, "").strip()
    if not secret:
        scheme, _, given = one_header(request, "authorization").partition(" ")
        if scheme.lower() == "bearer":
            secret = given.strip()
    if not secret and request.url.path.startswith("/accelerator/"):
        # Nova (keystoneauth) sends its token as OpenStack does: X-Auth-Token.
        secret = one_header(request, "x-auth-token").strip()
    if not secret:
        if cookie:
            raise LoginRequired()
        raise errors.DevassignError(
            errors.UNAUTHENTICATED,
            "send a token: `Authorization: Bearer TOKEN` (create one with `devassign token create`)",
        )
    if not cookie and secret.startswith(SESSION_PREFIX):
        # A dashboard session lives in an HttpOnly cookie; it never stands in for an API token.
        raise errors.DevassignError(
            errors.UNAUTHENTICATED, "a dashboard session is not an API token: send an API token"
        )
    tokens = state.tokens
    known, found = tokens.cached(secret)
    if not known:
        found = await run_in_threadpool(tokens.get, secret)
    if found is None and request.url.path.startswith("/accelerator/"):
        found = await _keystone_principal(request, secret)
    if found is None:
        if cookie:
            raise LoginRequired("that token is unknown or was revoked; sign in again", stale=True)
        raise errors.DevassignError(errors.UNAUTHENTICATED, "unknown or revoked token")
    principal: Principal = found
    return principal


async def _keystone_principal(request: Request, secret: str) -> Principal | None:
    """Nova's Keystone tokens on the Cyborg API, when a Keystone is configured
    (``openstack/keystone.py``): the user's in X-Auth-Token, Nova's in X-Service-Token."""
    from devassign.openstack.keystone import KeystoneUnavailable, for_app

    keystone = for_app(request.app.state)
    if keystone is None:
        return None
    try:
        return await run_in_threadpool(
            keystone.principal, secret, one_header(request, "x-service-token") or None
        )
    except KeystoneUnavailable as exc:
        raise errors.DevassignError(
            errors.UNAUTHENTICATED, f"cannot validate the Keystone token now ({exc}); retry"
        ) from exc


COOKIE = "devassign_token"


_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def cross_site(request: Request) -> bool:
    """Sent by a browser from another site's page: the browser says so in ``Sec-Fetch-Site``,
    or, for older browsers, in an ``Origin`` that is not this server's. Programs send neither."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site not in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin == "null"
    return origin != f"{request.url.scheme}://{request.url.netloc}"


def _check_local_name(request: Request) -> None:
    """With auth off, answer only requests addressed to an IP address or a name of one label
    (``localhost``, the machine's short name): a web page whose DNS name is made to point at
    this machine (DNS rebinding, a name of the attacker's domain, so never of one label) would
    otherwise read and change everything, as the admin every caller is."""
    name = (request.url.hostname or "").rstrip(".").lower()
    if "." not in name or name.endswith(".localhost"):
        return
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        raise forbidden(
            f"with authentication off this server answers only requests addressed to an IP "
            f"address or a one-label name such as localhost, not to {name[:80]!r}: use the "
            "address, or run the server with tokens (without --no-auth)"
        ) from None


async def authorize(request: Request) -> Scope:
    """The route's rule from :data:`POLICY`, applied before its handler; the caller's scope."""
    route = request.scope.get("route")
    path = route.path if isinstance(route, APIRoute) else request.url.path
    need = POLICY.get(("GET" if request.method == "HEAD" else request.method, path))
    if need is None:  # create_app refuses such routes; this is the last guard
        raise forbidden(f"{request.method} {path} is not in the access table")
    is_page = path == "/" or path.startswith("/ui")
    if need is Need.PUBLIC:
        return Scope(NOBODY)
    if request.method not in _SAFE_METHODS and not is_page and cross_site(request):
        # A browser sends a POST from any page without asking first (no preflight for a body
        # without a type); with auth off, or a token a page could hold, that page would act.
        raise forbidden(
            f"{request.method} {path} was sent by a browser from another site's page: call the API "
            "from a program (curl, the CLI, a client library), not from a web page"
        )
    principal = await _principal(request, cookie=is_page)
    request.state.viewer = principal
    if principal.role not in _ADMITS[need]:
        hint = "; members see resource types and their own project's allocations, not hosts or devices"
        raise forbidden(
            f"this needs {_WHO[need]}; {principal.name} is {_describe(principal)}"
            + (hint if need in (Need.OPERATOR, Need.HOST) else "")
        )
    if need is Need.HOST and principal.role is Role.AGENT:
        host = request.path_params.get("host")
        if host != principal.host:
            raise forbidden(
                f"only an admin or the agent of host {host!r} may do this; "
                f"{principal.name} is {_describe(principal)}"
            )
    return Scope(principal)


def _describe(p: Principal) -> str:
    if p.role is Role.AGENT:
        return f"the agent of host {p.host!r}"
    if p.role is Role.MEMBER:
        return f"a member of project {p.project!r}"
    return f"a {p.role.value} token" if p.role is Role.MONITOR else p.role.value


Access = Annotated[Scope, Depends(authorize)]


def route_keys(routes: list[BaseRoute], prefix: str = "") -> list[tuple[str, str]]:
    """(method, path) of every route an application serves (HEAD is GET's).

    Recent FastAPI keeps an included router as one entry (``original_router``) instead of
    copying its routes into the application's list; both forms are walked.
    """
    keys: list[tuple[str, str]] = []
    for route in routes:
        if isinstance(route, Route):
            keys.extend((m, prefix + route.path) for m in sorted(route.methods or ()) if m != "HEAD")
        included = getattr(route, "original_router", None)
        if included is not None:
            context = getattr(route, "include_context", None)
            keys.extend(route_keys(included.routes, prefix + (getattr(context, "prefix", "") or "")))
    return keys


def check_table(app: FastAPI) -> None:
    """Refuse to start an application with a route the access table does not name."""
    missing = [f"{m} {p}" for m, p in route_keys(app.routes) if (m, p) not in POLICY]
    if missing:
        raise RuntimeError(f"routes without an access rule in devassign.server.access.POLICY: {missing}")
