"""Routes for moving a consumer's allocation to another host (live or cold migration).

``POST /v1/allocations/{consumer}/moves`` places the consumer's stored request on the named
host with the ordinary placer and claim, holding the target devices while the source stays;
``.../moves/commit`` makes them the consumer's allocation and releases the source;
``.../moves/abort`` releases them; ``GET .../moves`` shows the newest move (store/moves.py).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import Field, ValidationError

from devassign import errors, schemas
from devassign.domain import HOST_RE
from devassign.scheduler import ClaimBody, HostView, Snapshot
from devassign.server import views
from devassign.server.access import Access, Scope
from devassign.server.jsonbody import StrictJsonRoute
from devassign.server.lifecycle import xml_response
from devassign.server.placement import Placer
from devassign.store import ClaimContext, Store
from devassign.store.claims import ClaimOrder
from devassign.store.moves import Move, MoveReplay, is_internal, new_target_consumer

router = APIRouter(route_class=StrictJsonRoute, prefix="/v1")


class MoveStart(schemas.Strict):
    """A move's start; NUL and the like in the key refused as a claim's are (schemas.Strict)."""

    host: str = Field(min_length=1, max_length=253, description="The host to move to")
    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="Resend with the same key to get the same move",
    )


class _MoveClaims(Store):
    """The store as the placer sees it for one move: its claim records the move in the same
    transaction. The quota counts the consumer's own devices as given back: once committed it
    holds the target's instead of the source's (``quotas.move_quota_refusal``, in the start)."""

    def __init__(
        self, base: Store, consumer: str, key: str | None, held: Mapping[str, int], source_id: int
    ) -> None:
        self.__dict__.update(vars(base))  # the same database, clock and settings
        self.consumer = consumer
        self.key = key
        self.source_id = source_id  # the allocation whose request placed the move
        self.held = held  # the source's devices per type
        self.move: Move | None = None

    def prepare_claim(self, **kwargs: Any) -> ClaimContext:
        """The scheduler sees the quota the move will be checked against (:meth:`quota`)."""
        ctx = super().prepare_claim(**kwargs)
        limits, usage = self._as_moved(ctx.limits, ctx.usage)
        return dataclasses.replace(ctx, limits=limits, usage=usage)

    def quota(self, project: str) -> tuple[dict[str, int], dict[str, int]]:
        """Read afresh when the move's start lost the quota to a concurrent claim: as moved."""
        return self._as_moved(*super().quota(project))

    def _as_moved(
        self, limits: Mapping[str, int], usage: Mapping[str, int]
    ) -> tuple[dict[str, int], dict[str, int]]:
        """Of a type the source holds, the move may take as many as the source has (even over a
        lowered limit), or more within the limit once the source's are given back."""
        moved = {t: n - self.held.get(t, 0) for t, n in usage.items()}
        return {t: max(n, usage.get(t, 0)) for t, n in limits.items()}, moved

    def claim(self, order: ClaimOrder) -> tuple[schemas.Allocation, bool]:
        allocation, self.move = self.start_move(
            dataclasses.replace(order, check_quota=False), self.consumer, self.key, self.source_id
        )
        return allocation, True


def _store(request: Request, consumer: str) -> Store:
    """The store, for a client's consumer (a move's own target is not one)."""
    if is_internal(consumer):
        raise errors.DevassignError(
            errors.INVALID_REQUEST,
            f"{consumer!r} holds the devices of a move; name the consumer being moved instead",
        )
    store: Store = request.app.state.store
    return store


def _json(move: Move, status: int) -> Response:
    return Response(move.model_dump_json(), status_code=status, media_type="application/json")


@router.post(
    "/allocations/{consumer}/moves",
    response_model=Move,
    status_code=201,
    tags=["allocations"],
    responses={
        200: {"model": Move, "description": "a replay: the move already started with this key"},
        409: {"description": "the host cannot hold the request (the body says why), or a move is pending"},
    },
)
def start_move(request: Request, scope: Access, consumer: str, body: MoveStart) -> Any:
    """Hold devices on ``host`` matching the consumer's request while its allocation stays."""
    store = _store(request, consumer)
    views.get_allocation(store, scope, consumer)  # another project's consumer is a 404
    placer: Placer = request.app.state.placer
    try:
        move, created = place_move(store, placer, scope, consumer, body.host, body.idempotency_key)
    except errors.DevassignError as exc:
        raise views.public_refusal(scope, exc) from None
    return _json(move, 201 if created else 200)


# Fields of an allocation's request document that are not the claim's: its gang (whose
# layout the move's start checks: store/moves.py).
_NOT_A_CLAIM = frozenset({"gang", "gang_size", "gang_layout"})


