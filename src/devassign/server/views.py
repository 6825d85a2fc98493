"""Scoped reads: what a caller sees of hosts, devices, allocations, events, explain and capacity.

The API's handlers and the dashboard's pages both call these with the caller's
:class:`~devassign.server.access.Scope`, so "what may an agent of host A see" is answered in
one place. Something outside the scope is answered as if it did not exist (404), so ids of
other tenants' allocations or other hosts' devices cannot be probed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
from typing import Any

from devassign import errors, schemas
from devassign.scheduler import ClaimBody
from devassign.scheduler.reasons import TAINTED, effects_only, funnel_sentence
from devassign.server.access import Scope
from devassign.server.placement import CapacityPage, Placer
from devassign.store import Store


def list_types(store: Store, scope: Scope) -> list[schemas.ResourceType]:
    """The catalog with cloud-wide counts, for everyone; handler options only for admins."""
    return [_type_for(scope, t) for t in store.list_types()]


def get_type(store: Store, scope: Scope, name: str) -> schemas.ResourceType:
    return _type_for(scope, store.get_type(name))


def _type_for(scope: Scope, found: schemas.ResourceType) -> schemas.ResourceType:
    """A type's ``config`` is the operator's (scripts, drivers, policies): admins see it. Of its
    declared params, others see the values open to their own project, no other project's."""
    if scope.infrastructure:
        return found
    params = {name: spec.seen_by(scope.project) for name, spec in found.params.items()}
    return found.model_copy(update={"config": {}, "params": params})


def list_hosts(
    store: Store, scope: Scope, *, limit: int | None = None, after: str | None = None
) -> list[schemas.Host]:
    """Hosts by name (an agent: its own); ``limit`` after the name ``after``, or all."""
    return [
        _host_seen(scope, h) for h in store.list_hosts(limit=limit, after=after, only=scope.host_filter(None))
    ]


def _host_seen(scope: Scope, host: schemas.Host) -> schemas.Host:
    """A host without its host id for all but admins. The id is the machine's half of what
    makes an agent the host's (with the host's token): a machine holding a copy of the token,
    not the state file, read it from its own host's record and was then taken for the host."""
    return host if scope.infrastructure or host.host_id is None else host.model_copy(update={"host_id": None})


def count_hosts(store: Store, scope: Scope) -> tuple[int, int]:
    """(hosts the caller sees, of which up)."""
    return store.count_hosts(only=scope.host_filter(None))


def get_host(store: Store, scope: Scope, name: str, *, proof: str | None = None) -> schemas.Host:
    """``proof``: a host id the caller names; an agent is shown the host's only where it is
    that one (it tells the agent nothing it did not hold: a renamed host's agent confirms the
    rename so)."""
    if not scope.sees_host(name):
        raise errors.DevassignError(errors.HOST_NOT_FOUND, f"no host {name!r}")
    found = store.get_host(name)
    if proof is not None and found.host_id is not None and hmac.compare_digest(proof, found.host_id):
        return found
    return _host_seen(scope, found)


def list_devices(
    store: Store, scope: Scope, *, host: str | None = None, **filters: Any
) -> list[schemas.Device]:
    return store.list_devices(host=scope.host_filter(host), **filters)


def get_device(store: Store, scope: Scope, device_id: str) -> schemas.Device:
    device = store.get_device(device_id)
    if not scope.sees_host(device.host):
        # The store's words for an unknown id: another host's device is one that does not exist.
        raise errors.DevassignError(errors.DEVICE_NOT_FOUND, f"no device with id {device_id!r}")
    return device


def list_allocations(
    store: Store,
    scope: Scope,
    *,
    consumer: str | None = None,
    host: str | None = None,
    project: str | None = None,
    include_released: bool = False,
    limit: int = 1000,
) -> list[schemas.Allocation]:
    return store.list_allocations(
        consumer=consumer,
        host=scope.host_filter(host),
        project=scope.project_filter(project),
        include_released=include_released,
        limit=limit,
    )


