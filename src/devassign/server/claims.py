"""Routes for requests: claim, explain, capacity, release, quotas."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field, StrictInt, ValidationError

from devassign import errors, schemas
from devassign.domain import Role, check_project
from devassign.failpoints import failpoint
from devassign.scheduler import ClaimBody
from devassign.server import metrics, views
from devassign.server.access import Access
from devassign.server.jsonbody import StrictJsonRoute
from devassign.server.placement import CapacityPage, Placer
from devassign.store import Store

router = APIRouter(route_class=StrictJsonRoute, prefix="/v1")


def _placer(request: Request) -> Placer:
    placer: Placer = request.app.state.placer
    return placer


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


@router.post(
    "/claims",
    response_model=schemas.Allocation,
    status_code=201,
    tags=["claims"],
    responses={
        200: {"model": schemas.Allocation, "description": "a replay: the allocation already made"},
        409: {"description": "no host can hold the request; the body says why"},
    },
)
def claim(request: Request, scope: Access, body: ClaimBody) -> Any:
    """Place and claim in one call: 201 with the allocation, 200 for a replay of the same claim."""
    scope.check_targets(body.hosts)
    started = metrics.claim_started()
    try:
        allocation, created = _placer(request).claim(body, scope.principal)
    except errors.DevassignError as exc:
        metrics.claim_refused(started, exc)
        raise views.public_refusal(scope, exc) from None
    metrics.claim_answered(started, created)
    failpoint("claim.after_commit")
    # Serialized here, once: the model is already valid, and FastAPI's response_model path
    # would validate it again (response_model stays for the OpenAPI document).
    return Response(
        allocation.model_dump_json(), status_code=201 if created else 200, media_type="application/json"
    )


@router.post("/explain", tags=["claims"])
def explain(request: Request, scope: Access, body: ClaimBody) -> dict[str, Any]:
    """Would the request fit, where, and why not: the claim's body, nothing claimed."""
    return views.explain(_placer(request), scope, body)


_LIMIT = "Count a page of at most this many candidate hosts (with after=: the next page)"
_AFTER = "The cursor of the page to count: the answer's next"
# A host id, and for a member's walk a signature of it: ``12345.0f3a...`` (server/views.py).
_CURSOR_LENGTH = 64


@router.get("/capacity", tags=["claims"])
def capacity(
    request: Request,
    scope: Access,
    spec: Annotated[list[str], Query(description="hardware_resource:TYPE=N, repeatable")],
    host: Annotated[list[str] | None, Query(description="Only these hosts")] = None,
    limit: Annotated[int | None, Query(ge=1, le=1000, description=_LIMIT)] = None,
    after: Annotated[str | None, Query(max_length=_CURSOR_LENGTH, description=_AFTER)] = None,
) -> dict[str, Any]:
    """How many more instances of the request the cloud can hold now, per host and in total."""
    from devassign.scheduler import RequestError, parse_specs

    try:
        requests = parse_specs(spec)
        body = ClaimBody(
            requests=[{"name": r.name, "type": r.first.type, "count": r.first.count} for r in requests],
            hosts=host or [],
        )
    except RequestError as exc:
        raise errors.DevassignError(exc.code.value, exc.message) from exc
    except ValidationError as exc:  # e.g. more than 1000 hosts
        problem = exc.errors()[0]
        where = ".".join(str(p) for p in problem["loc"]) or "query"
        raise errors.DevassignError(errors.INVALID_REQUEST, f"{where}: {problem['msg']}") from exc
    return views.capacity(_placer(request), scope, body, _page(limit, after))


@router.post("/capacity", tags=["claims"])
def capacity_of_request(
    request: Request,
    scope: Access,
    body: ClaimBody,
    limit: Annotated[int | None, Query(ge=1, le=1000, description=_LIMIT)] = None,
    after: Annotated[str | None, Query(max_length=_CURSOR_LENGTH, description=_AFTER)] = None,
) -> dict[str, Any]:
    """How many more instances of the request the cloud can hold now: the claim's body (its
    requests, selectors, constraints and hosts; consumer, project and params are not used)."""
    return views.capacity(_placer(request), scope, body, _page(limit, after))


def _page(limit: int | None, after: str | None) -> CapacityPage | None:
    """A capacity walk's page from the query, or None (every candidate host at once)."""
    if limit is None and after is None:
        return None
    if limit is None:
        raise errors.DevassignError(errors.INVALID_REQUEST, "after= pages through hosts: give limit= too")
    host_id, _, signature = (after or "").partition(".")
    if after is not None and not (
        host_id.isascii()
        and host_id.isdigit()
        and len(host_id) <= 20
        and (not signature or _HEX.fullmatch(signature))
    ):
        raise errors.DevassignError(
            errors.INVALID_REQUEST, f"after: {after!r} is not a cursor: give the next of the answer before"
        )
    # Host ids are 32-bit: a larger cursor is past every host (and would overflow the query).
    return CapacityPage(after=min(int(host_id or 0), 2**31 - 1), limit=limit, signature=signature or None)


_HEX = re.compile(r"[0-9a-f]{1,32}")


@router.delete("/allocations/{consumer}", status_code=204, tags=["allocations"])
def release(
    request: Request,
    scope: Access,
    consumer: str,
    host: Annotated[
        str | None,
        Query(
            description="Only if the devices are on this host (else 409 invalid_state, nothing "
            "released): a failed build's release never takes the devices of its retry elsewhere"
        ),
    ] = None,
) -> Response:
    """Release a consumer's devices (they go to cleaning); twice is harmless, unknown is 404."""
    store = _store(request)
    views.get_allocation(store, scope, consumer)
    if scope.principal.role is Role.MEMBER and store.bound_through_arqs(consumer):
        # Nova's claims are made in one project: a tenant holding a token of it must not
        # take the devices from under another tenant's running instance.
        raise errors.DevassignError(
            errors.FORBIDDEN,
            f"the devices of {consumer!r} are bound to a Nova instance through the accelerator API: "
            "deleting the instance releases them (an admin may release them)",
        )
    store.release(consumer, scope.actor, on_host=host)
    failpoint("release.after_commit")
    return Response(status_code=204)


class QuotaSet(BaseModel):
    model_config = {"extra": "forbid"}
    limit: StrictInt | None = Field(
        ge=0,
        le=schemas.MAX_INT32,
        description="Most devices of the type the project may hold; null: no limit",
    )


@router.put("/quotas/{project}/{type_name}", status_code=204, tags=["quotas"])
def set_quota(request: Request, scope: Access, project: str, type_name: str, body: QuotaSet) -> Response:
    check_project(project)
    _store(request).set_quota(project, type_name, body.limit, scope.actor)
    return Response(status_code=204)


@router.get("/quotas", tags=["quotas"])
def list_quotas(request: Request, scope: Access, project: str | None = None) -> list[dict[str, Any]]:
    return views.list_quotas(_store(request), scope, project)
