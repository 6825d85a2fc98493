"""Mirror devassign's devices into OpenStack Placement, as child providers of Nova's compute nodes.

An unmodified Nova asks Placement for allocation candidates, a flavor's granular groups and a
Cyborg device profile's groups included (``resources1:CUSTOM_NIC_VF_1G=1``). For Placement to
answer, each host's devices of one type are a child resource provider of the host's compute
node provider (named after the hypervisor hostname, found by ``GET
/resource_providers?name=HOST``), with one inventory of resource class ``CUSTOM_<TYPE>``:

- ``total``: the devices of the type on the host (removed ones not counted);
- ``reserved``: what devassign cannot give to a consumer Placement does not know about: devices
  held by devassign consumers without an allocation against the provider, and devices that are
  not free (unhealthy, tainted, cleaning, missing, quarantined, on a host that is down). So the
  free units Placement sees are devassign's free devices.

A sync reads devassign (``GET /v1/hosts``, ``GET /v1/devices``, an admin token) and the
providers it created in Placement, and writes only what differs. It never touches a provider
it did not create: its providers carry the trait ``CUSTOM_DEVASSIGN_MANAGED``, a name that
starts with ``devassign:`` and a UUID derived from host and type. Every write carries the
provider's generation; a 409 (``placement.concurrent_update``: Nova allocated meanwhile) is
answered by reading again and recomputing, a bounded number of times.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx

from devassign.openstack.placement_state import (
    MANAGED_TRAIT,
    NAME_PREFIX,
    Desired,
    desired_state,
    resource_class,
)

LOG = logging.getLogger(__name__)

# Placement 16.0.0 (2025.2) speaks up to 1.39; nested providers need 1.14, the `required`
# filter 1.18, reserved == total 1.26, re-parenting 1.37.
MICROVERSION = "placement 1.39"
MAX_TRIES = 5
PAGE = 5000


class MirrorError(RuntimeError):
    """devassign or Placement could not be read or written; the message says which and why."""


@dataclass
class SyncResult:
    """What one sync did, for logs and tests."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    skipped_hosts: list[str] = field(default_factory=list)  # no compute node provider in Placement
    conflicts: int = 0  # 409s answered by reading again
    errors: list[str] = field(default_factory=list)  # providers left for the next sync, and why
    writes: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.deleted)


class _Conflict(Exception):
    """A write lost to a concurrent one (409): read again and recompute."""


