"""Routes for gangs: claim N instances all or none, explain, release (``server/gangs.py``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from devassign import errors
from devassign.server import metrics
from devassign.server.access import Access
from devassign.server.gangs import GangAllocations, GangBody, Gangs
from devassign.server.jsonbody import StrictJsonRoute
from devassign.server.placement import Placer
from devassign.store import Store

router = APIRouter(route_class=StrictJsonRoute, prefix="/v1")


def _gangs(request: Request) -> Gangs:
    gangs: Gangs | None = getattr(request.app.state, "gangs", None)
    placer: Placer = request.app.state.placer
    if gangs is None or gangs.placer is not placer:
        gangs = request.app.state.gangs = Gangs(placer)
    return gangs


@router.post(
    "/gangs",
    response_model=GangAllocations,
    status_code=201,
    tags=["claims"],
    responses={
        200: {"model": GangAllocations, "description": "a replay: the gang's allocations already made"},
        409: {"description": "not every instance can be placed; none is claimed, the body says why"},
    },
)
def claim_gang(request: Request, scope: Access, body: GangBody) -> Any:
    """Claim every instance of the body (one allocation each) or none: 201, 200 for a replay."""
    scope.check_targets(body.hosts)
    started = metrics.claim_started()
    try:
        found, created = _gangs(request).claim(body, scope.principal, operator=scope.operator)
    except errors.DevassignError as exc:
        metrics.gang_refused(started, exc)
        raise
    metrics.gang_answered(started, created, len(found.allocations))
    return Response(
        found.model_dump_json(), status_code=201 if created else 200, media_type="application/json"
    )


@router.post("/gangs/explain", tags=["claims"])
def explain_gang(request: Request, scope: Access, body: GangBody) -> dict[str, Any]:
    """Would the gang fit now, on which hosts, and why not: nothing claimed."""
    scope.check_targets(body.hosts)
    return _gangs(request).explain(body, scope.principal, operator=scope.operator)


@router.delete("/gangs/{gang}", status_code=204, tags=["allocations"])
def release_gang(request: Request, scope: Access, gang: str, project: str | None = None) -> Response:
    """Release every live allocation of the gang in one transaction (each goes to cleaning).
    Gang ids are per project: a member releases its own project's gang; an admin names the
    project with ``?project=`` when the id names live gangs of several (400 otherwise)."""
    store: Store = request.app.state.store
    project = scope.project_filter(project)
    if len(gang) > 64:
        raise errors.DevassignError(errors.NOT_FOUND, f"no live allocations of gang {gang[:64]!r}...")
    store.release_gang(gang, project, scope.actor)
    return Response(status_code=204)
