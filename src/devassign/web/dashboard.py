"""Every dashboard route on one screen: ``/`` and ``/ui/...``, server-rendered HTML.

Handlers are thin, like the API's: the access table (``server/access.py``) admits the viewer
and gives its scope, the same scoped reads as the API (``server/views.py``) fetch the models,
and a page function renders them. They are plain ``def`` so the synchronous store runs in the
thread pool. Errors become HTML pages, not JSON, through :class:`PageRoute`.

Live pages: a page names its event stream (``/ui/events/stream``, the API's stream read with
the dashboard's cookie and the same scope) and its live parts, each with a fragment route
(``/ui/fragments/...``) that renders that part alone, through the same scoped reads as the
page. ``static/live.js`` (``/ui/static/live.js``) replaces the parts as events come.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from devassign import errors, schemas
from devassign.domain import DeviceState, Role
from devassign.server import stream, views
from devassign.server.access import Access, Scope, cross_site
from devassign.store import Principal, Store
from devassign.web import explain as explain_page
from devassign.web import pages
from devassign.web.assets import LIVE_JS, LIVE_JS_PATH
from devassign.web.layout import bare_page, error_box, live_part, login_form, page
from devassign.web.markup import Html, join, tag, url
from devassign.web.session import (
    COOKIE,
    LoginRequired,
    auth_on,
    end_session,
    exchange_code,
    keep_signed_in,
    lookup,
    safe_next,
)

OVERVIEW_REFRESH_SECONDS = 10  # a browser without scripts reloads the overview this often
# Pages are never shown inside another site's frame (clickjacking); scripts come only from this
# server's own files (never inline, so markup that slipped through escaping cannot run), and
# they talk only to this server.
CSP = "frame-ancestors 'none'; script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'"
FRAMING = {"X-Frame-Options": "DENY", "Content-Security-Policy": CSP}
# A fragment says it is one: live.js takes nothing else (a sign-in form after a redirect).
FRAGMENT = {"Cache-Control": "no-store", "X-Devassign-Fragment": "1"}
CROSS_SITE = "sign in from this dashboard's own page: a form posted from another site is refused"


OVERVIEW_EVENTS = 15


class PageRoute(APIRoute):
    """A route whose failures are pages: a login redirect, or an HTML error with the API's status."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        inner = super().get_route_handler()

        async def handler(request: Request) -> Response:
            response = await answer(request)
            response.headers.update(FRAMING)
            return response

        async def answer(request: Request) -> Response:
            try:
                return await inner(request)
            except LoginRequired as exc:
                here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                target = url("/ui/login", next=here, expired="1" if exc.stale else None)
                response = RedirectResponse(target, status_code=303)
                if exc.stale:
                    response.delete_cookie(COOKIE, path="/")
                return response
            except errors.DevassignError as exc:
                return _error(request, exc.status, f"{exc.message} [{exc.code}]")
            except RequestValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
                    for e in exc.errors()
                )
                return _error(request, 400, f"bad query: {problems}")

        return handler


router = APIRouter(route_class=PageRoute, include_in_schema=False)


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _page(
    request: Request, scope: Scope, title: str, body: Html, *, active: str = "", **kw: Any
) -> HTMLResponse:
    """A whole page for ``scope``'s viewer; ``live=STREAM`` makes its live parts follow events."""
    return _html(request, scope.principal, title, body, active=active, **kw)


def _html(
    request: Request, who: Principal, title: str, body: Html, *, active: str = "", **kw: Any
) -> HTMLResponse:
    status = kw.pop("status", 200)
    document = page(title, body, viewer=who, auth=auth_on(request), active=active, **kw)
    return HTMLResponse(document, status_code=status, headers={"Cache-Control": "no-store"})


def _error(request: Request, status: int, message: str) -> HTMLResponse:
    who: Principal | None = getattr(request.state, "viewer", None)
    body = join([tag("h1", "Cannot show this page"), error_box(message)])
    if who is None:
        return HTMLResponse(bare_page("Error", body), status_code=status)
    return _html(request, who, "Error", body, status=status)


# ---------------------------------------------------------------- overview


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


def _fragment(body: Html) -> HTMLResponse:
    return HTMLResponse(body, headers=FRAGMENT)


def _stream(newest: list[schemas.Event], **filters: str | None) -> str:
    """A page's event stream, from the newest event the page was made with, so that nothing
    written between the page and its stream is missed."""
    return url("/ui/events/stream", **filters, after=newest[0].id if newest else 0)


