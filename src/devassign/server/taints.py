"""Taints: take devices, parents and hosts out of service (docs/operations.md, "Taking devices
and hosts out of service").

Admins taint anything; a host's agent taints its own host's devices (another host's device is
answered as if it did not exist, 404, and nothing changes) and lifts only the taints its
host's agents set (an operator's decision stays until an admin lifts it). Who may call each route is in
``server/access.py``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from devassign import errors, schemas
from devassign.server.access import Access, Scope
from devassign.server.jsonbody import StrictJsonRoute
from devassign.store import Store

router = APIRouter(route_class=StrictJsonRoute, prefix="/v1", tags=["taints"])

TaintId = Annotated[int | None, Query(ge=1, le=schemas.MAX_INT32, description="remove only this taint")]


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _own_device(store: Store, scope: Scope, device_id: str) -> None:
    """An agent acts on its own host's devices only: another's is not found."""
    if scope.host is not None and store.device_host(device_id) != scope.host:
        raise errors.DevassignError(errors.DEVICE_NOT_FOUND, f"no device with id {device_id!r}")


@router.get("/taints", response_model=list[schemas.Taint])
def list_taints(
    request: Request, scope: Access, host: str | None = None, device_id: str | None = None
) -> list[schemas.Taint]:
    """Active taints (an agent: its own host's)."""
    return _store(request).list_taints(host=scope.host_filter(host), device_id=device_id)


@router.post("/devices/{device_id}/taints", response_model=schemas.Taint, status_code=201)
def taint_device(request: Request, scope: Access, device_id: str, body: schemas.TaintCreate) -> schemas.Taint:
    store = _store(request)
    _own_device(store, scope, device_id)
    return store.add_taint(body, scope.actor, device_id=device_id, by_agent=scope.host is not None)


@router.delete("/devices/{device_id}/taints", response_model=list[schemas.Taint])
def untaint_device(
    request: Request, scope: Access, device_id: str, taint: TaintId = None
) -> list[schemas.Taint]:
    """Remove the device's own taints (or the one ``taint``); answers those removed."""
    store = _store(request)
    _own_device(store, scope, device_id)
    return store.remove_taints(scope.actor, device_id=device_id, taint_id=taint, agent=scope.host is not None)


@router.post("/hosts/{host}/taints", response_model=schemas.Taint, status_code=201)
def taint_host(request: Request, scope: Access, host: str, body: schemas.TaintCreate) -> schemas.Taint:
    """The whole host, or with ``parent`` that parent device and every device under it."""
    return _store(request).add_taint(body, scope.actor, host=host, by_agent=scope.host is not None)


@router.delete("/hosts/{host}/taints", response_model=list[schemas.Taint])
def untaint_host(
    request: Request,
    scope: Access,
    host: str,
    taint: TaintId = None,
    parent: Annotated[str | None, Query(max_length=256)] = None,
) -> list[schemas.Taint]:
    """Remove the host's taints: all of them (its devices' and parents' too), those of one
    ``parent``, or the one ``taint``; answers those removed."""
    return _store(request).remove_taints(
        scope.actor, host=host, parent=parent, taint_id=taint, agent=scope.host is not None
    )
