"""The subset of Cyborg's ``/accelerator/v2`` API that an unmodified Nova calls.

A flavor with ``accel:device_profile=NAME`` makes Nova's conductor create accelerator requests
(ARQs) for the profile, bind them to the chosen host and instance (one JSON-patch PATCH), and
its compute wait for one ``accelerator-request-bound`` event per ARQ before it hands the
attach handles (PCI or MDEV) to the libvirt driver (nova/accelerator/cyborg.py).

Here a bind is a devassign claim: all ARQs of one instance are one allocation (consumer = the
instance uuid) on the named host, made through :meth:`Placer.claim`. The ARQs are then
``BindStarted``; the background loop below makes them ``Bound`` once the agent has set the
devices up (the allocation is assigned) or ``BindFailed`` once the allocation is gone, and
tells Nova (``openstack/nova_events.py``), retrying with backoff, never in an HTTP answer.
A second bind for an instance that still holds bound ARQs is refused (409): unbind or delete
them first. SQL: ``store/cyborg.py``; who may call what: ``server/access.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import uuid as uuidlib
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body, FastAPI, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from devassign import errors, schemas
from devassign.domain import (
    CONSUMER_RE,
    MDEV_ADDRESS_RE,
    NOVA_ATTACHABLE_KINDS,
    PCI_ADDRESS_RE,
    UUID_RE,
    DeviceKind,
)
from devassign.lifecycle.base import HandlerError, LifecycleDevice
from devassign.lifecycle.handlers.mdev import mdev_uuid
from devassign.openstack.nova_events import BoundEvent, NovaEvents, Outcome
from devassign.scheduler import ClaimBody
from devassign.server.access import Access
from devassign.server.jsonbody import StrictJsonRoute
from devassign.server.placement import Placer
from devassign.store import Store
from devassign.store.cyborg import BIND_FAILED, BOUND, INITIAL, LIVE, Binding, CyborgStore, Event
from devassign.store.db import busy_now

log = logging.getLogger(__name__)

PREFIX = "/accelerator/v2"
MAX_GROUPS = 16
MAX_PER_GROUP = 64
# ARQs one PATCH may bind; Nova binds all of an instance's ARQs (a profile's devices) in one.
MAX_ARQS = 1000
# Events older than this are no use to Nova (its arq_binding_timeout is 300 s by default).
EVENT_MAX_AGE = timedelta(minutes=15)
_RESOURCE_KEY = re.compile(r"^resources(\d*):(CUSTOM_[A-Z0-9_]+)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,254}$")
_BIND_FIELDS = ("hostname", "device_rp_uuid", "instance_uuid")


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = app.state.settings
    interval = settings.cyborg_interval
    # Background work runs where the sweeper does (tests without one step by hand).
    running = interval > 0 and settings.sweep_interval > 0
    task = asyncio.create_task(_loop(app, interval)) if running else None
    yield
    if task:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


router = APIRouter(route_class=StrictJsonRoute, prefix=PREFIX, lifespan=_lifespan)


def _cyborg(app: FastAPI) -> CyborgStore:
    found: CyborgStore | None = getattr(app.state, "cyborg", None)
    if found is None:
        store: Store = app.state.store
        found = app.state.cyborg = CyborgStore(store)
    return found


def _refuse(what: str, exc: errors.DevassignError) -> errors.DevassignError:
    """Log a refusal once, with its reason (Nova's log only says the call failed)."""
    log.warning("cyborg API: %s refused (%s): %s", what, exc.code, exc.message)
    return exc


def _bad(message: str) -> errors.DevassignError:
    return errors.DevassignError(errors.INVALID_REQUEST, message)


def _storable(body: Any) -> Any:
    """``body`` if every text in it can be stored and read back (no NUL, no lone surrogate,
    finite numbers); these routes take Cyborg's raw JSON, which no model has checked. On
    SQLite a lone surrogate in a trait key was stored, and every profile listing failed after."""
    problem = schemas.value_problem(body)
    if problem:
        raise _bad(problem)
    return body


# ---------------------------------------------------------------- version discovery


@router.get("", include_in_schema=False)
def version(request: Request) -> dict[str, Any]:
    """keystoneauth's version discovery: Nova reads this before its first call."""
    base = str(request.url_for("version")).rstrip("/")
    return {
        "version": {
            "id": "v2.0",
            "status": "CURRENT",
            "min_version": "2.0",
            "max_version": "2.0",
            "links": [{"rel": "self", "href": base + "/"}],
        }
    }


# ---------------------------------------------------------------- device profiles


def parse_groups(groups: Any, type_names: list[str]) -> list[tuple[str, int]]:
    """Each group's devassign type and count, checked; a 400 that says what to fix."""
    if not isinstance(groups, list) or not groups:
        raise _bad('groups: a list of 1 or more groups, e.g. [{"resources:CUSTOM_NIC_VF_1G": "1"}]')
    if len(groups) > MAX_GROUPS:
        raise _bad(f"groups: at most {MAX_GROUPS} groups in a device profile")
    out = []
    for i, group in enumerate(groups):
        if not isinstance(group, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in group.items()
        ):
            raise _bad(f"groups/{i}: a group maps strings to strings, as a flavor's extra specs")
        found: list[tuple[str, int]] = []
        for key, value in group.items():
            if key.startswith("trait") or key.startswith("accel:"):
                if key.startswith("trait") and value not in ("required", "forbidden"):
                    raise _bad(f"groups/{i}: {key}={value!r}: a trait is required or forbidden")
                continue
            m = _RESOURCE_KEY.fullmatch(key)
            if m is None:
                raise _bad(
                    f"groups/{i}: {key!r} is not resources:CUSTOM_<TYPE>, trait:<TRAIT> or accel:<NAME>"
                )
            if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_PER_GROUP:
                raise _bad(f"groups/{i}: {key}={value!r}: a count of 1 to {MAX_PER_GROUP}, in digits")
            found.append((type_for(m.group(2), type_names, where=f"groups/{i}"), int(value)))
        if len(found) != 1:
            raise _bad(
                f"groups/{i}: one resources:CUSTOM_<TYPE> key per group (a group is one kind of "
                f"device), found {len(found)}; put other devices in groups of their own"
            )
        out.append(found[0])
    total = sum(n for _, n in out)
    if total > MAX_ARQS:
        raise _bad(
            f"groups: {total} devices in all; Nova binds a profile's devices in one call of at most "
            f"{MAX_ARQS}: ask for fewer"
        )
    return out


def type_for(resource_class: str, type_names: list[str], *, where: str) -> str:
    """The devassign type of a resource class: ``CUSTOM_`` + the type's name in upper case
    (the Placement mirror's naming), the exact name first."""
    wanted = resource_class.removeprefix("CUSTOM_")
    if wanted in type_names:
        return wanted
    matches = [t for t in type_names if re.sub(r"[^A-Z0-9_]", "_", t.upper()) == wanted]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise _bad(f"{where}: {resource_class} names several types ({', '.join(sorted(matches))})")
    raise _bad(
        f"{where}: {resource_class} is no devassign type (resources:CUSTOM_<TYPE>, TYPE a name "
        "`devassign types` lists, e.g. resources:CUSTOM_NIC_VF_1G for NIC_VF_1G)"
    )


def _profile_fields(body: Any) -> tuple[str, str, list[dict[str, str]], str | None]:
    # openstacksdk sends a list of one profile (as Cyborg's API takes); a plain object too.
    body = _storable(body)
    if isinstance(body, list):
        if len(body) != 1:
            raise _bad("create one device profile per call: a list of exactly one, or the profile itself")
        body = body[0]
    if not isinstance(body, dict):
        raise _bad('the body is a device profile: {"name": ..., "groups": [...]}')
    unknown = sorted(set(body) - {"name", "groups", "description", "uuid"})
    if unknown:
        raise _bad(f"unknown fields {', '.join(unknown)}: a profile has name, groups, description, uuid")
    name, description = body.get("name"), body.get("description")
    if description is None:
        description = ""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _bad("name: 1-255 letters, digits and _ . : -, starting with a letter or digit")
    if not isinstance(description, str) or len(description) > 1000:
        raise _bad("description: text of at most 1000 characters")
    uuid = body.get("uuid")
    if uuid is not None:
        try:
            uuid = str(uuidlib.UUID(uuid)) if isinstance(uuid, str) and len(uuid) <= 36 else None
        except ValueError:
            uuid = None
        if uuid is None:
            raise _bad("uuid: a UUID such as 3f2a9c4e-8b1d-4e6f-9a7c-2d5b8e1f0a36, or leave it out")
    return name, description, body.get("groups"), uuid  # type: ignore[return-value]


@router.get("/device_profiles", tags=["cyborg"])
def list_profiles(request: Request, scope: Access, name: str | None = None) -> dict[str, Any]:
    """``?name=`` is what Nova asks: its flavor's ``accel:device_profile``."""
    return {"device_profiles": _cyborg(request.app).list_profiles(name)}


@router.post("/device_profiles", status_code=201, tags=["cyborg"])
def create_profile(request: Request, scope: Access, body: Annotated[Any, Body()]) -> dict[str, Any]:
    store: Store = request.app.state.store
    try:
        name, description, groups, uuid = _profile_fields(body)
        parse_groups(groups, store.type_names())
        return _cyborg(request.app).create_profile(name, description, groups, uuid)
    except errors.DevassignError as exc:
        raise _refuse("device profile creation", exc) from None


@router.get("/device_profiles/{profile}", tags=["cyborg"])
def get_profile(request: Request, scope: Access, profile: str) -> dict[str, Any]:
    return _cyborg(request.app).get_profile(profile)


@router.delete("/device_profiles/{profile}", status_code=204, tags=["cyborg"])
def delete_profile(request: Request, scope: Access, profile: str) -> Response:
    """By uuid or name. ARQs made from it keep their devices."""
    _cyborg(request.app).delete_profile(profile)
    return Response(status_code=204)


# ---------------------------------------------------------------- accelerator requests


@router.post("/accelerator_requests", status_code=201, tags=["cyborg"])
def create_arqs(request: Request, scope: Access, body: Annotated[Any, Body()]) -> dict[str, Any]:
    """One ARQ per device of each of the profile's groups (Nova: ``create_arqs``)."""
    store: Store = request.app.state.store
    cy = _cyborg(request.app)
    try:
        body = _storable(body)
        if not isinstance(body, dict) or not isinstance(body.get("device_profile_name"), str):
            raise _bad('the body names a device profile: {"device_profile_name": NAME}')
        name = body["device_profile_name"]
        profiles = cy.list_profiles(name)
        if not profiles:
            raise errors.DevassignError(
                errors.NOT_FOUND,
                f"no device profile {name!r}: GET /accelerator/v2/device_profiles lists them",
            )
        groups = parse_groups(profiles[0]["groups"], store.type_names())
        arqs = cy.create_arqs(name, [(i, t, n) for i, (t, n) in enumerate(groups)])
    except errors.DevassignError as exc:
        raise _refuse("ARQ creation", exc) from None
    return {"arqs": arqs}


@router.get("/accelerator_requests", tags=["cyborg"])
def list_arqs(
    request: Request,
    scope: Access,
    instance: str | None = None,
    bind_state: Annotated[str | None, Query(description="resolved: Bound and BindFailed only")] = None,
) -> dict[str, Any]:
    """``?instance=`` is what Nova's compute asks; the answer is brought up to date first."""
    if bind_state not in (None, "resolved"):
        raise _bad(f"bind_state={bind_state!r}: only 'resolved' is known")
    cy = _cyborg(request.app)
    _resolve(request.app, cy)
    states = (BOUND, BIND_FAILED) if bind_state == "resolved" else None
    return {"arqs": cy.list_arqs(instance, states)}


@router.get("/accelerator_requests/{arq}", tags=["cyborg"])
def get_arq(request: Request, scope: Access, arq: str) -> dict[str, Any]:
    cy = _cyborg(request.app)
    _resolve(request.app, cy)
    found = cy.arqs([arq]).get(arq)
    if found is None:
        raise _no_arqs([arq])
    found.pop("type_name")
    return found


@router.patch("/accelerator_requests", status_code=202, tags=["cyborg"])
def patch_arqs(request: Request, scope: Access, body: Annotated[Any, Body()]) -> Response:
    """Bind (``add`` of hostname, device_rp_uuid, instance_uuid) or unbind (``remove``) ARQs:
    ``{ARQ_UUID: [JSON patch], ...}``. A bind claims the instance's devices on that host now
    (a refusal is the 4xx); Nova hears of the end of it through its external event."""
    try:
        binds, unbinds = _parse_patch(_storable(body))
        cy = _cyborg(request.app)
        known = cy.arqs([*binds, *unbinds])
        missing = sorted((set(binds) | set(unbinds)) - set(known))
        if missing:
            raise _no_arqs(missing)
        for instance in sorted({known[u]["instance_uuid"] for u in unbinds} - {None}):
            cy.unbind(instance, None, actor=scope.actor, delete=False)
        if binds:
            _bind(request.app, scope, binds, known)
    except errors.DevassignError as exc:
        raise _refuse("ARQ binding", exc) from None
    return Response(status_code=202)


@router.delete("/accelerator_requests", status_code=204, tags=["cyborg"])
def delete_arqs(
    request: Request,
    scope: Access,
    arqs: Annotated[str | None, Query(description="ARQ uuids, comma-separated")] = None,
    instance: str | None = None,
) -> Response:
    """``?instance=`` (all of an instance's, its devices released) or ``?arqs=a,b`` (a bound
    one releases its instance's devices). Unknown ARQs in ``arqs``: 404, the others deleted."""
    if (arqs is None) == (instance is None):
        raise _refuse("ARQ deletion", _bad("name ?arqs=UUID,UUID or ?instance=UUID (one of them)"))
    cy = _cyborg(request.app)
    if instance is not None:
        if cy.unbind(instance, None, actor=scope.actor, delete=True):
            log.info("cyborg API: released the devices of instance %s (its ARQs deleted)", instance)
        return Response(status_code=204)
    assert arqs is not None
    uuids = sorted({u.strip() for u in arqs.split(",") if u.strip()})
    if not uuids or len(uuids) > 1000:
        raise _refuse("ARQ deletion", _bad("?arqs= names 1 to 1000 ARQ uuids, comma-separated"))
    owners = cy.instances_of(uuids)
    for owner in sorted({i for i in owners.values() if i is not None}):
        mine = [u for u, i in owners.items() if i == owner]
        if cy.unbind(owner, mine, actor=scope.actor, delete=True):
            log.info("cyborg API: released the devices of instance %s (ARQs %s deleted)", owner, mine)
    cy.delete_unbound([u for u, i in owners.items() if i is None])
    missing = sorted(set(uuids) - set(owners))
    if missing:
        raise _refuse("ARQ deletion", _no_arqs(missing))
    return Response(status_code=204)


def _no_arqs(uuids: list[str]) -> errors.DevassignError:
    shown = ", ".join(uuids[:10]) + (f" and {len(uuids) - 10} more" if len(uuids) > 10 else "")
    return errors.DevassignError(errors.NOT_FOUND, f"no accelerator request {shown}")


def _parse_patch(body: Any) -> tuple[dict[str, dict[str, str | None]], list[str]]:
    """({arq: {hostname, device_rp_uuid, instance_uuid}} to bind, [arq] to unbind)."""
    if not isinstance(body, dict) or not body:
        raise _bad('the body maps ARQ uuids to JSON patches: {"ARQ_UUID": [{"op": "add", ...}]}')
    if len(body) > MAX_ARQS:
        raise _bad(f"at most {MAX_ARQS} ARQs per call")
    binds: dict[str, dict[str, str | None]] = {}
    unbinds = []
    for arq, patch in body.items():
        if not isinstance(patch, list) or not patch or not all(isinstance(p, dict) for p in patch):
            raise _bad(f"{arq}: a JSON patch, a list of operations")
        if not all(isinstance(p.get("op"), str) and isinstance(p.get("path"), str) for p in patch):
            raise _bad(f"{arq}: each operation has an op and a path, both strings")
        ops = {p["op"] for p in patch}
        paths = [p.get("path") for p in patch]
        wrong = [p for p in paths if p not in [f"/{f}" for f in _BIND_FIELDS]]
        if wrong:
            raise _bad(f"{arq}: path {wrong[0]!r}: only /hostname, /device_rp_uuid and /instance_uuid")
        if ops == {"remove"}:
            unbinds.append(arq)
            continue
        if ops != {"add"}:
            raise _bad(f"{arq}: all operations 'add' (bind) or all 'remove' (unbind)")
        values = {str(p["path"])[1:]: p.get("value") for p in patch}
        if not all(isinstance(v, str) or v is None for v in values.values()):
            raise _bad(f"{arq}: values are strings")
        for f in ("hostname", "instance_uuid"):
            if not values.get(f):
                raise _bad(f"{arq}: a bind adds /{f}")
        instance = str(values["instance_uuid"])
        if not (UUID_RE.fullmatch(instance) and CONSUMER_RE.fullmatch(instance)):
            raise _bad(f"{arq}: instance_uuid {instance[:64]!r} is not a UUID")
        rp = values.get("device_rp_uuid")
        if rp is not None and not UUID_RE.fullmatch(rp):
            raise _bad(f"{arq}: device_rp_uuid {rp[:64]!r} is not a UUID")
        binds[arq] = values
    return binds, unbinds


def _bind(
    app: FastAPI,
    scope: Any,
    binds: dict[str, dict[str, str | None]],
    known: dict[str, dict[str, Any]],
) -> None:
    """Claim each instance's devices on its host, in one claim per instance. Every instance
    is checked before any is claimed; a claim refused undoes the claims this call made."""
    by_instance: dict[str, list[str]] = defaultdict(list)
    for arq, values in binds.items():
        by_instance[str(values["instance_uuid"])].append(arq)
    cy = _cyborg(app)
    plan = []
    for instance, arqs in sorted(by_instance.items()):
        host, replay = _check_bind(app, cy, instance, arqs, binds, known)
        plan.append((instance, host, arqs, replay))
    done: list[str] = []
    try:
        for instance, host, arqs, replay in plan:
            _claim_and_record(app, scope, instance, host, arqs, binds, known)
            if not replay:
                done.append(instance)
    except errors.DevassignError:
        for instance in done:
            cy.unbind(instance, None, actor=scope.actor, delete=False)
        raise
    _resolve(app, cy)


def _check_bind(
    app: FastAPI,
    cy: CyborgStore,
    instance: str,
    arqs: list[str],
    binds: dict[str, dict[str, str | None]],
    known: dict[str, dict[str, Any]],
) -> tuple[str, bool]:
    """The host of one instance's bind and whether it repeats one made (a 4xx otherwise)."""
    hosts = {str(binds[a]["hostname"]) for a in arqs}
    if len(hosts) != 1:
        raise _bad(f"instance {instance}: its ARQs are bound to one host, not {sorted(hosts)}")
    host = hosts.pop()
    again = [a for a in arqs if known[a]["state"] in LIVE]
    if any(known[a]["instance_uuid"] != instance or known[a]["hostname"] != host for a in again) or any(
        known[a]["state"] not in (INITIAL, *LIVE) for a in arqs
    ):
        raise errors.DevassignError(
            errors.INVALID_STATE,
            f"ARQs {', '.join(sorted(arqs))}: some are bound elsewhere or failed; "
            "delete them and create new ones",
        )
    others = sorted(set(cy.live_arqs_of(instance)) - set(arqs))
    if others:
        raise errors.DevassignError(
            errors.INVALID_STATE,
            f"instance {instance} already holds bound ARQs {', '.join(others)}: devassign holds "
            "one allocation per instance; unbind or delete those first, then bind all together",
        )
    store: Store = app.state.store
    try:
        store.get_host(host)
    except errors.DevassignError as exc:
        raise errors.DevassignError(
            errors.HOST_NOT_FOUND,
            f"host {host!r} is not known to devassign: Nova's compute node name must be the "
            "devassign agent's host name",
        ) from exc
    return host, len(again) == len(arqs)


def _claim_and_record(
    app: FastAPI,
    scope: Any,
    instance: str,
    host: str,
    arqs: list[str],
    binds: dict[str, dict[str, str | None]],
    known: dict[str, dict[str, Any]],
) -> None:
    # One named request per profile, group and type: Nova binds a flavor's ARQs and a port's
    # in one PATCH, and every profile numbers its groups from 0.
    by_key: dict[tuple[str, int, str], list[str]] = defaultdict(list)
    for a in sorted(arqs):
        arq = known[a]
        by_key[(arq["device_profile_name"], arq["device_profile_group_id"], arq["type_name"])].append(a)
    groups = {f"group{k}": members for k, (_, members) in enumerate(sorted(by_key.items()))}
    # Only devices Nova can attach are candidates: a USB token or a static device of the same
    # type is never claimed (and so never cleaned, or used up if one-time) only to be refused.
    requests = [
        {
            "name": name,
            "type": known[members[0]]["type_name"],
            "count": len(members),
            "selector": NOVA_ATTACHABLE,
        }
        for name, members in groups.items()
    ]
    body = ClaimBody.model_validate(
        {
            "consumer": instance,
            "hosts": [host],
            "requests": requests,
            # A retried PATCH is a replay of the same claim, answered with the same allocation.
            "idempotency_key": "cyborg-" + hashlib.sha256(",".join(sorted(arqs)).encode()).hexdigest()[:48],
        }
    )
    placer: Placer = app.state.placer
    store: Store = app.state.store
    cy = _cyborg(app)
    taken = cy.mark_binding(instance, arqs)
    if taken:
        raise errors.DevassignError(
            errors.INVALID_STATE,
            f"ARQs {', '.join(taken)} are being bound to another instance: delete them and create new ones",
        )
    try:
        placer.claim(body, scope.principal)
    except errors.DevassignError as exc:
        cy.unmark_binding(instance, arqs)
        if exc.code == errors.IDEMPOTENCY_KEY_REUSED:
            raise errors.DevassignError(
                errors.INVALID_STATE,
                f"ARQs {', '.join(sorted(arqs))} are being bound for instance {instance} on another "
                "host: wait for that bind, or unbind them first",
            ) from exc
        if exc.code != errors.NO_VALID_HOST:
            raise
        raise errors.DevassignError(
            exc.code,
            f"{exc.message} (only devices Nova can attach count: {NOVA_ATTACHES}; a type's USB, "
            "static or MIG devices are never bound through this API)",
            **exc.extra,
        ) from exc
    try:
        request_of = {d.id: d.request for d in store.get_allocation(instance).devices}
        by_request: dict[str | None, list[Any]] = defaultdict(list)
        for d, _, facts in store.allocation_devices(instance):  # in address order
            by_request[request_of.get(d.id)].append((d, facts))
        bindings = []
        for name, members in groups.items():
            devices = by_request[name]
            for a, (d, facts) in zip(members, devices, strict=True):
                kind, info, uid = attach_handle(d, facts)
                rp = binds[a].get("device_rp_uuid")
                bindings.append(Binding(a, host, rp, instance, d.id, kind, info, uid))
        lost = cy.start_binding(bindings)
        if lost:
            raise _changed_while_binding(lost)
    except (errors.DevassignError, ValueError) as exc:
        cy.unmark_binding(instance, arqs)
        with contextlib.suppress(errors.DevassignError):  # released already by a delete
            store.release(instance, scope.actor)
        if isinstance(exc, errors.DevassignError) and exc.code == errors.ALLOCATION_NOT_FOUND:
            raise _changed_while_binding(arqs) from exc  # a delete of its ARQs released the claim
        if isinstance(exc, errors.DevassignError):
            raise
        raise errors.DevassignError(errors.INVALID_STATE, f"cannot bind: {exc}") from exc
    log.info(
        "cyborg API: claimed %d devices on %s for instance %s (ARQs %s)", len(arqs), host, instance, arqs
    )


def _changed_while_binding(arqs: list[str]) -> errors.DevassignError:
    return errors.DevassignError(
        errors.INVALID_STATE,
        f"ARQs {', '.join(sorted(arqs))} changed while binding (deleted or unbound): create and bind "
        "new ones",
    )


# The kinds ``attach_handle`` gives Nova a handle for, as a selector over ``device.kind``.
NOVA_ATTACHABLE = f"device.kind in [{', '.join(repr(k.value) for k in NOVA_ATTACHABLE_KINDS)}]"
NOVA_ATTACHES = "PCI functions and VFs by their PCI address, vGPUs and mdev slots as mdevs"


def attach_handle(device: schemas.Device, facts: dict[str, Any]) -> tuple[str, dict[str, str], str | None]:
    """(attach_handle_type, attach_handle_info, attach_handle_uuid) as Nova's libvirt driver
    reads them: PCI by its address; MDEV by its parent's address, its type (``asked_type``)
    and the UUID devassign's mdev handler creates it with (so Nova finds it made)."""
    if device.kind in (DeviceKind.PCI, DeviceKind.SRIOV_PF, DeviceKind.SRIOV_VF, DeviceKind.VGPU):
        address = device.parent if device.kind is DeviceKind.VGPU else device.address
        if address is None or not PCI_ADDRESS_RE.fullmatch(address):
            raise ValueError(f"{device.address}: no PCI address to give Nova")
        info = _pci_parts(address)
        info["physical_network"] = device.attributes.get("physical_network")  # type: ignore[assignment]
        return "PCI", info, None
    if device.kind is DeviceKind.MDEV_TYPE:
        m = MDEV_ADDRESS_RE.fullmatch(device.address)
        if m is None:
            raise ValueError(f"{device.address}: not an mdev slot")
        try:
            uid = mdev_uuid(LifecycleDevice.from_schema(device, facts=facts))
        except HandlerError as exc:
            raise ValueError(str(exc)) from exc
        return "MDEV", {**_pci_parts(m.group(1)), "asked_type": m.group(2)}, uid
    raise ValueError(
        f"{device.address} is a {device.kind.value} device: Nova attaches accelerators by PCI "
        "address or as mdevs only; use a type of PCI functions, VFs, vGPUs or mdevs"
    )


def _pci_parts(address: str) -> dict[str, str]:
    domain, bus, rest = address.split(":")
    slot, function = rest.split(".")
    return {"domain": domain, "bus": bus, "device": slot, "function": function}


# ---------------------------------------------------------------- resolution and events


def _resolve(app: FastAPI, cy: CyborgStore) -> list[Event]:
    moved = cy.resolve()
    for e in moved:
        log.info("cyborg API: ARQ %s of instance %s: binding %s", e.arq, e.instance, e.status)
    return moved


class _Sender:
    """State of the event loop: backoff and whether the last attempt failed (logged once)."""

    def __init__(self, app: FastAPI, interval: float) -> None:
        settings = app.state.settings
        self.app = app
        self.interval = interval
        self.delay = interval
        self.failing = False
        self.warned = False
        self.nova = NovaEvents(settings.nova_url, settings.nova_token) if settings.nova_url else None

    def step(self) -> None:
        """Resolve bindings, then send what Nova has not been told yet (one attempt)."""
        cy = _cyborg(self.app)
        _resolve(self.app, cy)
        pending = cy.pending_events()
        if not pending:
            self.delay = self.interval
            return
        if self.nova is None:
            if not self.warned:
                log.warning(
                    "cyborg API: DEVASSIGN_NOVA_URL is not set: Nova is not told that ARQs are bound "
                    "(its compute finds them bound only if they are when it first looks)"
                )
                self.warned = True
            cy.events_done(pending)
            return
        stale = [e for e in pending if cy.too_old(e, EVENT_MAX_AGE)]
        for e in stale:
            log.warning(
                "cyborg API: gave up telling Nova that ARQ %s of %s is %s", e.arq, e.instance, e.status
            )
        cy.events_done(stale)
        fresh = [e for e in pending if e not in stale]
        if not fresh:
            return
        outcome, why = self.nova.send([BoundEvent(e.instance, e.arq, e.status) for e in fresh])
        if outcome is Outcome.RETRY:
            if not self.failing:
                log.warning("cyborg API: cannot tell Nova of %d bound ARQs, will retry: %s", len(fresh), why)
            self.failing = True
            self.delay = min(max(self.delay * 2, 1.0), 60.0)
            return
        if self.failing:
            log.warning("cyborg API: Nova takes events again")
        self.failing = False
        self.delay = self.interval
        if outcome is Outcome.DROP:
            log.warning("cyborg API: Nova refused events of %d ARQs: %s", len(fresh), why)
        else:
            log.info("cyborg API: told Nova of %d ARQs (%s)", len(fresh), why)
        cy.events_done(fresh)


def sender(app: FastAPI) -> _Sender:
    """The app's event sender (tests call ``sender(app).step()`` instead of waiting)."""
    found: _Sender | None = getattr(app.state, "cyborg_sender", None)
    if found is None:
        found = app.state.cyborg_sender = _Sender(app, app.state.settings.cyborg_interval)
    return found


async def _loop(app: FastAPI, interval: float) -> None:
    s = sender(app)
    skipped = 0  # steps skipped in a row while the database cannot serve: logged once an outage
    while True:
        await asyncio.sleep(s.delay)
        try:
            await run_in_threadpool(s.step)
        except Exception as exc:  # the loop must outlive a database hiccup
            busy = busy_now(exc)
            if busy is None:
                log.exception("cyborg API: resolving ARQ bindings failed; will retry")
            elif not skipped:
                log.warning("cyborg API: resolving ARQ bindings skipped: %s; will retry", busy.message)
            skipped += busy is not None
            continue
        if skipped:
            log.info("cyborg API: resolving ARQ bindings again after %d skipped tries", skipped)
            skipped = 0