def _overview(request: Request, scope: Scope) -> tuple[Html, list[schemas.Event]]:
    store = _store(request)
    hosts: list[schemas.Host] | None = None
    counts: tuple[int, int] | None = None
    allocations: list[schemas.Allocation] | None = None
    if scope.operator:
        hosts = views.list_hosts(store, scope, limit=pages.OVERVIEW_HOSTS)
        counts = views.count_hosts(store, scope)
    else:
        allocations = views.list_allocations(store, scope, limit=50)
    events = views.list_events(store, scope, limit=OVERVIEW_EVENTS)
    body = pages.overview(
        views.list_types(store, scope),
        store.clock(),
        hosts=hosts,
        events=events,
        allocations=allocations,
        host_counts=counts,
    )
    return body, events


@router.get("/ui/")
def overview(request: Request, scope: Access) -> HTMLResponse:
    body, events = _overview(request, scope)
    return _page(
        request,
        scope,
        "Overview",
        live_part("/ui/fragments/overview", body),
        active="overview",
        refresh=OVERVIEW_REFRESH_SECONDS,
        live=_stream(events),
    )


@router.get("/ui/fragments/overview")
def overview_fragment(request: Request, scope: Access) -> HTMLResponse:
    return _fragment(_overview(request, scope)[0])


# ---------------------------------------------------------------- hosts and devices


HostAfter = Annotated[str | None, Query(max_length=253)]


def _hosts_listing(request: Request, scope: Scope, after: str | None) -> Html:
    """A page of hosts by name (keyset: ``after`` the last name of the page before)."""
    store = _store(request)
    found = views.list_hosts(store, scope, limit=pages.HOSTS_PER_PAGE + 1, after=after or None)
    total = views.count_hosts(store, scope)[0]
    return pages.hosts_listing(found, store.clock(), after=after or None, total=total)


@router.get("/ui/hosts")
def hosts(request: Request, scope: Access, after: HostAfter = None) -> HTMLResponse:
    store = _store(request)
    listing = _hosts_listing(request, scope, after)
    body = join([tag("h1", "Hosts"), live_part(url("/ui/fragments/hosts", after=after or None), listing)])
    live = _stream(views.list_events(store, scope, limit=1))
    return _page(request, scope, "Hosts", body, active="hosts", live=live)


@router.get("/ui/fragments/hosts")
def hosts_fragment(request: Request, scope: Access, after: HostAfter = None) -> HTMLResponse:
    return _fragment(_hosts_listing(request, scope, after))


def _host(request: Request, scope: Scope, host: str) -> tuple[Html, list[schemas.Event]]:
    store = _store(request)
    found = views.get_host(store, scope, host)
    devices = views.list_devices(store, scope, host=host, limit=100_000)
    events = views.list_events(store, scope, host=host, limit=OVERVIEW_EVENTS)
    return pages.host_page(found, devices, events, store.clock()), events


@router.get("/ui/hosts/{host}")
def host(request: Request, scope: Access, host: str) -> HTMLResponse:
    body, events = _host(request, scope, host)
    fragment = url(f"/ui/fragments/hosts/{host}")
    live = _stream(events, host=host)
    return _page(request, scope, f"Host {host}", live_part(fragment, body), active="hosts", live=live)


@router.get("/ui/fragments/hosts/{host}")
def host_fragment(request: Request, scope: Access, host: str) -> HTMLResponse:
    return _fragment(_host(request, scope, host)[0])


@router.get("/ui/devices")
def devices(
    request: Request,
    scope: Access,
    host: str | None = None,
    type: str | None = None,
    state: str | None = None,
    offset: Annotated[int, Query(ge=0, le=schemas.MAX_INT64)] = 0,
) -> HTMLResponse:
    host, type, state = host or None, type or None, state or None
    if state is not None and state not in {s.value for s in DeviceState}:
        raise errors.DevassignError(
            errors.INVALID_REQUEST, f"{state!r} is not a state: {', '.join(s.value for s in DeviceState)}"
        )
    store = _store(request)
    found = views.list_devices(
        store, scope, host=host, type=type, state=state, limit=pages.DEVICES_PER_PAGE + 1, offset=offset
    )
    body = pages.devices_page(
        found,
        host=host,
        type=type,
        state=state,
        offset=offset,
        type_names=store.type_names(),
    )
    return _page(request, scope, "Devices", body, active="devices")


Before = Annotated[int | None, Query(ge=0, le=schemas.MAX_INT64)]


def _device(
    request: Request, scope: Scope, device_id: str, before: int | None
) -> tuple[Html, schemas.Device]:
    store = _store(request)
    found = views.get_device(store, scope, device_id)
    history = views.list_events(store, scope, device=found.id, before=before, limit=pages.EVENTS_PER_PAGE + 1)
    return pages.device_page(found, history, before=before), found