class PlacementMirror:
    """Keeps Placement's devassign providers in step with devassign (see the module's doc)."""

    def __init__(
        self,
        devassign: httpx.Client,
        placement: httpx.Client,
        *,
        host_prefix: str = "",
        host_suffix: str = "",
        max_tries: int = MAX_TRIES,
    ) -> None:
        self.devassign = devassign
        self.placement = placement
        self.host_prefix = host_prefix
        self.host_suffix = host_suffix
        self.max_tries = max_tries
        self._known_names: set[str] = set()  # resource classes and traits known to exist
        self._warned_hosts: set[str] = set()

    # ----------------------------------------------------------------------- devassign side

    def read_devassign(self, only: set[str] | None = None) -> dict[tuple[str, str], Desired]:
        hosts = {str(h["name"]): str(h["status"]) for h in self._da_get("/v1/hosts")}
        devices: list[dict[str, Any]] = []
        for host in sorted(only) if only is not None else [None]:
            offset = 0
            while True:
                params: dict[str, Any] = {"limit": PAGE, "offset": offset}
                if host is not None:
                    params["host"] = host
                page = self._da_get("/v1/devices", params)
                devices.extend(page)
                if len(page) < PAGE:
                    break
                offset += PAGE
        return desired_state(devices, hosts, only)

    def _da_get(self, path: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        try:
            r = self.devassign.get(path, params=params)
        except httpx.HTTPError as exc:
            raise MirrorError(f"devassign at {self.devassign.base_url} unreachable: {exc}") from exc
        if r.status_code == 404 and path == "/v1/devices":
            return []  # a host named by an event and forgotten since
        if r.is_error:
            raise MirrorError(f"devassign GET {path}: HTTP {r.status_code} {r.text[:300]} (an admin token?)")
        body = r.json()
        if not isinstance(body, list):
            raise MirrorError(f"devassign GET {path}: expected a list")
        return body

    # ----------------------------------------------------------------------- Placement side

    def _pl(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200,)) -> Any:
        try:
            r = self.placement.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise MirrorError(f"Placement at {self.placement.base_url} unreachable: {exc}") from exc
        if r.status_code == 409 and method != "GET":
            raise _Conflict(r.text[:300])
        if r.status_code not in ok:
            raise MirrorError(f"Placement {method} {path}: HTTP {r.status_code} {r.text[:300]}")
        return r.json() if r.content else None

    def _ensure_names(self, rcs: Iterable[str], traits: Iterable[str]) -> None:
        """Create custom resource classes and traits once (both PUTs are idempotent)."""
        for kind, names in (("resource_classes", rcs), ("traits", traits)):
            for name in sorted(set(names) - self._known_names):
                self._pl("PUT", f"/{kind}/{name}", ok=(201, 204))
                self._known_names.add(name)

    def _ours(self) -> dict[str, dict[str, Any]]:
        """The providers this mirror created, by UUID: the managed trait and the name prefix."""
        found = self._pl("GET", f"/resource_providers?required={MANAGED_TRAIT}")["resource_providers"]
        return {p["uuid"]: p for p in found if str(p["name"]).startswith(NAME_PREFIX)}

    def nova_name(self, host: str) -> str:
        """The hypervisor hostname of a devassign host: without ``host_prefix`` and ``host_suffix``."""
        name = host.removeprefix(self.host_prefix) if self.host_prefix else host
        return name.removesuffix(self.host_suffix) if self.host_suffix else name

    def _root(self, host: str) -> str | None:
        nova_name = self.nova_name(host)
        found = self.placement.get("/resource_providers", params={"name": nova_name})
        if found.is_error:
            raise MirrorError(f"Placement GET /resource_providers?name={nova_name}: HTTP {found.status_code}")
        providers = found.json()["resource_providers"]
        return str(providers[0]["uuid"]) if providers else None

    # ----------------------------------------------------------------------- the sync

    def sync(self, only: set[str] | None = None) -> SyncResult:
        """One pass: all hosts, or only the devassign hosts in ``only`` (an event's hosts)."""
        result = SyncResult()
        desired = self.read_devassign(only)
        self._ensure_names(
            (resource_class(w.type) for w in desired.values()),
            [MANAGED_TRAIT, *(t for w in desired.values() for t in w.traits)],
        )
        ours = self._ours()
        roots: dict[str, str | None] = {}
        for key in sorted(desired):
            want = desired[key]
            if want.host not in roots:
                roots[want.host] = self._root(want.host)
                if roots[want.host] is None:
                    result.skipped_hosts.append(want.host)
                    if want.host not in self._warned_hosts:
                        self._warned_hosts.add(want.host)
                        LOG.warning(
                            "no compute node provider named %r in Placement: devices of host %s "
                            "not mirrored (is it Nova's hypervisor hostname? see --host-prefix)",
                            self.nova_name(want.host),
                            want.host,
                        )
            root = roots[want.host]
            if root is None:
                continue
            self._retrying(result, partial(self._sync_one, want, root, ours.get(want.uuid), result))
        for uid, provider in sorted(ours.items()):
            host, type_name = _parse_name(str(provider["name"]))
            if (host, type_name) in desired or (only is not None and host not in only):
                continue
            self._retrying(result, partial(self._retire, uid, str(provider["name"]), result))
        return result

    def _retrying(self, result: SyncResult, step: Callable[[], None]) -> None:
        """Run ``step`` (which reads before it writes) again after each 409, at most max_tries
        times; a provider that still fails is logged and left for the next sync."""
        for attempt in range(self.max_tries):
            try:
                step()
                return
            except _Conflict as exc:
                result.conflicts += 1
                LOG.info(
                    "Placement conflict (try %d of %d), reading again: %s", attempt + 1, self.max_tries, exc
                )
            except (MirrorError, httpx.HTTPError) as exc:
                result.errors.append(str(exc))
                LOG.error("%s; the next sync tries again", exc)
                return
        message = f"Placement answered 409 {self.max_tries} times in a row"
        result.errors.append(message)
        LOG.error("%s; the next sync tries again", message)

    def _traits(self, uid: str) -> tuple[set[str], int]:
        body = self._pl("GET", f"/resource_providers/{uid}/traits")
        return set(body["traits"]), int(body["resource_provider_generation"])

    def _sync_one(self, want: Desired, root: str, current: dict[str, Any] | None, result: SyncResult) -> None:
        uid = want.uuid
        if current is None:
            got = self.placement.get(f"/resource_providers/{uid}")  # created before a crash?
            if got.status_code == 404:
                body: dict[str, Any] = {"name": want.name, "uuid": uid, "parent_provider_uuid": root}
                current = self._pl("POST", "/resource_providers", body)
                result.created.append(want.name)
                result.writes += 1
            elif got.is_error:
                raise MirrorError(f"Placement GET /resource_providers/{uid}: HTTP {got.status_code}")
            elif not str(got.json().get("name", "")).startswith(NAME_PREFIX):
                raise MirrorError(f"provider {uid} is not one this mirror made; left alone")
            else:
                current = got.json()
        if current is None:
            raise MirrorError(f"Placement created provider {uid} but did not describe it")
        changed = False
        if current.get("parent_provider_uuid") != root or current.get("name") != want.name:
            # Nova's compute node provider was re-created (1.37 lets a provider change parent)
            self._pl("PUT", f"/resource_providers/{uid}", {"name": want.name, "parent_provider_uuid": root})
            changed = True
            result.writes += 1
        traits, generation = self._traits(uid)
        if traits != want.traits:
            new_traits = {"traits": sorted(want.traits), "resource_provider_generation": generation}
            self._pl("PUT", f"/resource_providers/{uid}/traits", new_traits)
            changed = True
            result.writes += 1
        inventory, allocations, generation = self._usage(uid, resource_class(want.type))
        rc = resource_class(want.type)
        reserved = want.reserved(allocations)
        wanted = {
            "total": want.total,
            "reserved": reserved,
            "min_unit": 1,
            "max_unit": want.total,
            "step_size": 1,
            "allocation_ratio": 1.0,
        }
        if set(inventory) != {rc} or any(inventory[rc].get(k) != v for k, v in wanted.items()):
            new_inv = {"inventories": {rc: wanted}, "resource_provider_generation": generation}
            self._pl("PUT", f"/resource_providers/{uid}/inventories", new_inv)
            changed = True
            result.writes += 1
        if changed and want.name not in result.created + result.updated:
            result.updated.append(want.name)

    def _usage(self, uid: str, rc: str) -> tuple[dict[str, Any], dict[str, int], int]:
        """Inventories, consumer -> units of ``rc`` allocated, and the generation both were read at."""
        for _ in range(self.max_tries):
            inv = self._pl("GET", f"/resource_providers/{uid}/inventories")
            alloc = self._pl("GET", f"/resource_providers/{uid}/allocations")
            if inv["resource_provider_generation"] == alloc["resource_provider_generation"]:
                per_consumer = {c: int(a["resources"].get(rc, 0)) for c, a in alloc["allocations"].items()}
                return inv["inventories"], per_consumer, int(inv["resource_provider_generation"])
        raise _Conflict("the provider changed between two reads")

    def _retire(self, uid: str, name: str, result: SyncResult) -> None:
        """Delete a provider whose devices are gone; one Nova still allocates from keeps its
        inventory with every unit reserved, until those allocations go."""
        r = self.placement.delete(f"/resource_providers/{uid}")
        if r.status_code in (204, 404):
            result.deleted.append(name)
            result.writes += 1
            return
        if r.status_code != 409:
            raise MirrorError(
                f"Placement DELETE /resource_providers/{uid}: HTTP {r.status_code} {r.text[:300]}"
            )
        inv = self._pl("GET", f"/resource_providers/{uid}/inventories")
        inventories = inv["inventories"]
        if all(i["reserved"] == i["total"] for i in inventories.values()):
            return
        body = {
            "inventories": {rc: {**i, "reserved": i["total"]} for rc, i in inventories.items()},
            "resource_provider_generation": inv["resource_provider_generation"],
        }
        self._pl("PUT", f"/resource_providers/{uid}/inventories", body)
        result.updated.append(name)
        result.writes += 1
        LOG.warning("%s: its devices are gone but allocations remain; every unit is reserved", name)


def _parse_name(name: str) -> tuple[str, str]:
    host, _, type_name = name.removeprefix(NAME_PREFIX).rpartition(":")
    return host, type_name


def placement_client(
    url: str, token: str, *, timeout: float = 30.0, transport: httpx.BaseTransport | None = None
) -> httpx.Client:
    """An httpx client for Placement: a Keystone token, or any word (``admin``) under noauth2."""
    headers = {"X-Auth-Token": token, "OpenStack-API-Version": MICROVERSION, "Accept": "application/json"}
    return httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout, transport=transport)