def get_allocation(store: Store, scope: Scope, consumer: str) -> schemas.Allocation:
    """A member's own project's allocation, an agent's own host's, or any for an admin."""
    allocation = store.get_allocation(consumer, scope.project)
    if not scope.sees_host(allocation.host):
        # The store's words for a consumer that never held anything: an agent must not tell
        # another host's consumers from made-up ids.
        raise errors.DevassignError(errors.ALLOCATION_NOT_FOUND, f"consumer {consumer!r} holds no allocation")
    return allocation


def list_events(
    store: Store,
    scope: Scope,
    *,
    host: str | None = None,
    device: str | None = None,
    consumer: str | None = None,
    before: int | None = None,
    after: int | None = None,
    limit: int = 100,
) -> list[schemas.Event]:
    """Newest first (oldest first from ``after``, for the event stream): members see their
    project's consumers' events, agents their host's."""
    filters: dict[str, Any] = {
        "host": scope.host_filter(host),
        "device": device,
        "consumer": consumer,
        "before": before,
        "after": after,
        "limit": limit,
    }
    if scope.project is not None:
        filters["consumers_of_project"] = scope.project
    if scope.host is not None:
        filters["registered_host"] = True
    found = store.list_events(**filters)
    if scope.project is not None:
        return [_for_member(e) for e in found]
    return found if scope.host is None else [_for_agent(e) for e in found]


# What an agent's events leave out of their detail: a host's registered id (_host_seen).
_HIDDEN_FROM_AGENTS = frozenset({"host_id"})


def _for_member(event: schemas.Event) -> schemas.Event:
    """A member reads that its devices are drained, not why nor by whom: a taint's reason is
    an operator's or an agent's free text (hosts, racks, tickets), as in explanations."""
    if event.action != "drain_requested":
        return event
    reason = event.detail.get("reason")
    message = event.message.replace(f" ({reason})", "") if isinstance(reason, str) else event.message
    kept = {k: v for k, v in event.detail.items() if k == "devices"}
    return event.model_copy(update={"actor": "server", "message": message, "detail": kept})


# Events recorded on one host that name another: a move's (on its target) names its source
# host and the source's device ids and addresses.
_NAMES_ANOTHER_HOST = frozenset({"move_started", "move_committed", "move_aborted"})


def _for_agent(event: schemas.Event) -> schemas.Event:
    """An agent sees its own host's devices only: a move's event without its source; and no
    host id (:func:`_host_seen`)."""
    if _HIDDEN_FROM_AGENTS & event.detail.keys():
        # And from the message: a rename's said the id, before the id was the admins' alone.
        hidden = {str(event.detail[k]) for k in _HIDDEN_FROM_AGENTS if event.detail.get(k)}
        message = event.message
        for value in hidden:
            message = message.replace(f" (host id {value})", "").replace(value, "(an admin's to read)")
        event = event.model_copy(
            update={
                "message": message,
                "detail": {k: v for k, v in event.detail.items() if k not in _HIDDEN_FROM_AGENTS},
            }
        )
    if event.action not in _NAMES_ANOTHER_HOST:
        return event
    kept = {k: v for k, v in event.detail.items() if k in ("target", "reason")}
    what = event.action.removeprefix("move_")
    return event.model_copy(
        update={"message": f"{event.consumer}: a move onto this host {what}", "detail": kept}
    )


def list_quotas(store: Store, scope: Scope, project: str | None) -> list[dict[str, Any]]:
    return store.list_quotas(scope.project_filter(project))


# ---------------------------------------------------------------- the scheduler's answers


def explain(placer: Placer, scope: Scope, body: ClaimBody) -> dict[str, Any]:
    """Would it fit, where, and why not; a member learns why, but no host names or device ids."""
    scope.check_targets(body.hosts)
    found = placer.explain(body, scope.principal)
    return found if scope.operator else redact_explanation(found)


# The fewest hosts a member's capacity page counts (the most a page may count).
MEMBER_PAGE = 1000


