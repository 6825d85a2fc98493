"""The audit over HTTP (admins): what is inconsistent, and the safe repairs.

``GET`` only reads; ``POST .../fix`` repairs what the audit may repair (counts, overdue
reservations), each repair an event. The checks are in ``store/audit.py``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request

from devassign import schemas
from devassign.server.access import Access
from devassign.server.jsonbody import StrictJsonRoute
from devassign.store import Store

router = APIRouter(route_class=StrictJsonRoute, prefix="/v1")

DownFor = Annotated[
    int,
    Query(
        ge=0,
        le=365 * 24 * 3600,
        description="Seconds a host must have been silent (or a move pending) before it counts",
    ),
]


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


@router.get("/audit", response_model=schemas.AuditReport, tags=["operations"])
def audit(request: Request, scope: Access, down_for: DownFor = 3600) -> schemas.AuditReport:
    """Every inconsistency found, each with its check and whether ``fix`` repairs it."""
    return _store(request).audit(down_for=timedelta(seconds=down_for))


@router.post("/audit/fix", response_model=schemas.AuditReport, tags=["operations"])
def audit_fix(request: Request, scope: Access, down_for: DownFor = 3600) -> schemas.AuditReport:
    """The audit, with the safe repairs made in the same transaction (``repaired: true``)."""
    return _store(request).audit(down_for=timedelta(seconds=down_for), repair=True, actor=scope.actor)
