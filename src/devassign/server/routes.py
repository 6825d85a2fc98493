"""Every inventory route on one screen (Placement's ROUTE_DECLARATIONS).

Handlers are thin: validate (Pydantic), read through the caller's scope or call the store,
return a model. Who may call each route is declared in ``server/access.py``, not here.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from devassign import errors, schemas
from devassign.domain import EVENTS_PAGE_MAX, HOST_RE, DeviceState
from devassign.server import views
from devassign.server.access import Access, one_header
from devassign.server.jsonbody import StrictJsonRoute
from devassign.store import Store

router = APIRouter(route_class=StrictJsonRoute, prefix="/v1")
TOTAL_HEADER = "X-Total-Count"  # a listing's full size, on each page


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


# ---------------------------------------------------------------- resource types


@router.get("/resource-types", response_model=list[schemas.ResourceType], tags=["types"])
def list_types(request: Request, scope: Access) -> list[schemas.ResourceType]:
    """The catalog with device counts per state (every role may read it)."""
    return views.list_types(_store(request), scope)


@router.post("/resource-types", response_model=schemas.ResourceType, status_code=201, tags=["types"])
def create_type(request: Request, scope: Access, body: schemas.ResourceTypeCreate) -> schemas.ResourceType:
    return _store(request).create_type(body, scope.actor)


@router.get("/resource-types/{name}", response_model=schemas.ResourceType, tags=["types"])
def get_type(request: Request, scope: Access, name: str) -> schemas.ResourceType:
    return views.get_type(_store(request), scope, name)


@router.patch("/resource-types/{name}", response_model=schemas.ResourceType, tags=["types"])
def update_type(
    request: Request, scope: Access, name: str, body: schemas.ResourceTypeUpdate
) -> schemas.ResourceType:
    return _store(request).update_type(name, body, scope.actor)


@router.delete("/resource-types/{name}", status_code=204, tags=["types"])
def delete_type(request: Request, scope: Access, name: str) -> Response:
    _store(request).delete_type(name, scope.actor)
    return Response(status_code=204)


# ---------------------------------------------------------------- hosts


@router.get(
    "/hosts",
    response_model=list[schemas.Host],
    tags=["hosts"],
    responses={
        200: {
            "headers": {
                TOTAL_HEADER: {"description": "how many hosts there are", "schema": {"type": "integer"}},
                "Link": {"description": 'the next page: `<URL>; rel="next"`', "schema": {"type": "string"}},
            }
        }
    },
)
def list_hosts(
    request: Request,
    response: Response,
    scope: Access,
    limit: Annotated[
        int | None, Query(ge=1, le=100_000, description="at most this many; default all")
    ] = None,
    after: Annotated[str | None, Query(max_length=253, description="hosts named after this")] = None,
) -> list[schemas.Host]:
    """Hosts by name. With ``limit``, a page: the next one is ``after=`` the last name, linked
    in ``Link: <...>; rel="next"`` while there are more; ``X-Total-Count`` counts them all."""
    store = _store(request)
    found = views.list_hosts(store, scope, limit=None if limit is None else limit + 1, after=after)
    response.headers[TOTAL_HEADER] = str(views.count_hosts(store, scope)[0])
    if limit is not None and len(found) > limit:
        found = found[:limit]
        following = request.url.include_query_params(limit=limit, after=found[-1].name)
        response.headers["Link"] = f'<{following}>; rel="next"'
    return found


@router.get("/hosts/{host}", response_model=schemas.Host, tags=["hosts"])
def get_host(
    request: Request,
    scope: Access,
    host: str,
    host_id: Annotated[
        str | None,
        Query(
            max_length=64,
            description="An agent's proof: the host's id is shown to an agent only where it names it "
            "(its state file's), as a renamed host's agent confirms the rename",
        ),
    ] = None,
) -> schemas.Host:
    return views.get_host(_store(request), scope, host, proof=host_id)


@router.delete("/hosts/{host}", status_code=204, tags=["hosts"])
def delete_host(
    request: Request,
    scope: Access,
    host: str,
    force: Annotated[
        bool,
        Query(description="Also while its agent is heard from (it would register the host again)"),
    ] = False,
) -> Response:
    """Forget a host whose devices are all free (a decommissioned or reinstalled machine)."""
    _store(request).delete_host(host, scope.actor, force=force)
    return Response(status_code=204)


@router.post("/hosts/{host}/rename", response_model=schemas.Host, tags=["hosts"])
def rename_host(request: Request, scope: Access, host: str, body: schemas.HostRename) -> schemas.Host:
    """The same machine under a new name (an event); its agent needs a token for the new name."""
    return _store(request).rename_host(host, body.new_name, scope.actor)


@router.put("/hosts/{host}/inventory", response_model=schemas.InventoryResult, tags=["hosts"])
def report_inventory(
    request: Request, scope: Access, host: str, body: schemas.InventoryReport
) -> schemas.InventoryResult:
    """An agent's full report: replaces the host's device list, idempotently."""
    _check_host_name(host)
    return _store(request).apply_report(host, body, scope.actor, by_agent=scope.host is not None)


@router.post("/reports", response_model=schemas.ReportBatchResult, tags=["hosts"])
def report_batch(request: Request, scope: Access, body: schemas.ReportBatch) -> schemas.ReportBatchResult:
    """Many hosts' reports at once (loading a fleet): each is applied as its own ``PUT
    /v1/hosts/{host}/inventory`` would be and answered on its own (``status``, ``result`` or
    ``error``); hosts never seen before are registered together, in one transaction."""
    return _store(request).apply_reports(body.reports, scope.actor)


@router.post("/hosts/{host}/heartbeat", status_code=204, tags=["hosts"])
def heartbeat(request: Request, scope: Access, host: str, body: schemas.Heartbeat | None = None) -> Response:
    """The host is alive; ``host_id`` (optional) must be the host's own (409 ``host_id_mismatch``)."""
    instance = one_header(request, schemas.AGENT_INSTANCE_HEADER) or None
    host_id = body.host_id if body is not None else None
    _store(request).heartbeat(host, scope.actor, instance, host_id, by_agent=scope.host is not None)
    return Response(status_code=204)