def capacity(
    placer: Placer, scope: Scope, body: ClaimBody, page: CapacityPage | None = None
) -> dict[str, Any]:
    """How many more fit; the split per host is for operators. A member's page counts at least
    :data:`MEMBER_PAGE` hosts: pages of one host each were the per-host split by another way."""
    scope.check_targets(body.hosts)
    member = not scope.operator
    if page is not None and member:
        page = _member_page(placer, body, page)
    found = placer.capacity(body, scope.principal, page)
    if member:
        found.pop("per_host", None)
        if found.get("next") is not None:
            found["next"] = f"{found['next']}.{_cursor_signature(placer, body, int(found['next']))}"
    return found


def _member_page(placer: Placer, body: ClaimBody, page: CapacityPage) -> CapacityPage:
    """A member's page: :data:`MEMBER_PAGE` hosts, after a cursor the server gave for this
    request. A cursor of the member's own choosing was a host id, and the totals after two
    neighbouring ones differed by one host's capacity: so the cursor carries a signature of
    its host id and the request (what the walk counts), made with the server's key."""
    page = dataclasses.replace(page, limit=MEMBER_PAGE)
    if page.after and not (
        page.signature is not None
        and hmac.compare_digest(page.signature, _cursor_signature(placer, body, page.after))
    ):
        raise errors.DevassignError(
            errors.INVALID_REQUEST,
            "after: not a cursor this server gave for this request: give the next of the answer before, "
            "with the same request (or leave after out to start from the first page)",
        )
    return page


def _cursor_signature(placer: Placer, body: ClaimBody, host_id: int) -> str:
    """32 hex digits of HMAC-SHA256 over the host id and what shapes the walk's hosts."""
    shape = body.model_dump(mode="json", include={"requests", "constraints", "hosts", "extra_specs"})
    text = json.dumps([host_id, shape], sort_keys=True, separators=(",", ":"))
    return hmac.new(placer.store.cursor_key(), text.encode(), hashlib.sha256).hexdigest()[:32]


def redact_explanation(found: dict[str, Any]) -> dict[str, Any]:
    """An explanation without host names, device ids or addresses: counts and reason codes.

    The sentences of single hosts name parents and groups by address, so members get the
    reasons as codes with how many hosts each refused.
    """
    reasons: dict[str, int] = {}
    tainted: set[str] = set()
    for h in found.get("hosts", []):
        if h.get("reason"):
            reasons[h["reason"]] = reasons.get(h["reason"], 0) + 1
        # A taint's effect names no host or device: members read it; its reason is free text
        # (an operator's or a host agent's: host names, racks, tickets), for operators only.
        clause = TAINTED.search(h.get("message") or "")
        if clause:
            tainted.add(effects_only(clause.group(1)))
    # Where no host reached the scheduler, what the taints that held every one back are.
    tainted.update(effects_only(t) for t in found.get("taints", []))
    return {
        "summary": found.get("summary", ""),
        "fits": found.get("fits", False),
        "considered": found.get("considered", 0),
        "feasible": found.get("feasible", 0),
        "removed": found.get("removed", {}),
        "funnel": found.get("funnel", {}),
        "taints": [effects_only(t) for t in found.get("taints", [])],
        "policy": found.get("policy", {}),
        # Where no host was asked about one by one (a gang's plan), the counts the plan kept.
        "reasons": reasons or dict(found.get("removed") or {}),
        "closest": [{"reason": c.get("reason")} for c in found.get("closest", [])],
        "tainted": sorted(tainted),
    }


def public_refusal(scope: Scope, exc: errors.DevassignError) -> errors.DevassignError:
    """A claim's ``no_valid_host`` as a member may read it (no host names or addresses)."""
    if scope.operator or exc.code != errors.NO_VALID_HOST:
        return exc
    explanation = redact_explanation(exc.extra.get("explanation") or {})
    before = funnel_sentence(explanation["funnel"], explanation["taints"])
    if before and not explanation["considered"]:  # as an operator's: not "0 hosts considered"
        message = f"no host can hold this request now: no host fits: {before}"
    else:
        message = f"no host can hold this request now: {explanation['summary']}"
        message += f"; {before}" if before else ""
    extra = {k: v for k, v in exc.extra.items() if k != "explanation"}
    return errors.DevassignError(errors.NO_VALID_HOST, message, explanation=explanation, **extra)