@router.get("/ui/devices/{device_id}")
def device(request: Request, scope: Access, device_id: str, before: Before = None) -> HTMLResponse:
    """The device and its history, paged; the newest page follows the device's host's events."""
    body, found = _device(request, scope, device_id, before)
    title = f"Device {found.address}"
    if before is not None:
        return _page(request, scope, title, body, active="devices")
    newest = views.list_events(_store(request), scope, host=found.host, limit=1)
    fragment = url(f"/ui/fragments/devices/{found.id}")
    live = _stream(newest, host=found.host)
    return _page(request, scope, title, live_part(fragment, body), active="devices", live=live)


@router.get("/ui/fragments/devices/{device_id}")
def device_fragment(request: Request, scope: Access, device_id: str) -> HTMLResponse:
    return _fragment(_device(request, scope, device_id, None)[0])


# ---------------------------------------------------------------- allocations and events


@router.get("/ui/allocations")
def allocations(
    request: Request,
    scope: Access,
    consumer: str | None = None,
    host: str | None = None,
    project: str | None = None,
    released: bool = False,
) -> HTMLResponse:
    found = views.list_allocations(
        _store(request),
        scope,
        consumer=consumer or None,
        host=host or None,
        project=project or None,
        include_released=released,
        limit=1000,
    )
    body = pages.allocations_page(
        found, consumer=consumer, host=host, project=project, released=released, operator=scope.operator
    )
    return _page(request, scope, "Allocations", body, active="allocations")


@router.get("/ui/events")
def events(
    request: Request,
    scope: Access,
    host: str | None = None,
    device: str | None = None,
    consumer: str | None = None,
    before: Before = None,
) -> HTMLResponse:
    """The event log, paged; the newest page follows the stream with the same filters."""
    host, device, consumer = host or None, device or None, consumer or None
    found = views.list_events(
        _store(request),
        scope,
        limit=pages.EVENTS_PER_PAGE + 1,
        host=host,
        device=device,
        consumer=consumer,
        before=before,
    )
    filters = {"host": host, "device": device, "consumer": consumer}
    newest = before is None
    body = pages.events_page(
        found,
        **filters,
        before=before,
        operator=scope.operator,
        live=url("/ui/fragments/events", **filters) if newest else None,
    )
    live = _stream(found, **filters) if newest else None
    return _page(request, scope, "Events", body, active="events", live=live)


@router.get("/ui/fragments/events")
def events_fragment(
    request: Request,
    scope: Access,
    host: str | None = None,
    device: str | None = None,
    consumer: str | None = None,
) -> HTMLResponse:
    host, device, consumer = host or None, device or None, consumer or None
    found = views.list_events(
        _store(request), scope, limit=pages.EVENTS_PER_PAGE + 1, host=host, device=device, consumer=consumer
    )
    listing = pages.events_list(
        found, host=host, device=device, consumer=consumer, before=None, operator=scope.operator
    )
    return _fragment(listing)