def _check_host_name(host: str) -> None:
    if not HOST_RE.fullmatch(host):
        raise errors.DevassignError(
            errors.INVALID_REQUEST,
            f"{host!r} is not a host name: letters, digits, _ . - (up to 253)",
        )


# ---------------------------------------------------------------- devices


@router.get("/devices", response_model=list[schemas.Device], tags=["devices"])
def list_devices(
    request: Request,
    response: Response,
    scope: Access,
    host: str | None = None,
    type: str | None = None,
    state: DeviceState | None = None,
    address: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
    offset: Annotated[int, Query(ge=0, le=schemas.MAX_INT64)] = 0,
    after: Annotated[
        str | None,
        Query(max_length=512, description="devices after HOST/ADDRESS (the order is host, address)"),
    ] = None,
) -> list[schemas.Device]:
    """Devices by host name and address. A page ends where ``limit`` says; the next one is
    ``after=HOST/ADDRESS`` of its last device (linked in ``Link: <...>; rel="next"`` while a page
    is full), which costs the same on every page, where a large ``offset`` reads every device
    before it."""
    keyset = None
    if after is not None:
        after_host, sep, after_address = after.partition("/")
        if not sep or not after_address:
            raise errors.DevassignError(
                errors.INVALID_REQUEST,
                f"after={after[:80]!r}: give HOST/ADDRESS, the host name and the address of the last "
                "device of the page before (e.g. compute-1/0000:3b:02.1)",
            )
        keyset = (after_host, after_address)
    found = views.list_devices(
        _store(request),
        scope,
        host=host,
        type=type,
        state=state.value if state else None,
        address=address,
        limit=limit,
        offset=offset,
        after=keyset,
    )
    if len(found) == limit:
        last = found[-1]
        following = request.url.remove_query_params("offset").include_query_params(
            limit=limit, after=f"{last.host}/{last.address}"
        )
        response.headers["Link"] = f'<{following}>; rel="next"'
    return found


