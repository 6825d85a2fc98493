"""Every inventory route on one screen (Placement's ROUTE_DECLARATIONS).

Handlers are thin: authorize, validate (Pydantic), call the store, return a model.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from devassign import errors, schemas
from devassign.domain import HOST_RE, DeviceState, Role
from devassign.server.auth import (
    Caller,
    project_scope,
    require_admin,
    require_host,
    require_operator,
)
from devassign.store import Store

router = APIRouter(prefix="/v1")


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


# ---------------------------------------------------------------- resource types


@router.get("/resource-types", response_model=list[schemas.ResourceType], tags=["types"])
def list_types(request: Request, caller: Caller) -> list[schemas.ResourceType]:
    """The catalog with device counts per state (every role may read it)."""
    return _store(request).list_types()


@router.post("/resource-types", response_model=schemas.ResourceType, status_code=201, tags=["types"])
def create_type(request: Request, caller: Caller, body: schemas.ResourceTypeCreate) -> schemas.ResourceType:
    require_admin(caller)
    return _store(request).create_type(body, caller.name)


@router.get("/resource-types/{name}", response_model=schemas.ResourceType, tags=["types"])
def get_type(request: Request, caller: Caller, name: str) -> schemas.ResourceType:
    return _store(request).get_type(name)


@router.patch("/resource-types/{name}", response_model=schemas.ResourceType, tags=["types"])
def update_type(
    request: Request, caller: Caller, name: str, body: schemas.ResourceTypeUpdate
) -> schemas.ResourceType:
    require_admin(caller)
    return _store(request).update_type(name, body, caller.name)


@router.delete("/resource-types/{name}", status_code=204, tags=["types"])
def delete_type(request: Request, caller: Caller, name: str) -> Response:
    require_admin(caller)
    _store(request).delete_type(name, caller.name)
    return Response(status_code=204)


# ---------------------------------------------------------------- hosts


@router.get("/hosts", response_model=list[schemas.Host], tags=["hosts"])
def list_hosts(request: Request, caller: Caller) -> list[schemas.Host]:
    require_operator(caller)
    found = _store(request).list_hosts()
    if caller.role is Role.AGENT:
        found = [h for h in found if h.name == caller.host]
    return found


@router.get("/hosts/{host}", response_model=schemas.Host, tags=["hosts"])
def get_host(request: Request, caller: Caller, host: str) -> schemas.Host:
    require_operator(caller)
    if caller.role is Role.AGENT:
        require_host(caller, host)
    return _store(request).get_host(host)


@router.delete("/hosts/{host}", status_code=204, tags=["hosts"])
def delete_host(request: Request, caller: Caller, host: str) -> Response:
    """Forget a host whose devices are all free (e.g. a reinstalled machine)."""
    require_admin(caller)
    _store(request).delete_host(host, caller.name)
    return Response(status_code=204)


@router.put("/hosts/{host}/inventory", response_model=schemas.InventoryResult, tags=["hosts"])
def report_inventory(
    request: Request, caller: Caller, host: str, body: schemas.InventoryReport
) -> schemas.InventoryResult:
    """An agent's full report: replaces the host's device list, idempotently."""
    require_host(caller, host)
    _check_host_name(host)
    return _store(request).apply_report(host, body, caller.name)


@router.post("/hosts/{host}/heartbeat", status_code=204, tags=["hosts"])
def heartbeat(request: Request, caller: Caller, host: str) -> Response:
    require_host(caller, host)
    _store(request).heartbeat(host, caller.name)
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
    caller: Caller,
    host: str | None = None,
    type: str | None = None,
    state: DeviceState | None = None,
    address: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
    offset: Annotated[int, Query(ge=0, le=schemas.MAX_INT64)] = 0,
) -> list[schemas.Device]:
    require_operator(caller)
    if caller.role is Role.AGENT:
        host = caller.host
    return _store(request).list_devices(
        host=host,
        type=type,
        state=state.value if state else None,
        address=address,
        limit=limit,
        offset=offset,
    )


@router.get("/devices/{device_id}", response_model=schemas.Device, tags=["devices"])
def get_device(request: Request, caller: Caller, device_id: str) -> schemas.Device:
    require_operator(caller)
    device = _store(request).get_device(device_id)
    if caller.role is Role.AGENT:
        require_host(caller, device.host)
    return device


# ---------------------------------------------------------------- allocations and events


@router.get("/allocations", response_model=list[schemas.Allocation], tags=["allocations"])
def list_allocations(
    request: Request,
    caller: Caller,
    consumer: str | None = None,
    host: str | None = None,
    project: str | None = None,
    include_released: bool = False,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
) -> list[schemas.Allocation]:
    scope = project_scope(caller)
    if caller.role is Role.AGENT:
        host = caller.host
    return _store(request).list_allocations(
        consumer=consumer,
        host=host,
        project=scope if scope is not None else project,
        include_released=include_released,
        limit=limit,
    )


@router.get("/allocations/{consumer}", response_model=schemas.Allocation, tags=["allocations"])
def get_allocation(request: Request, caller: Caller, consumer: str) -> schemas.Allocation:
    allocation = _store(request).get_allocation(consumer, project_scope(caller))
    if caller.role is Role.AGENT:
        require_host(caller, allocation.host)
    return allocation


@router.get("/events", response_model=list[schemas.Event], tags=["events"])
def list_events(
    request: Request,
    caller: Caller,
    host: str | None = None,
    device: str | None = None,
    consumer: str | None = None,
    before: Annotated[int | None, Query(ge=0, le=schemas.MAX_INT64)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> list[schemas.Event]:
    """Newest first; ``before`` (an event id) pages back."""
    filters: dict[str, object] = {
        "host": host,
        "device": device,
        "consumer": consumer,
        "before": before,
        "limit": limit,
    }
    if caller.role is Role.MEMBER:
        filters["host"] = None
        filters["consumers_of_project"] = caller.project
    elif caller.role is Role.AGENT:
        filters["host"] = caller.host
    return _store(request).list_events(**filters)


# ---------------------------------------------------------------- tokens


@router.post("/tokens", response_model=schemas.TokenCreated, status_code=201, tags=["tokens"])
def create_token(request: Request, caller: Caller, body: schemas.TokenCreate) -> schemas.TokenCreated:
    """A new token; its secret is in this answer only (the server keeps a hash)."""
    require_admin(caller)
    return _store(request).create_token(body, caller.name)


@router.get("/tokens", response_model=list[schemas.Token], tags=["tokens"])
def list_tokens(request: Request, caller: Caller, revoked: bool = False) -> list[schemas.Token]:
    """Tokens without their secrets; ``revoked=true`` lists revoked ones too."""
    require_admin(caller)
    return _store(request).list_tokens(revoked=revoked)


@router.delete("/tokens/{token_id}", response_model=schemas.Token, tags=["tokens"])
def revoke_token(request: Request, caller: Caller, token_id: int) -> schemas.Token:
    """Revoke a token at once on this server; other replicas stop honouring it within 10 s
    (their token cache)."""
    require_admin(caller)
    if not 1 <= token_id <= schemas.MAX_INT32:
        raise errors.DevassignError(errors.TOKEN_NOT_FOUND, f"no token {token_id}")
    revoked = _store(request).revoke_token(token_id, caller.name)
    request.app.state.tokens.forget()
    return revoked
