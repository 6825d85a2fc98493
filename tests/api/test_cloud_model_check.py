"""A seeded random walk over the whole API, the way a cloud uses it, with invariants after
every step, checked through the API and in the database.

Actors: an admin, members of two projects, and the agents of 2-4 hosts whose inventories hold
a PF with its VFs, a T4 offered whole or as vGPU slots of one pool, an A100 offered whole or as
MIG placements, plain GPUs and a one-time-use USB token. Steps: claims (extra specs, and the
JSON form with selectors, constraints, params and alternatives), replays, gangs, moves (start,
commit, abort), Cyborg ARQs bound and deleted (Nova's way to claim), explanations and capacity
questions, releases (by the owner, an admin, another project), the agents' work loop
(setups and cleanups that succeed, fail or find the device unhealthy), clearing, taints and
untaints (a device, a parent, a host drained), quotas set and unset, reports that remove
devices (held ones too) and bring them back or mark them unhealthy (some through the batch
route), catalog changes (a type's one-time-use flag, its declared params), host renames and
deletions, member and agent token revocation, and time passing (heartbeats, the sweeper,
reservations expiring, hosts going down).

After every step: no answer is a 5xx and every 4xx carries the stable error body; the
database's holdings are consistent (``violations``) and the audit finds nothing; every live
allocation's devices are on its host and of a type its request allows; no device is in two
allocations; a device is never ``available`` between its release and a cleanup that ran to
completion, and only an ``available`` device becomes ``reserved``; the types' counts and the
capacity answers equal a recount from the devices; each quota's use equals the project's live
holdings; no claim takes a tainted device or one on a down host; a member sees exactly its own
project's allocations, events and quotas, and its refusals and explanations name no host,
address or device id; an agent sees only its own host; the dashboard renders, its
overview's numbers per type are the API's and add up to the total, and the metrics' fleet
gauges (devices per type and state, hosts up and down, quota use) say what the API says.

``DEVASSIGN_MODEL_STEPS`` (steps per seed, 100 unless set) and ``DEVASSIGN_MODEL_SEEDS`` (a
count of seeds, or a comma-separated list: ``3`` runs seeds 0, 1, 2 and ``7,`` seed 7; the
default is seed 0)
make a longer run, e.g. ``DEVASSIGN_MODEL_STEPS=2000 DEVASSIGN_MODEL_SEEDS=20 pytest
tests/api/test_cloud_model_check.py``. A failure names its seed and step.
"""

from __future__ import annotations

import os
import random
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from devassign import errors, schemas
from devassign.agent import gpus
from devassign.domain import Role, mdev_address, mig_address
from devassign.store import Store
from devassign.store.schema import allocation_items, allocations, consumers, devices, resource_types
from tests.conftest import Clock
from tests.e2e.contention import violations

STEPS = int(os.environ.get("DEVASSIGN_MODEL_STEPS", "100"))
_SEEDS = os.environ.get("DEVASSIGN_MODEL_SEEDS", "1")
SEEDS = [int(s) for s in _SEEDS.split(",") if s] if "," in _SEEDS else list(range(int(_SEEDS)))
PROJECTS = ("p1", "p2")
TTL = 300  # the store's reservation time
DOWN_AFTER = 90  # the store's down_after (tests/conftest.py)

PF = "0000:3b:00.0"
T4 = "0000:d8:00.0"
A100 = "0000:af:00.0"
PLAIN = ("0000:5e:00.0", "0000:5f:00.0")
TYPES = {
    "NIC_PF": {},
    "NIC_VF": {"params": {"vlan": {"type": "integer", "min": 1, "max": 4094}}},
    "GPU_T4": {},
    "VGPU_4Q": {},
    "VGPU_8Q": {},
    "GPU_A100": {},
    "MIG_1G": {},
    "MIG_3G": {},
    "MIG_7G": {},
    "GPU_PLAIN": {},
    "USB_TOKEN": {"config": {"one_time_use": True}},
}
MIG_TYPES = {"1g.10gb": "MIG_1G", "3g.40gb": "MIG_3G", "7g.80gb": "MIG_7G"}
# Types whose free devices are all claimable one by one (no parent or child relation that a
# holding elsewhere blocks): capacity for one of them is what the types count as available.
CAPACITY_IS_AVAILABLE = ("GPU_PLAIN", "USB_TOKEN", "VGPU_4Q", "VGPU_8Q", "MIG_1G", "MIG_3G", "MIG_7G")
HELD = ("reserved", "assigned")
ARQS = "/accelerator/v2/accelerator_requests"


def machine_devices(i: int) -> list[dict[str, Any]]:
    """Every device machine ``i`` has (a report leaves out those the walk removed)."""
    out: list[dict[str, Any]] = [
        {"address": PF, "kind": "sriov_pf", "type": "NIC_PF", "numa_node": 0, "attributes": {}},
    ]
    for v in range(4):
        out.append(
            {
                "address": f"0000:3b:02.{v}",
                "kind": "sriov_vf",
                "type": "NIC_VF",
                "parent": PF,
                "numa_node": v % 2,
                "attributes": {"physical_network": "physnet1"},
            }
        )
    out.append({"address": T4, "kind": "pci", "type": "GPU_T4", "numa_node": 0, "attributes": {}})
    share = {"kind": "mdev_type", "parent": T4, "numa_node": 0, "pool_counters": {"framebuffer_mb": 8192}}
    for n in range(2):
        out.append(
            {
                **share,
                "address": mdev_address(T4, "nvidia-230", n),
                "type": "VGPU_4Q",
                "consumes": {"framebuffer_mb": 4096},
                "mode": "4Q",
                "attributes": {},
            }
        )
    out.append(
        {
            **share,
            "address": mdev_address(T4, "nvidia-231", 0),
            "type": "VGPU_8Q",
            "consumes": {"framebuffer_mb": 8192},
            "mode": "8Q",
            "attributes": {},
        }
    )
    model = gpus.lookup("10de", "20b2")
    assert model is not None
    out.append(
        {
            "address": A100,
            "kind": "pci",
            "type": "GPU_A100",
            "vendor_id": "10de",
            "product_id": "20b2",
            "numa_node": 1,
            "attributes": {"memory_mib": model.memory_mib},
        }
    )
    for p in gpus.placements(model):
        if p.profile.name not in MIG_TYPES:
            continue
        out.append(
            {
                "address": mig_address(A100, p.profile.name, p.start),
                "kind": "mig",
                "type": MIG_TYPES[p.profile.name],
                "vendor_id": "10de",
                "product_id": "20b2",
                "numa_node": 1,
                "parent": A100,
                "pool": A100,
                "pool_counters": gpus.counters(model),
                "consumes": gpus.consumes(p),
                "mode": "MIG",
                "attributes": {"mig_profile": p.profile.name, "mig_start": p.start},
            }
        )
    for n, address in enumerate(PLAIN):
        memory = 16384 if (i + n) % 2 == 0 else 32768
        out.append(
            {
                "address": address,
                "kind": "pci",
                "type": "GPU_PLAIN",
                "numa_node": n,
                "attributes": {"memory_mib": memory},
            }
        )
    if i < 2:
        out.append({"address": f"usb:1050:0407:SER{i}", "kind": "usb", "type": "USB_TOKEN", "attributes": {}})
    return out