@router.get("/devices/{device_id}", response_model=schemas.Device, tags=["devices"])
def get_device(request: Request, scope: Access, device_id: str) -> schemas.Device:
    return views.get_device(_store(request), scope, device_id)


# ---------------------------------------------------------------- allocations and events


@router.get("/allocations", response_model=list[schemas.Allocation], tags=["allocations"])
def list_allocations(
    request: Request,
    scope: Access,
    consumer: str | None = None,
    host: str | None = None,
    project: str | None = None,
    include_released: bool = False,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
) -> list[schemas.Allocation]:
    return views.list_allocations(
        _store(request),
        scope,
        consumer=consumer,
        host=host,
        project=project,
        include_released=include_released,
        limit=limit,
    )


@router.get("/allocations/{consumer}", response_model=schemas.Allocation, tags=["allocations"])
def get_allocation(request: Request, scope: Access, consumer: str) -> schemas.Allocation:
    return views.get_allocation(_store(request), scope, consumer)


@router.get("/events", response_model=list[schemas.Event], tags=["events"])
def list_events(
    request: Request,
    scope: Access,
    host: str | None = None,
    device: str | None = None,
    consumer: str | None = None,
    before: Annotated[int | None, Query(ge=0, le=schemas.MAX_INT64)] = None,
    limit: Annotated[int, Query(ge=1, le=EVENTS_PAGE_MAX)] = 100,
) -> list[schemas.Event]:
    """Newest first; ``before`` (an event id) pages back."""
    return views.list_events(
        _store(request), scope, host=host, device=device, consumer=consumer, before=before, limit=limit
    )


# ---------------------------------------------------------------- tokens


@router.post("/tokens", response_model=schemas.TokenCreated, status_code=201, tags=["tokens"])
def create_token(request: Request, scope: Access, body: schemas.TokenCreate) -> schemas.TokenCreated:
    """A new token; its secret is in this answer only (the server keeps a hash)."""
    return _store(request).create_token(body, scope.actor)


@router.get("/tokens", response_model=list[schemas.Token], tags=["tokens"])
def list_tokens(request: Request, scope: Access, revoked: bool = False) -> list[schemas.Token]:
    """Tokens without their secrets; ``revoked=true`` lists revoked ones too."""
    return _store(request).list_tokens(revoked=revoked)


@router.delete("/tokens/{token_id}", response_model=schemas.Token, tags=["tokens"])
def revoke_token(request: Request, scope: Access, token_id: int) -> schemas.Token:
    """Revoke a token at once on this server; other replicas stop honouring it within 10 s
    (their token cache)."""
    if not 1 <= token_id <= schemas.MAX_INT32:
        raise errors.DevassignError(errors.TOKEN_NOT_FOUND, f"no token {token_id}")
    revoked = _store(request).revoke_token(token_id, scope.actor)
    request.app.state.tokens.forget()
    return revoked


class LoginLink(schemas.Strict):
    """A one-time sign-in link to the dashboard."""

    url: str
    expires_at: str  # when the link stops working (ISO 8601, UTC)


@router.post("/tokens/{token_id}/login-link", response_model=LoginLink, status_code=201, tags=["tokens"])
def create_login_link(request: Request, scope: Access, token_id: int) -> LoginLink:
    """A link that signs a browser in to the dashboard as this token, once, within 10 minutes.
    The code in it is in this answer only (the server keeps a hash)."""
    if not 1 <= token_id <= schemas.MAX_INT32:
        raise errors.DevassignError(errors.TOKEN_NOT_FOUND, f"no token {token_id}")
    code, expires_at = _store(request).create_login_code(token_id, scope.actor)
    url = f"{str(request.base_url).rstrip('/')}/ui/login/once?code={code}"
    return LoginLink(url=url, expires_at=expires_at.isoformat())