def place_move(
    store: Store, placer: Placer, scope: Scope, consumer: str, host: str, key: str | None
) -> tuple[Move, bool]:
    """Start a move of ``consumer`` to ``host`` with the placer and the claim: (the move,
    whether this call started it; False: a replay). Refusals are not yet redacted for members."""
    if not HOST_RE.fullmatch(host):
        raise errors.DevassignError(errors.INVALID_REQUEST, f"host: {host!r} is not a host name")
    replay = store.move_replay(consumer, key, host)
    if replay is not None:
        return replay, False
    doc, project, source_id, known = store.move_source(consumer, host)
    # A gang's instance keeps its gang (the commit copies the source's request document back);
    # the claim that places the target is the instance's own request.
    request = {k: v for k, v in doc.items() if k not in _NOT_A_CLAIM}
    try:
        claim = ClaimBody.model_validate(
            {**request, "consumer": consumer, "project": project, "hosts": [host], "idempotency_key": None}
        )
    except ValidationError as exc:
        raise errors.DevassignError(
            errors.INVALID_STATE,
            f"the stored request of {consumer} is no longer a valid claim ({exc.errors()[0]['msg']}); "
            "release and claim it again",
        ) from None
    claim = claim.model_copy(update={"consumer": new_target_consumer()})
    if not known:
        if scope.operator:
            raise errors.DevassignError(errors.HOST_NOT_FOUND, f"no host {host!r} to move to")
        raise _refused_to_member(placer, claim, scope, consumer, host)
    held = Counter(d.type for d in store.get_allocation(consumer, project).devices)
    placing = _MoveClaims(store, consumer, key, held, source_id)
    try:
        Placer(placing, placer.config).claim(claim, scope.principal, stored=True)
    except MoveReplay as replayed:
        return replayed.move, False
    except errors.DevassignError as exc:
        # A gang's layout is checked on a real host only, and says what that host has (its
        # rack): to a member it is one more host that cannot hold the request.
        # So is a quota the target's choice alone passes (a first_available alternative only a
        # real host with room would take): a made-up host never gets that far.
        hidden = (errors.GANG_LAYOUT, errors.QUOTA_EXCEEDED)
        if exc.code == errors.NO_VALID_HOST or (exc.code in hidden and not scope.operator):
            if not scope.operator:
                raise _refused_to_member(placer, claim, scope, consumer, host) from None
            raise _why_not(placer, claim, scope, consumer, host, exc) from None
        raise
    assert placing.move is not None
    return placing.move, True


def _refused_to_member(
    placer: Placer, claim: ClaimBody, scope: Scope, consumer: str, host: str
) -> errors.DevassignError:
    """A member's refused move, the same whatever the host: made up, down, tainted or full.

    Why a host does not fit (down, its taints and their reasons, what it has free) is the
    operators' to know; a member told it could also tell real host names from made-up ones.
    So the answer is the explanation of a host with no devices, which says what the request
    needs and nothing of the host."""
    empty = Snapshot((HostView(host, ()),))
    explained = placer.explain(claim, scope.principal, snapshot=empty)
    explained["taints"] = []  # the cloud's taints: nothing a move to one host needs to know
    return errors.DevassignError(
        errors.NO_VALID_HOST, f"{host} cannot hold {consumer}'s request", explanation=explained
    )


def _why_not(
    placer: Placer, claim: ClaimBody, scope: Scope, consumer: str, host: str, exc: errors.DevassignError
) -> errors.DevassignError:
    """The refusal, saying why the target host (looked at whatever its state) does not fit."""
    try:
        explained = placer.explain(claim, scope.principal)
    except errors.DevassignError:
        return exc
    why = "; ".join(h["message"] for h in explained["hosts"] if not h["fits"])
    if explained["fits"] or not why:  # freed meanwhile, or taken by concurrent claims
        why = exc.message.partition(": ")[2]
    return errors.DevassignError(
        errors.NO_VALID_HOST, f"{host} cannot hold {consumer}'s request: {why}", explanation=explained
    )


@router.get("/allocations/{consumer}/moves", response_model=list[Move], tags=["allocations"])
def list_moves(request: Request, scope: Access, consumer: str) -> Any:
    """The consumer's moves, newest first: a pending one is the first (empty: never moved)."""
    store = _store(request, consumer)
    views.get_allocation(store, scope, consumer)
    return [m.model_dump(mode="json") for m in store.list_moves(consumer)]


@router.get(
    "/allocations/{consumer}/moves/libvirt",
    tags=["allocations"],
    response_class=Response,
    responses={200: {"content": {"application/xml": {}}}},
)
def move_libvirt_xml(request: Request, scope: Access, consumer: str) -> Response:
    """The ``<hostdev>`` / ``<interface type='hostdev'>`` elements of the devices the consumer's
    pending move holds on its target host: the destination's domain XML, before the commit."""
    store = _store(request, consumer)
    views.get_allocation(store, scope, consumer)
    return xml_response(consumer, store.move_target_devices(consumer))


@router.post("/allocations/{consumer}/moves/commit", response_model=Move, tags=["allocations"])
def commit_move(request: Request, scope: Access, consumer: str) -> Any:
    """The target devices become the consumer's allocation; the source's go to cleaning.
    Twice is harmless (the committed move again)."""
    store = _store(request, consumer)
    views.get_allocation(store, scope, consumer)
    move, _ = store.commit_move(consumer, scope.actor)
    return _json(move, 200)


@router.post("/allocations/{consumer}/moves/abort", response_model=Move, tags=["allocations"])
def abort_move(request: Request, scope: Access, consumer: str) -> Any:
    """The target devices go to cleaning; the consumer stays where it is. Twice is harmless."""
    store = _store(request, consumer)
    views.get_allocation(store, scope, consumer)
    move, _ = store.abort_move(consumer, scope.actor)
    return _json(move, 200)