def claim_bodies() -> list[dict[str, Any]]:
    """What tenants ask for: the short form and the full one."""
    return [
        {"extra_specs": {"hardware_resource:GPU_PLAIN": "1"}},
        {"extra_specs": {"hardware_resource:NIC_VF": "2"}},
        {"extra_specs": {"hardware_resource:NIC_PF": "1"}},
        {"extra_specs": {"hardware_resource:VGPU_4Q": "1", "hardware_resource:NIC_VF": "1"}},
        {"extra_specs": {"hardware_resource:VGPU_8Q": "1"}},
        {"extra_specs": {"hardware_resource:GPU_T4": "1"}},
        {"extra_specs": {"hardware_resource:MIG_1G": "2"}},
        {"extra_specs": {"hardware_resource:MIG_3G": "1"}},
        {"extra_specs": {"hardware_resource:USB_TOKEN": "1"}},
        {
            "requests": [
                {
                    "name": "gpu",
                    "type": "GPU_PLAIN",
                    "selector": "device.attributes.memory_mib >= 20000",
                    "first_available": [{"type": "MIG_3G", "count": 1}],
                },
                {"name": "nic", "type": "NIC_VF", "params": {"vlan": 100}},
            ],
            "constraints": [{"requests": ["gpu", "nic"], "match": "numa_node"}],
        },
        {
            "requests": [
                {"name": "big", "type": "GPU_A100", "first_available": [{"type": "MIG_7G", "count": 1}]},
            ]
        },
        {
            "requests": [
                {"name": "nics", "type": "NIC_VF", "count": 2, "selector": "device.numa_node == 1"},
            ],
            "constraints": [{"requests": ["nics"], "match": "numa_node"}],
        },
        {
            "requests": [
                {"name": "slot", "type": "VGPU_4Q"},
                {"name": "mig", "type": "MIG_1G"},
                {"name": "gpu", "type": "GPU_PLAIN", "count": 2},
            ],
            "constraints": [{"requests": ["slot", "gpu"], "distinct": "address"}],
        },
    ]


def allowed_types(body: dict[str, Any]) -> set[str]:
    """The types a claim body may be given (alternatives included)."""
    out: set[str] = set()
    for spec in body.get("extra_specs", {}):
        out.add(spec.split(":", 1)[1])
    for r in body.get("requests", []):
        out.add(r["type"])
        out.update(a["type"] for a in r.get("first_available", []))
    return out


@dataclass
class Machine:
    index: int
    name: str
    host_id: str
    agent: dict[str, str]
    generation: int = 1
    gone: set[str] = field(default_factory=set)  # addresses left out of its reports
    sick: set[str] = field(default_factory=set)  # addresses reported unhealthy
    alive: bool = True  # heartbeats when time passes
    deleted: bool = False


@dataclass
class Holding:
    consumer: str
    project: str
    body: dict[str, Any]
    key: str | None
    gang: str | None = None
    arq: bool = False  # claimed by binding Cyborg ARQs


class Violation(AssertionError):
    pass