@router.get("/ui/events/stream")
async def events_stream(
    request: Request,
    scope: Access,
    host: str | None = None,
    device: str | None = None,
    consumer: str | None = None,
    after: Before = None,
    once: bool = False,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """``GET /v1/events/stream`` for the dashboard: the same stream and scope, signed in by the
    dashboard's cookie (the API never reads it)."""
    return await stream.respond(
        request,
        scope,
        host=host or None,
        device=device or None,
        consumer=consumer or None,
        after=after,
        once=once,
        last_event_id=last_event_id,
    )


@router.get(LIVE_JS_PATH)
def live_js() -> Response:
    """The dashboard's script; its URL in the pages carries a hash of its text."""
    headers = {"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"}
    return Response(LIVE_JS, media_type="text/javascript; charset=utf-8", headers=headers)


# ---------------------------------------------------------------- explain


@router.get("/ui/explain")
def explain(request: Request, scope: Access, specs: str | None = None, hosts: str = "") -> HTMLResponse:
    """Runs the placer's explain for the form's request; nothing is claimed."""
    found: dict[str, Any] | None = None
    error: str | None = None
    addresses: dict[str, str] = {}
    if specs is not None:
        try:
            body = explain_page.claim_body(specs, hosts)
            found = views.explain(request.app.state.placer, scope, body)
            if found is not None and scope.operator:
                addresses = _addresses(_store(request), scope, found)
        except explain_page.FormError as exc:
            error = str(exc)
        except errors.DevassignError as exc:
            error = f"{exc.message} [{exc.code}]"
        except ValidationError as exc:
            error = "; ".join(str(e.get("msg", "invalid")) for e in exc.errors())
    content = explain_page.page(
        specs or "", hosts, found, error, operator=scope.operator, addresses=addresses
    )
    return _page(request, scope, "Explain", content, active="explain", status=400 if error else 200)


def _addresses(store: Store, scope: Scope, found: dict[str, Any]) -> dict[str, str]:
    """Device id -> address for the placements shown, so people read addresses, not UUIDs."""
    out: dict[str, str] = {}
    for p in found.get("placements", [])[: explain_page.PLACEMENTS_SHOWN]:
        devices = views.list_devices(store, scope, host=p["host"], limit=100_000)
        out.update((d.id, d.address) for d in devices)
    return out


# ---------------------------------------------------------------- login


@router.get("/ui/login")
def login_page(request: Request, next: str = "/ui/", expired: str | None = None) -> Response:
    if not auth_on(request):
        return RedirectResponse("/ui/", status_code=303)
    message = "your token is unknown or was revoked; sign in again" if expired else None
    return HTMLResponse(bare_page("Sign in", login_form(safe_next(next), message)))


@router.post("/ui/login")
async def login(request: Request) -> Response:
    """Check the pasted token like the API would, then keep it in an HttpOnly cookie."""
    if cross_site(request):
        return HTMLResponse(bare_page("Sign in", login_form("/ui/", CROSS_SITE)), status_code=403)
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    secret = (form.get("token") or [""])[0].strip()
    target = safe_next((form.get("next") or ["/ui/"])[0])
    if not auth_on(request):
        return RedirectResponse(target, status_code=303)
    found = await run_in_threadpool(lookup, request, secret) if secret else None
    if found is None:
        error = "that token is unknown or revoked" if secret else "paste a token"
        return HTMLResponse(bare_page("Sign in", login_form(target, error)), status_code=401)
    if found.role is Role.MONITOR:
        error = "a monitor token reads only /metrics: sign in with an admin, agent or member token"
        return HTMLResponse(bare_page("Sign in", login_form(target, error)), status_code=403)
    response = RedirectResponse(target, status_code=303)
    keep_signed_in(request, response, secret)
    return response


LINK_REFUSED = (
    "this sign-in link is unknown, used or expired: a link works once, within 10 minutes. "
    "Ask an admin for a new one (devassign token login-link ID), or paste a token."
)


@router.get("/ui/login/once")
def login_once_page(request: Request, code: str = "") -> Response:
    """A one-time sign-in link: a page whose button spends the code (a POST).

    Opening the link spends nothing: chat and mail services fetch a link to preview it, and a
    link spent by its preview would leave its reader "used or expired" and the previewer with
    a 12-hour session.
    """
    if not auth_on(request):
        return RedirectResponse("/ui/", status_code=303)
    headers = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
    if not code:
        return HTMLResponse(bare_page("Sign in", login_form("/ui/", LINK_REFUSED)), headers=headers)
    form = tag(
        "form",
        tag("input", type="hidden", name="code", value=code[:200]),
        tag("button", "sign in", type="submit", class_="primary"),
        method="post",
        action="/ui/login/once",
        class_="filters",
    )
    said = tag("p", "This one-time link signs this browser in to the dashboard.")
    body = join([tag("h1", "Sign in"), said, form])
    return HTMLResponse(bare_page("Sign in", body), headers=headers)


@router.post("/ui/login/once")
async def login_once(request: Request) -> Response:
    """The code of a one-time sign-in link becomes a dashboard session of its token, once.

    The dashboard follows with a ``Refresh`` to ``/ui/`` rather than a redirect, so that the
    page it lands on is reached from this site (the SameSite=Strict cookie is sent to it).
    """
    if not auth_on(request):
        return RedirectResponse("/ui/", status_code=303)
    if cross_site(request):
        return HTMLResponse(bare_page("Sign in", login_form("/ui/", CROSS_SITE)), status_code=403)
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    code = (form.get("code") or [""])[0]
    session = await run_in_threadpool(exchange_code, request, code) if code else None
    headers = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
    if session is None:
        return HTMLResponse(bare_page("Sign in", login_form("/ui/", LINK_REFUSED)), headers=headers)
    body = join(
        [tag("h1", "Signed in"), tag("p", "Going to ", tag("a", "the dashboard", href="/ui/"), "...")]
    )
    response = HTMLResponse(bare_page("Signed in", body), headers={**headers, "Refresh": "0; url=/ui/"})
    keep_signed_in(request, response, session)
    return response


@router.post("/ui/logout")
def logout(request: Request) -> Response:
    if cross_site(request):
        return HTMLResponse(bare_page("Sign out", login_form("/ui/", CROSS_SITE)), status_code=403)
    end_session(request)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response
