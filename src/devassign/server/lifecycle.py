"""Routes of the device lifecycle: agents fetch work and report results; admins clear
quarantined devices; anyone who may see an allocation gets its libvirt XML (who may call
each route: ``server/access.py``)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from devassign import errors, schemas
from devassign.lifecycle.base import LifecycleDevice
from devassign.lifecycle.libvirt import LibvirtXMLError, devices_xml
from devassign.server import metrics, views
from devassign.server.access import Access, one_header
from devassign.server.jsonbody import StrictJsonRoute
from devassign.store import Store

router = APIRouter(route_class=StrictJsonRoute, prefix="/v1")


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


@router.get("/hosts/{host}/work", response_model=schemas.WorkList, tags=["lifecycle"])
def get_work(request: Request, scope: Access, host: str) -> schemas.WorkList:
    """Devices of this host to set up (reserved) or clean (cleaning)."""
    instance = one_header(request, schemas.AGENT_INSTANCE_HEADER) or None
    return _store(request).work_for_host(host, instance, agent=scope.host is not None)


@router.post("/hosts/{host}/work", response_model=list[schemas.WorkOutcome], tags=["lifecycle"])
def post_results(
    request: Request, scope: Access, host: str, body: schemas.WorkResults
) -> list[schemas.WorkOutcome]:
    """Results of setups and cleanups; each moves its device on, or is ignored if stale."""
    pending = metrics.work_pending(_store(request), host, body.results)
    instance = one_header(request, schemas.AGENT_INSTANCE_HEADER) or None
    outcomes = _store(request).apply_work_results(
        host, body.results, scope.actor, instance, agent=scope.host is not None
    )
    metrics.work_done(pending, body.results, outcomes)
    return outcomes


@router.post("/devices/{device_id}/clear", response_model=schemas.Device, tags=["lifecycle"])
def clear(request: Request, scope: Access, device_id: str, body: schemas.DeviceClear) -> schemas.Device:
    """Let a quarantined device go (back through cleaning, or available for one-time-use types),
    vouch for an unhealthy one, or retire a missing one that is not held (removed)."""
    return _store(request).clear_device(device_id, body.reason, scope.actor)


@router.get(
    "/allocations/{consumer}/libvirt",
    tags=["allocations"],
    response_class=Response,
    responses={200: {"content": {"application/xml": {}}}},
)
def libvirt_xml(request: Request, scope: Access, consumer: str) -> Response:
    """The ``<hostdev>`` / ``<interface type='hostdev'>`` elements for the consumer's devices."""
    store = _store(request)
    views.get_allocation(store, scope, consumer)
    return xml_response(consumer, store.allocation_devices(consumer))


def xml_response(
    consumer: str, rows: list[tuple[schemas.Device, dict[str, object], dict[str, object]]]
) -> Response:
    """The libvirt XML of devices as the store gives them (each with its params and facts)."""
    devices = [LifecycleDevice.from_schema(d, params=params, facts=facts) for d, params, facts in rows]
    try:
        xml = devices_xml(devices)
    except LibvirtXMLError as exc:
        raise errors.DevassignError(
            errors.INVALID_STATE, f"cannot describe {consumer}'s devices: {exc}"
        ) from exc
    return Response(xml, media_type="application/xml")