class CloudWalk:
    """The walk: one seeded random generator chooses every step and every value."""

    def __init__(self, api: TestClient, store: Store, clock: Clock, seed: int) -> None:
        self.api = api
        self.store = store
        self.clock = clock
        self.seed = seed
        self.rng = random.Random(seed)
        self.step_no = 0
        self.step_name = "setup"
        self.stats: Counter[str] = Counter()  # step, method and status of every change sent
        self.admin = self._token(Role.ADMIN)
        # The two tenants, and the project an admin's claims without one (Nova's binds) go to.
        self.members = {p: self._token(Role.MEMBER, project=p) for p in (*PROJECTS, "default")}
        self.revoked: list[dict[str, str]] = []
        self.holdings: dict[str, Holding] = {}  # live consumers
        for name, extra in TYPES.items():
            self.call(self.admin, "POST", "/v1/resource-types", json={"name": name, **extra}, expect=(201,))
        n = self.rng.randint(2, 4)
        self.machines = [
            Machine(i, f"cmp{i}x", f"machine-{i}", self._token(Role.AGENT, host=f"cmp{i}x")) for i in range(n)
        ]
        for m in self.machines:
            self.report(m, expect=(200,))
        profile = {"name": "gpu1", "groups": [{"resources:CUSTOM_GPU_PLAIN": "1"}]}
        self.call(self.admin, "POST", "/accelerator/v2/device_profiles", json=[profile], expect=(201,))
        self.vlan_declared = True
        self.projects: dict[str, str] = {}  # every consumer ever made -> its project
        self.history: list[Holding] = []  # claims made, for replays
        self.gangs: dict[str, tuple[str, list[str]]] = {}  # gang -> project, instances
        self.dirty: set[str] = set()  # devices claimed since their last completed cleanup
        self.cleaned: set[str] = set()  # devices whose cleanup completed in this step
        self.counter = 0
        self.before = self.devices_by_id()

    # ------------------------------------------------------------------ plumbing
    def _token(self, role: Role, **scope: str) -> dict[str, str]:
        created = self.store.create_token(schemas.TokenCreate(role=role, **scope), "model")
        return {"Authorization": f"Bearer {created.token}", "X-Token-Id": str(created.id)}

    def fail(self, message: str) -> None:
        raise Violation(f"seed {self.seed}, step {self.step_no} ({self.step_name}): {message}")

    def call(
        self,
        who: dict[str, str],
        method: str,
        path: str,
        *,
        expect: tuple[int, ...] | None = None,
        **kw: Any,
    ) -> httpx.Response:
        headers = {"Authorization": who["Authorization"]}
        r = self.api.request(method, path, headers=headers, **kw)
        if method != "GET":
            self.stats[f"{self.step_name} {method} {r.status_code}"] += 1
        if r.status_code >= 500:
            self.fail(f"{method} {path} answered {r.status_code}: {r.text[:2000]}")
        if r.status_code >= 400:
            try:
                error = r.json()["error"]
                code, message = error["code"], error["message"]
            except Exception:
                self.fail(f"{method} {path} answered {r.status_code} without the error body: {r.text[:500]}")
            if errors.STATUS.get(code) != r.status_code or not isinstance(message, str) or not message:
                self.fail(f"{method} {path}: {r.status_code} with code {code!r}: {r.text[:500]}")
        if expect is not None and r.status_code not in expect:
            self.fail(f"{method} {path} answered {r.status_code}, expected {expect}: {r.text[:2000]}")
        return r

    def next_id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.counter}"

    def live(self, m: Machine) -> bool:
        return not m.deleted

    def report(self, m: Machine, *, expect: tuple[int, ...] = (200,)) -> httpx.Response:
        m.generation += 1
        devs = []
        for d in machine_devices(m.index):
            if d["address"] in m.gone:
                continue
            sick = (
                {"healthy": False, "health_reason": "config space reads 0xFF"}
                if d["address"] in m.sick
                else {}
            )
            devs.append({**d, **sick})
        body = {"generation": m.generation, "host_id": m.host_id, "devices": devs}
        # A reserved device left out before its setup ends its holder's claim (it can never be
        # set up); nothing else a report does releases a claim.
        sent = {d["address"] for d in devs}
        unset_up = {
            d["consumer"]
            for d in self.call(
                self.admin, "GET", "/v1/devices", params={"host": m.name, "limit": 10000}, expect=(200,)
            ).json()
            if d["state"] == "reserved" and d["address"] not in sent
        }
        r = self._send_report(m, body, expect)
        if r.status_code == 200:
            self._released_by_report(m, unset_up)
        return r

    def _send_report(self, m: Machine, body: dict[str, Any], expect: tuple[int, ...]) -> httpx.Response:
        if expect == (200,) and self.rng.random() < 0.2:
            batch = {"reports": [{"host": m.name, "report": body}]}
            out = self.call(self.admin, "POST", "/v1/reports", json=batch, expect=(200,)).json()
            if out["failed"] or out["results"][0]["status"] != 200:
                self.fail(f"the batch report of {m.name} failed: {out}")
            if out["results"][0]["result"]["refused"]:
                self.fail(f"report of {m.name} refused devices: {out['results'][0]['result']['refused']}")
            return self.call(self.admin, "GET", f"/v1/hosts/{m.name}", expect=(200,))
        r = self.call(m.agent, "PUT", f"/v1/hosts/{m.name}/inventory", json=body, expect=expect)
        if r.status_code == 200 and r.json()["refused"]:
            self.fail(f"report of {m.name} refused devices: {r.json()['refused']}")
        return r

    def _released_by_report(self, m: Machine, unset_up: set[str]) -> None:
        live = {
            a["consumer"]
            for a in self.call(self.admin, "GET", "/v1/allocations", params={"limit": 10000}).json()
        }
        for consumer in sorted(set(self.holdings) - live):
            if consumer not in unset_up:
                self.fail(f"{consumer} was released by a report of {m.name}")
            ended = self.call(self.admin, "GET", f"/v1/allocations/{consumer}", expect=(200,)).json()
            if ended["release_reason"] != "device_missing":
                self.fail(f"{consumer} released by a report with reason {ended['release_reason']}")
            del self.holdings[consumer]
        for consumer in sorted(unset_up & live):
            if consumer in self.holdings:
                self.fail(f"{consumer}'s reserved device left {m.name}'s report; its claim is still live")

    def devices_by_id(self) -> dict[str, dict[str, Any]]:
        listed = self.call(self.admin, "GET", "/v1/devices", params={"limit": 10000}, expect=(200,)).json()
        return {d["id"]: d for d in listed}

    def pick_holding(self, project: str | None = None) -> Holding | None:
        options = [h for h in self.holdings.values() if project is None or h.project == project]
        return self.rng.choice(sorted(options, key=lambda h: h.consumer)) if options else None

    def tenant(self) -> tuple[dict[str, str], str, dict[str, Any]]:
        """(caller, project, extra body): a member of a project, or an admin for it."""
        project = self.rng.choice(PROJECTS)
        if self.rng.random() < 0.25:
            return self.admin, project, {"project": project}
        return self.members[project], project, {}

    def up_machines(self) -> list[Machine]:
        return [m for m in self.machines if self.live(m)]

    # ------------------------------------------------------------------ steps
    def step_claim(self) -> None:
        who, project, extra = self.tenant()
        body = {**self.rng.choice(claim_bodies()), **extra}
        consumer = self.next_id("vm")
        key = self.next_id("key") if self.rng.random() < 0.5 else None
        sent = {**body, "consumer": consumer, **({"idempotency_key": key} if key else {})}
        r = self.call(who, "POST", "/v1/claims", json=sent, expect=(201, 409, 403, 400))
        if r.status_code == 400 and (self.vlan_declared or "vlan" not in r.text):
            self.fail(f"claim {sent} refused: {r.text[:1000]}")
        if r.status_code != 201 and who is not self.admin:
            self.check_redacted(r.text, "a member's refused claim")
        if r.status_code == 201:
            h = Holding(consumer, project, body, key)
            self.holdings[consumer] = h
            self.projects[consumer] = project
            self.history.append(h)
            self.check_allocation(r.json(), h)
            self.check_quota_after_claim(project)
        elif r.status_code == 403:
            assert r.json()["error"]["code"] == errors.QUOTA_EXCEEDED, r.text
        elif r.status_code == 409:
            assert r.json()["error"]["code"] == errors.NO_VALID_HOST, r.text

    def step_replay(self) -> None:
        done = [h for h in self.history if h.key and h.gang is None and not h.arq]
        if not done:
            return
        h = self.rng.choice(done)
        who = self.members[h.project] if "project" not in h.body else self.admin
        sent = {**h.body, "consumer": h.consumer, "idempotency_key": h.key}
        before = self.call(self.admin, "GET", f"/v1/allocations/{h.consumer}")
        r = self.call(who, "POST", "/v1/claims", json=sent, expect=(200, 201, 400, 403, 409))
        if r.status_code == 400 and (self.vlan_declared or "vlan" not in r.text):
            self.fail(f"replay {sent} refused: {r.text[:1000]}")
        if h.consumer in self.holdings and before.status_code == 200:
            if r.status_code != 200:
                self.fail(f"replay of live {h.consumer} answered {r.status_code}: {r.text[:500]}")
            ids = sorted(d["id"] for d in r.json()["devices"])
            if ids != sorted(d["id"] for d in before.json()["devices"]):
                self.fail(f"replay of {h.consumer} answered other devices than it holds")
        elif r.status_code in (200, 201):
            if r.status_code == 200:
                self.fail(f"replay of released {h.consumer} answered 200: {r.text[:500]}")
            self.holdings[h.consumer] = h
            self.check_allocation(r.json(), h)
            self.check_quota_after_claim(h.project)

    def step_gang(self) -> None:
        who, project, extra = self.tenant()
        body = self.rng.choice(
            [
                {"extra_specs": {"hardware_resource:GPU_PLAIN": "1"}},
                {"extra_specs": {"hardware_resource:NIC_VF": "1", "hardware_resource:MIG_1G": "1"}},
                {"requests": [{"name": "g", "type": "VGPU_4Q", "first_available": [{"type": "MIG_1G"}]}]},
            ]
        )
        gang = self.next_id("gang")
        instances = [f"{gang}-{i}" for i in range(self.rng.randint(2, 3))]
        layout = self.rng.choice([{}, {"distinct_hosts": True}, {"max_per_host": 2}])
        sent = {**body, **extra, "instances": instances, "gang": gang, "layout": layout}
        if who is not self.admin and self.rng.random() < 0.3:
            explained = self.call(who, "POST", "/v1/gangs/explain", json=sent, expect=(200, 403))
            self.check_redacted(explained.text, "a member's gang explanation")
        r = self.call(who, "POST", "/v1/gangs", json=sent, expect=(201, 403, 409))
        if r.status_code != 201:
            if who is not self.admin:
                self.check_redacted(r.text, "a member's refused gang")
            return
        out = r.json()
        if [a["consumer"] for a in out["allocations"]] != instances:
            self.fail(f"gang {gang} answered {[a['consumer'] for a in out['allocations']]}")
        if layout.get("distinct_hosts"):
            hosts = [a["host"] for a in out["allocations"]]
            if len(set(hosts)) != len(hosts):
                self.fail(f"gang {gang} with distinct hosts on {hosts}")
        self.gangs[gang] = (project, instances)
        for a in out["allocations"]:
            h = Holding(a["consumer"], project, body, None, gang)
            self.holdings[a["consumer"]] = h
            self.projects[a["consumer"]] = project
            self.check_allocation(a, h)
        self.check_quota_after_claim(project)

    def step_explain(self) -> None:
        who, _project, extra = self.tenant()
        body = {**self.rng.choice(claim_bodies()), **extra}
        explained = self.call(who, "POST", "/v1/explain", json=body, expect=(200, 400))
        capacity = self.call(who, "POST", "/v1/capacity", json=body, expect=(200, 400))
        if 400 in (explained.status_code, capacity.status_code) and self.vlan_declared:
            self.fail(f"explain or capacity of {body} refused: {explained.text[:500]} {capacity.text[:500]}")
        if who is not self.admin:
            self.check_redacted(explained.text, "a member's explanation")
            self.check_redacted(capacity.text, "a member's capacity")

    def step_libvirt(self) -> None:
        h = self.pick_holding()
        if h is None:
            return
        who = self.members[h.project] if self.rng.random() < 0.6 else self.admin
        self.call(who, "GET", f"/v1/allocations/{h.consumer}/libvirt", expect=(200, 409))

    def check_redacted(self, text: str, what: str) -> None:
        names = [m.name for m in self.machines]
        if any(n in text for n in names) or "0000:" in text or any(i in text for i in self.before):
            self.fail(f"{what} names a host, an address or a device id: {text[:2000]}")

    def step_arq(self) -> None:
        """Nova's way: ARQs of a device profile, bound to a host for an instance; or deleted."""
        bound = sorted(h.consumer for h in self.holdings.values() if h.arq)
        if bound and self.rng.random() < 0.4:
            instance = self.rng.choice(bound)
            self.call(self.admin, "DELETE", ARQS, params={"instance": instance}, expect=(204, 404))
            self.holdings.pop(instance, None)
            return
        made = self.call(self.admin, "POST", ARQS, json={"device_profile_name": "gpu1"}, expect=(201,))
        arqs = [a["uuid"] for a in made.json()["arqs"]]
        instance = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        host = self.rng.choice(self.up_machines()).name
        patch = {
            a: [
                {"path": "/hostname", "op": "add", "value": host},
                {
                    "path": "/device_rp_uuid",
                    "op": "add",
                    "value": f"00000000-0000-4000-8000-{self.counter:012d}",
                },
                {"path": "/instance_uuid", "op": "add", "value": instance},
            ]
            for a in arqs
        }
        r = self.call(self.admin, "PATCH", ARQS, json=patch, expect=(202, 403, 409))
        if r.status_code == 202:
            alloc = self.call(self.admin, "GET", f"/v1/allocations/{instance}", expect=(200,)).json()
            h = Holding(
                instance, alloc["project"], {"requests": [{"name": "g", "type": "GPU_PLAIN"}]}, None, arq=True
            )
            self.holdings[instance] = h
            self.projects[instance] = alloc["project"]
            self.check_allocation(alloc, h)

    def step_patch_type(self) -> None:
        """The catalog changes under the cloud: a one-time-use flag, the params a type declares."""
        if self.rng.random() < 0.5:
            config = {"one_time_use": self.rng.random() < 0.5}
            self.call(
                self.admin, "PATCH", "/v1/resource-types/USB_TOKEN", json={"config": config}, expect=(200,)
            )
        else:
            self.vlan_declared = not self.vlan_declared
            params = TYPES["NIC_VF"]["params"] if self.vlan_declared else {}
            self.call(
                self.admin, "PATCH", "/v1/resource-types/NIC_VF", json={"params": params}, expect=(200,)
            )

    def step_revoke_agent(self) -> None:
        m = self.rng.choice(self.up_machines())
        old = m.agent
        self.call(self.admin, "DELETE", f"/v1/tokens/{old['X-Token-Id']}", expect=(200,))
        m.agent = self._token(Role.AGENT, host=m.name)
        self.call(old, "GET", f"/v1/hosts/{m.name}/work", expect=(401,))
        self.call(old, "POST", f"/v1/hosts/{m.name}/heartbeat", json={"host_id": m.host_id}, expect=(401,))

    def step_release_gang(self) -> None:
        if not self.gangs:
            return
        gang = self.rng.choice(sorted(self.gangs))
        project, instances = self.gangs[gang]
        who = self.members[project] if self.rng.random() < 0.7 else self.admin
        params = {"project": project} if who is self.admin else {}
        live = [c for c in instances if c in self.holdings]
        r = self.call(who, "DELETE", f"/v1/gangs/{gang}", params=params, expect=(204, 404))
        if live and r.status_code == 404:
            self.fail(f"gang {gang} holds {live} but its release answered 404")
        for c in instances:
            self.holdings.pop(c, None)
        del self.gangs[gang]

    def step_release(self) -> None:
        h = self.pick_holding()
        if h is None:
            return
        roll = self.rng.random()
        if roll < 0.15:
            other = next(p for p in PROJECTS if p != h.project)
            self.call(self.members[other], "DELETE", f"/v1/allocations/{h.consumer}", expect=(404,))
            return
        who = self.admin if roll < 0.35 else self.members[h.project]
        if h.arq and who is not self.admin:
            # A Nova instance's devices: its tenant project's members release them by deleting
            # the instance, never through devassign (its ARQs would still name them).
            r = self.call(who, "DELETE", f"/v1/allocations/{h.consumer}", expect=(403,))
            assert r.json()["error"]["code"] == errors.FORBIDDEN, r.text
            return
        self.call(who, "DELETE", f"/v1/allocations/{h.consumer}", expect=(204,))
        del self.holdings[h.consumer]
        after = self.call(self.admin, "GET", f"/v1/allocations/{h.consumer}", expect=(200,)).json()
        if after["released_at"] is None:
            self.fail(f"{h.consumer} is still live after its release")

    def step_move(self) -> None:
        h = self.pick_holding()
        if h is None:
            return
        now = self.call(self.admin, "GET", f"/v1/allocations/{h.consumer}", expect=(200,)).json()
        targets = [m for m in self.up_machines() if m.name != now["host"]]
        if not targets:
            return
        target = self.rng.choice(targets)
        who = self.members[h.project] if self.rng.random() < 0.6 else self.admin
        r = self.call(
            who,
            "POST",
            f"/v1/allocations/{h.consumer}/moves",
            json={"host": target.name},
            expect=(201, 400, 403, 409),
        )
        if r.status_code == 400 and (self.vlan_declared or "vlan" not in r.text):
            self.fail(f"move of {h.consumer} refused: {r.text[:1000]}")
        # A member reads its moves' hosts (GET .../moves), but never why a host refused one.
        if (
            r.status_code == 409
            and who is not self.admin
            and r.json()["error"]["code"] == errors.NO_VALID_HOST
        ):
            self.check_redacted(r.text, "a member's refused move")

    def step_finish_move(self) -> None:
        pending = []
        for h in sorted(self.holdings.values(), key=lambda h: h.consumer):
            moves = self.call(self.admin, "GET", f"/v1/allocations/{h.consumer}/moves", expect=(200,)).json()
            if moves and moves[0]["state"] == "pending":
                pending.append(h)
        if not pending:
            return
        h = self.rng.choice(pending)
        if self.rng.random() < 0.5:
            move = self.call(self.admin, "GET", f"/v1/allocations/{h.consumer}/moves", expect=(200,)).json()[
                0
            ]
            target = next((m for m in self.up_machines() if m.name == move["target_host"]), None)
            if target is not None:
                self.step_work(target)
        who = self.members[h.project] if self.rng.random() < 0.6 else self.admin
        action = "commit" if self.rng.random() < 0.6 else "abort"
        r = self.call(who, "POST", f"/v1/allocations/{h.consumer}/moves/{action}", expect=(200, 409))
        if r.status_code == 200 and r.json()["state"] != ("committed" if action == "commit" else "aborted"):
            self.fail(f"move {action} of {h.consumer} answered {r.json()['state']}")
        if r.status_code == 200 and action == "commit":
            alloc = self.call(self.admin, "GET", f"/v1/allocations/{h.consumer}", expect=(200,)).json()
            if alloc["host"] != r.json()["target_host"]:
                self.fail(f"{h.consumer} committed to {r.json()['target_host']} but is on {alloc['host']}")

    def step_work(self, m: Machine | None = None) -> None:
        if m is None:
            m = self.rng.choice(self.up_machines())
        r = self.call(m.agent, "GET", f"/v1/hosts/{m.name}/work", expect=(200,))
        items = r.json()["items"]
        results = []
        sent = []
        for item in items:
            if self.rng.random() < 0.15:
                continue
            roll = self.rng.random()
            result: dict[str, Any] = {
                "device_id": item["device"]["id"],
                "action": item["action"],
                "ticket": item["ticket"],
                "ok": True,
            }
            if item["action"] == "setup" and roll < 0.1:
                result.update(ok=False, error="vfio bind failed")
            elif item["action"] == "cleanup" and roll < 0.1:
                result.update(ok=False, error="FLR timed out")
            elif item["action"] == "cleanup" and roll < 0.15:
                result.update(healthy=False, health_reason="reads 0xFF after reset")
            results.append(result)
            sent.append((item, result))
        if not results:
            return
        out = self.call(m.agent, "POST", f"/v1/hosts/{m.name}/work", json={"results": results}, expect=(200,))
        failed: set[str] = set()
        for (item, result), outcome in zip(sent, out.json(), strict=True):
            if result["action"] == "cleanup" and result["ok"] and outcome["applied"]:
                self.cleaned.add(result["device_id"])
            if result["action"] == "setup" and not result["ok"] and outcome["applied"]:
                failed.add(item["device"]["consumer"])
        # A failed setup releases its whole allocation: nothing else does here.
        live = {a["consumer"] for a in self.call(self.admin, "GET", "/v1/allocations", expect=(200,)).json()}
        for consumer in sorted(set(self.holdings) - live):
            if consumer not in failed:
                self.fail(f"{consumer} was released by the results of {m.name}: {results}")
            del self.holdings[consumer]

    def step_clear(self) -> None:
        devs = [d for d in self.before.values() if d["state"] in ("quarantined", "unhealthy")]
        if not devs:
            return
        d = self.rng.choice(sorted(devs, key=lambda d: d["id"]))
        self.call(
            self.admin, "POST", f"/v1/devices/{d['id']}/clear", json={"reason": "checked"}, expect=(200, 409)
        )

    def step_taint(self) -> None:
        m = self.rng.choice(self.up_machines())
        effect = self.rng.choice(["NoSchedule", "Drain", "None"])
        body: dict[str, Any] = {"effect": effect, "reason": f"model {self.counter}"}
        if self.rng.random() < 0.3:
            body["expires_in"] = self.rng.choice([60, 600])
        who = self.admin if self.rng.random() < 0.5 else m.agent
        roll = self.rng.random()
        if roll < 0.4:
            devs = [d for d in self.before.values() if d["host"] == m.name]
            if not devs:
                return
            d = self.rng.choice(sorted(devs, key=lambda d: d["id"]))
            self.call(who, "POST", f"/v1/devices/{d['id']}/taints", json=body, expect=(201, 409))
        else:
            if roll < 0.7:
                body["parent"] = self.rng.choice([PF, T4, A100])
            self.call(who, "POST", f"/v1/hosts/{m.name}/taints", json=body, expect=(201, 409))

    def step_untaint(self) -> None:
        m = self.rng.choice(self.up_machines())
        who = self.admin if self.rng.random() < 0.5 else m.agent
        roll = self.rng.random()
        if roll < 0.3:
            self.call(who, "DELETE", f"/v1/hosts/{m.name}/taints", expect=(200,))
        elif roll < 0.6:
            parent = self.rng.choice([PF, T4, A100])
            self.call(who, "DELETE", f"/v1/hosts/{m.name}/taints", params={"parent": parent}, expect=(200,))
        else:
            taints = self.call(who, "GET", "/v1/taints", params={"host": m.name}, expect=(200,)).json()
            if taints:
                t = self.rng.choice(taints)
                # A host's agent lifts what an agent set, never an admin's taint.
                lifts = who is self.admin or t["set_by"].startswith("agent:")
                self.call(
                    who,
                    "DELETE",
                    f"/v1/hosts/{m.name}/taints",
                    params={"taint": t["id"]},
                    expect=(200,) if lifts else (403,),
                )

    def step_quota(self) -> None:
        project = self.rng.choice(PROJECTS)
        type_name = self.rng.choice(["GPU_PLAIN", "NIC_VF", "MIG_1G", "VGPU_4Q", "MIG_3G"])
        limit = self.rng.choice([None, None, 0, 1, 2, 3, 5])
        self.call(
            self.admin, "PUT", f"/v1/quotas/{project}/{type_name}", json={"limit": limit}, expect=(204,)
        )

    def step_report(self) -> None:
        m = self.rng.choice(self.up_machines())
        addresses = [d["address"] for d in machine_devices(m.index)]
        roll = self.rng.random()
        if roll < 0.35:
            m.gone.add(self.rng.choice(addresses))
        elif roll < 0.65 and m.gone:
            m.gone.discard(self.rng.choice(sorted(m.gone)))
        elif roll < 0.8:
            m.sick.add(self.rng.choice(addresses))
        elif m.sick:
            m.sick.discard(self.rng.choice(sorted(m.sick)))
        self.report(m)

    def step_time(self) -> None:
        self.clock.advance(self.rng.choice([20, 60, 120, 200, 320]))
        for m in self.up_machines():
            if self.rng.random() < 0.1:
                m.alive = not m.alive
            if m.alive:
                self.call(
                    m.agent,
                    "POST",
                    f"/v1/hosts/{m.name}/heartbeat",
                    json={"host_id": m.host_id},
                    expect=(204,),
                )
        expired = self.store.sweep()
        for c in expired:
            self.holdings.pop(c, None)

    def step_rename(self) -> None:
        m = self.rng.choice(self.up_machines())
        old, old_agent = m.name, m.agent
        new = f"{m.name.split('-r')[0]}-r{self.next_id('n').split('-')[1]}x"
        self.call(self.admin, "POST", f"/v1/hosts/{old}/rename", json={"new_name": new}, expect=(200,))
        m.name = new
        m.agent = self._token(Role.AGENT, host=new)
        # The old name's agent is no longer that machine: its report is refused, nothing changes.
        m.generation += 1
        body = {"generation": m.generation, "host_id": m.host_id, "devices": []}
        r = self.call(old_agent, "PUT", f"/v1/hosts/{old}/inventory", json=body, expect=(409,))
        if r.json()["error"]["code"] != errors.HOST_ID_MISMATCH:
            self.fail(f"the old name's report answered {r.text}")
        self.call(old_agent, "GET", f"/v1/hosts/{new}/work", expect=(403,))
        self.call(self.admin, "GET", f"/v1/hosts/{old}", expect=(404,))

    def step_delete_host(self) -> None:
        m = self.rng.choice(self.up_machines())
        # Unforced, a host whose agent was heard lately is refused (it would register again).
        force = {"force": "true"} if self.rng.random() < 0.7 else {}
        r = self.call(self.admin, "DELETE", f"/v1/hosts/{m.name}", params=force, expect=(204, 409))
        if r.status_code == 204:
            # The machine comes back at once with the same name: new devices, clean.
            m.generation = 0
            self.report(m)

    def step_revoke(self) -> None:
        project = self.rng.choice(sorted(self.members))
        old = self.members[project]
        self.call(self.admin, "DELETE", f"/v1/tokens/{old['X-Token-Id']}", expect=(200,))
        self.revoked.append(old)
        self.members[project] = self._token(Role.MEMBER, project=project)
        r = self.call(old, "GET", "/v1/allocations", expect=(401,))
        assert r.json()["error"]["code"] == errors.UNAUTHENTICATED
        self.call(
            old,
            "POST",
            "/v1/claims",
            json={"consumer": self.next_id("vm"), **claim_bodies()[0]},
            expect=(401,),
        )

    STEPS: tuple[tuple[str, int], ...] = (
        ("claim", 22),
        ("replay", 4),
        ("gang", 5),
        ("release_gang", 3),
        ("release", 10),
        ("move", 5),
        ("finish_move", 5),
        ("work", 22),
        ("clear", 3),
        ("explain", 3),
        ("libvirt", 2),
        ("taint", 4),
        ("untaint", 4),
        ("quota", 4),
        ("report", 6),
        ("time", 5),
        ("rename", 1),
        ("delete_host", 1),
        ("revoke", 1),
        ("revoke_agent", 1),
        ("arq", 3),
        ("patch_type", 1),
    )

    def run(self, steps: int) -> None:
        names = [n for n, _ in self.STEPS]
        weights = [w for _, w in self.STEPS]
        self.check()
        for self.step_no in range(1, steps + 1):
            self.step_name = self.rng.choices(names, weights)[0]
            self.cleaned = set()
            getattr(self, f"step_{self.step_name}")()
            self.check(capacity=self.step_no % 5 == 0)
            if self.step_no % 10 == 0:
                self.check_pages()
        if os.environ.get("DEVASSIGN_MODEL_STATS"):
            print(f"seed {self.seed}:", *sorted(self.stats.items()), sep="\n  ")

    # ------------------------------------------------------------------ invariants
    def check_allocation(self, alloc: dict[str, Any], h: Holding) -> None:
        allowed = allowed_types(h.body)
        types = {d["type"] for d in alloc["devices"]}
        if not types <= allowed:
            self.fail(f"{h.consumer} asked for {sorted(allowed)} and got {sorted(types)}")
        if alloc["project"] != h.project:
            self.fail(f"{h.consumer} of {h.project} is recorded for {alloc['project']}")

    def check_quota_after_claim(self, project: str) -> None:
        for row in self.call(
            self.admin, "GET", "/v1/quotas", params={"project": project}, expect=(200,)
        ).json():
            # A limit lowered below the use never takes devices back, but a claim never adds to it.
            before = self._quota_before.get((project, row["type"]))
            if row["used"] > row["limit"] and (before is None or row["used"] > before):
                self.fail(f"{project} holds {row['used']} {row['type']} over its limit {row['limit']}")

    def check(self, *, capacity: bool = False) -> None:
        now = self.devices_by_id()
        self.check_transitions(self.before, now)
        self.check_db()
        audit = self.call(self.admin, "GET", "/v1/audit", params={"down_for": 31536000}, expect=(200,)).json()
        if audit["findings"]:
            self.fail(f"the audit found {audit['findings']}")
        self.check_allocations(now)
        self.check_counts(now, capacity=capacity)
        self.check_quotas()
        self.check_scopes()
        self.before = now
        self._hosts_before = {
            h["name"]: h["status"] for h in self.call(self.admin, "GET", "/v1/hosts", expect=(200,)).json()
        }
        self._quota_before = {
            (q["project"], q["type"]): q["used"]
            for q in self.call(self.admin, "GET", "/v1/quotas", expect=(200,)).json()
        }

    _quota_before: dict[tuple[str, str], int] = {}
    _hosts_before: dict[str, str] = {}

    def check_transitions(self, before: dict[str, dict[str, Any]], now: dict[str, dict[str, Any]]) -> None:
        for i, d in now.items():
            if d["state"] in ("reserved", "assigned", "cleaning"):
                self.dirty.add(i)
        self.dirty -= {
            i for i in self.cleaned if now.get(i, {}).get("state") not in ("reserved", "assigned", "cleaning")
        }
        for i, d in now.items():
            was = before.get(i, {}).get("state")
            if d["state"] == "available" and i in self.dirty:
                self.fail(
                    f"device {d['host']}/{d['address']} is available before its cleanup completed (was {was})"
                )
            if d["state"] == "reserved" and was not in (None, "available", "reserved", "missing"):
                self.fail(f"device {d['host']}/{d['address']} went from {was} to reserved")
            if d["state"] == "reserved" and was == "available":
                prior = before[i]
                if _schedulable_taint(prior):
                    self.fail(f"tainted {d['host']}/{d['address']} was claimed: {prior['taints']}")
                if self._hosts_before.get(prior["host"]) != "up":
                    self.fail(f"{d['host']}/{d['address']} was claimed on a host that was down")
            if d["state"] == "reserved" and was == "missing" and self.step_name != "report":
                self.fail(f"device {d['host']}/{d['address']} went from missing to reserved without a report")

    def check_db(self) -> None:
        with self.store.db.read() as conn:
            found = violations(conn)
        if found:
            self.fail(f"the database breaks its invariants: {found}")

    def check_allocations(self, now: dict[str, dict[str, Any]]) -> None:
        listed = self.call(
            self.admin, "GET", "/v1/allocations", params={"limit": 10000}, expect=(200,)
        ).json()
        seen: Counter[str] = Counter()
        consumers = set()
        for a in listed:
            consumers.add(a["consumer"])
            h = self.holdings.get(a["consumer"])
            if h is None:
                self.fail(f"{a['consumer']} is live in the API but was released or never claimed")
            self.check_allocation(a, h)
            for d in a["devices"]:
                seen[d["id"]] += 1
                dev = now.get(d["id"])
                if dev is None:
                    self.fail(f"{a['consumer']} holds device {d['id']} that the device listing lacks")
                if dev["host"] != a["host"]:
                    self.fail(f"{a['consumer']} on {a['host']} holds {dev['host']}/{dev['address']}")
                if dev["state"] not in ("reserved", "assigned", "missing"):
                    self.fail(f"{a['consumer']} holds {dev['host']}/{dev['address']} in state {dev['state']}")
                if dev["type"] != d["type"]:
                    self.fail(f"{a['consumer']}: device {d['id']} is {dev['type']}, listed as {d['type']}")
        doubles = [i for i, n in seen.items() if n > 1]
        if doubles:
            self.fail(f"devices in two live allocations: {doubles}")
        missing = set(self.holdings) - consumers
        if missing:
            self.fail(f"consumers the walk holds are not listed: {sorted(missing)}")
        # Nova attaches what an ARQ names: only an instance that holds its devices has one.
        for arq in self.call(self.admin, "GET", ARQS, expect=(200,)).json()["arqs"]:
            if arq["attach_handle_info"] is not None and arq["instance_uuid"] not in consumers:
                self.fail(
                    f"ARQ {arq['uuid']} ({arq['state']}) names a device of released {arq['instance_uuid']}"
                )
        # Every held device is an allocation's, or a pending move's target.
        targets = self._move_targets()
        for i, d in now.items():
            if d["state"] in HELD and i not in seen and i not in targets:
                self.fail(
                    f"{d['host']}/{d['address']} is {d['state']} for {d['consumer']}: no allocation lists it"
                )

    def _move_targets(self) -> dict[str, str]:
        """Device id -> project, of the pending moves' targets (internal allocations)."""
        with self.store.db.read() as conn:
            rows = conn.execute(
                sa.select(allocation_items.c.device_id, allocations.c.project)
                .join(allocations, allocations.c.id == allocation_items.c.allocation_id)
                .where(
                    allocations.c.released_at.is_(None),
                    allocation_items.c.released_at.is_(None),
                    allocations.c.consumer.like("\\_move:%", escape="\\"),
                )
            ).all()
        return {r.device_id: r.project for r in rows}

    def check_counts(self, now: dict[str, dict[str, Any]], *, capacity: bool) -> None:
        hosts = {h["name"]: h for h in self.call(self.admin, "GET", "/v1/hosts", expect=(200,)).json()}
        for t in self.call(self.admin, "GET", "/v1/resource-types", expect=(200,)).json():
            mine = [d for d in now.values() if d["type"] == t["name"]]
            states = Counter(d["state"] for d in mine)
            c = t["counts"]
            expected_total = sum(n for s, n in states.items() if s != "removed")
            if c["total"] != expected_total:
                self.fail(f"{t['name']}: total {c['total']}, devices say {expected_total}")
            for s in ("reserved", "assigned", "cleaning", "quarantined", "unhealthy", "missing"):
                if c[s] != states.get(s, 0):
                    self.fail(f"{t['name']}: {s} {c[s]}, devices say {states.get(s, 0)} ({c})")
            free = [d for d in mine if d["state"] == "available"]
            up_free = [d for d in free if hosts[d["host"]]["status"] == "up"]
            untainted = [d for d in up_free if not _schedulable_taint(d)]
            if c["available"] + c["partitioned"] + c["tainted"] + c["down"] != len(free):
                self.fail(f"{t['name']}: counts {c} do not add up to the {len(free)} free devices")
            if c["down"] != len(free) - len(up_free):
                self.fail(f"{t['name']}: down {c['down']}, devices say {len(free) - len(up_free)} ({c})")
            if c["tainted"] != len(up_free) - len(untainted):
                self.fail(f"{t['name']}: tainted {c['tainted']}, devices say {len(up_free) - len(untainted)}")
            if capacity and t["name"] in CAPACITY_IS_AVAILABLE:
                spec = f"hardware_resource:{t['name']}=1"
                cap = self.call(
                    self.admin, "GET", "/v1/capacity", params={"spec": spec}, expect=(200,)
                ).json()
                if cap["total"] != c["available"]:
                    self.fail(f"{t['name']}: capacity {cap['total']}, the types count {c['available']} ({c})")

    def check_quotas(self) -> None:
        with self.store.db.read() as conn:
            rows = conn.execute(
                sa.select(allocations.c.project, resource_types.c.name, sa.func.count().label("n"))
                .select_from(
                    allocation_items.join(allocations, allocations.c.id == allocation_items.c.allocation_id)
                    .join(devices, devices.c.id == allocation_items.c.device_id)
                    .join(resource_types, resource_types.c.id == devices.c.type_id)
                )
                .where(allocations.c.released_at.is_(None), allocation_items.c.released_at.is_(None))
                .group_by(allocations.c.project, resource_types.c.name)
            ).all()
        held = {(r.project, r.name): r.n for r in rows}
        # The same from the API: the listed allocations and the pending moves' targets.
        listed = self.call(
            self.admin, "GET", "/v1/allocations", params={"limit": 10000}, expect=(200,)
        ).json()
        from_api: Counter[tuple[str, str]] = Counter()
        for a in listed:
            for d in a["devices"]:
                from_api[(a["project"], d["type"])] += 1
        now = self.before_types()
        for device_id, project in self._move_targets().items():
            from_api[(project, now[device_id])] += 1
        if dict(from_api) != held:
            self.fail(f"live holdings per project differ: API {dict(from_api)}, database {held}")
        for q in self.call(self.admin, "GET", "/v1/quotas", expect=(200,)).json():
            if q["used"] != held.get((q["project"], q["type"]), 0):
                self.fail(f"quota {q}: the project holds {held.get((q['project'], q['type']), 0)}")
            mine = self.call(self.members[q["project"]], "GET", "/v1/quotas", expect=(200,)).json()
            if q not in mine or any(x["project"] != q["project"] for x in mine):
                self.fail(f"member of {q['project']} reads quotas {mine}")

    def _project_of(self, consumer: str) -> str | None:
        """The project of a consumer the walk made, or of a move's internal one."""
        if consumer in self.projects:
            return self.projects[consumer]
        with self.store.db.read() as conn:
            found = conn.execute(sa.select(consumers.c.project).where(consumers.c.uuid == consumer)).scalar()
        return found

    def before_types(self) -> dict[str, str]:
        with self.store.db.read() as conn:
            rows = conn.execute(
                sa.select(devices.c.id, resource_types.c.name).join(
                    resource_types, resource_types.c.id == devices.c.type_id
                )
            ).all()
        return {r.id: r.name for r in rows}

    def check_scopes(self) -> None:
        admin = self.call(self.admin, "GET", "/v1/allocations", params={"limit": 10000}, expect=(200,)).json()
        for project, who in self.members.items():
            mine = self.call(who, "GET", "/v1/allocations", params={"limit": 10000}, expect=(200,)).json()
            expected = sorted(a["consumer"] for a in admin if a["project"] == project)
            if sorted(a["consumer"] for a in mine) != expected:
                self.fail(f"member of {project} lists {[a['consumer'] for a in mine]}, not {expected}")
            other = next(p for p in PROJECTS if p != project)
            self.call(who, "GET", "/v1/allocations", params={"project": other}, expect=(403,))
            theirs = [a["consumer"] for a in admin if a["project"] == other]
            if theirs:
                self.call(who, "GET", f"/v1/allocations/{self.rng.choice(theirs)}", expect=(404,))
            events = self.call(who, "GET", "/v1/events", params={"limit": 100}, expect=(200,)).json()
            for e in events:
                if e["consumer"] is not None and self._project_of(e["consumer"]) != project:
                    self.fail(f"member of {project} reads event {e}")
        for m in self.up_machines():
            for d in self.call(m.agent, "GET", "/v1/devices", params={"limit": 10000}, expect=(200,)).json():
                if d["host"] != m.name:
                    self.fail(f"agent of {m.name} lists {d['host']}/{d['address']}")
            for a in self.call(m.agent, "GET", "/v1/allocations", expect=(200,)).json():
                if a["host"] != m.name:
                    self.fail(f"agent of {m.name} lists {a['consumer']} on {a['host']}")
            for e in self.call(m.agent, "GET", "/v1/events", params={"limit": 100}, expect=(200,)).json():
                if e["host"] != m.name:
                    self.fail(f"agent of {m.name} reads event {e}")

    def check_pages(self) -> None:
        """The dashboard and the metrics render whatever state the walk left, and the metrics'
        fleet gauges say what the API says."""
        self.check_metrics(self.call(self.admin, "GET", "/metrics", expect=(200,)).text)
        for who in (self.admin, self.members[PROJECTS[0]], self.machines[0].agent):
            self.api.cookies.clear()
            self.api.cookies.set("devassign_token", who["Authorization"].removeprefix("Bearer "))
            for page in ("/ui/", "/ui/allocations", "/ui/events", "/ui/hosts", "/ui/devices"):
                r = self.api.get(page)
                if r.status_code >= 500 or r.status_code not in (200, 403):
                    self.fail(f"{page} answered {r.status_code}: {r.text[:1000]}")
                if page == "/ui/" and r.status_code == 200:
                    self.check_overview(r.text)
            self.api.cookies.clear()

    def check_overview(self, page: str) -> None:
        """The overview's numbers per type are the API's, and add up to the total."""
        for t in self.call(self.admin, "GET", "/v1/resource-types", expect=(200,)).json():
            row = re.search(rf'<tr data-type="{t["name"]}">(.*?)</tr>', page, re.S)
            if row is None:
                self.fail(f"the overview has no row for {t['name']}")
                return
            shown = {k: int(v) for k, v in re.findall(r'<span data-count="(\w+)">(\d+)</span>', row.group(1))}
            c = t["counts"]
            expected = {k: c[k] for k in shown if k != "out_of_service"}
            if {k: v for k, v in shown.items() if k != "out_of_service"} != expected or sum(
                n for k, n in shown.items() if k != "total"
            ) != c["total"]:
                self.fail(f"{t['name']}: the overview shows {shown}, the types count {c}")

    def check_metrics(self, text: str) -> None:
        samples = {
            (x.name, frozenset(x.labels.items())): x.value
            for family in text_string_to_metric_families(text)
            for x in family.samples
        }

        def gauge(name: str, **labels: str) -> float:
            return samples.get((name, frozenset(labels.items())), 0.0)

        states = ("available", "tainted", "partitioned", "down", "reserved", "assigned", "cleaning")
        states += ("quarantined", "unhealthy", "missing")
        for t in self.call(self.admin, "GET", "/v1/resource-types", expect=(200,)).json():
            got = {s: gauge("devassign_devices", type=t["name"], state=s) for s in states}
            if got != {s: t["counts"][s] for s in states}:
                self.fail(f"{t['name']}: /metrics says {got}, the types count {t['counts']}")
        hosts = self.call(self.admin, "GET", "/v1/hosts", expect=(200,)).json()
        for status in ("up", "down"):
            n = sum(h["status"] == status for h in hosts)
            if gauge("devassign_hosts", state=status) != n:
                self.fail(f"/metrics says {gauge('devassign_hosts', state=status)} hosts {status}, not {n}")
        for q in self.call(self.admin, "GET", "/v1/quotas", expect=(200,)).json():
            labels = {"project": q["project"], "type": q["type"]}
            if gauge("devassign_quota_used_devices", **labels) != q["used"]:
                self.fail(f"/metrics says {gauge('devassign_quota_used_devices', **labels)} used of {q}")


def _schedulable_taint(d: dict[str, Any]) -> bool:
    return any(t["effect"] in ("NoSchedule", "Drain") for t in d.get("taints", []))


@pytest.fixture
def walk_api(store: Store) -> Iterator[TestClient]:
    from tests.conftest import make_client

    with make_client(store, auth=True) as client:
        yield client


@pytest.mark.parametrize("seed", SEEDS)
def test_the_cloud_keeps_its_invariants_through_a_random_walk(
    walk_api: TestClient, store: Store, clock: Clock, seed: int
) -> None:
    CloudWalk(walk_api, store, clock, seed).run(STEPS)
