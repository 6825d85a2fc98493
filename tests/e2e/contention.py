"""Contention workloads against real servers, and the SQL checks that judge their outcome.

Used by ``test_claim_concurrency.py``. The clients are threads with their own ``httpx``
client each; the "cleaner" stands in for the agent's cleanup (``cleaning -> available``),
for which there is no API yet, by a direct SQL update plus the store's own recount.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import sqlalchemy as sa

from devassign.store import Database
from devassign.store.inventory import recount
from devassign.store.schema import allocation_items, allocations, devices, events, inventory

HELD_STATES = ("reserved", "assigned")
TIMEOUT = httpx.Timeout(120.0)


# ---------------------------------------------------------------- inventory


def pci(address: str, type: str, **extra: Any) -> dict[str, Any]:
    """A reported plain PCI device (no IOMMU group, no parent)."""
    return {
        "address": address,
        "kind": "pci",
        "type": type,
        "vendor_id": "10de",
        "product_id": "1eb8",
        "numa_node": 0,
        "iommu_group": None,
        "driver": "vfio-pci",
        "parent": None,
        "attributes": {},
        **extra,
    }


def create_types(url: str, *names: str) -> None:
    for name in names:
        r = httpx.post(f"{url}/v1/resource-types", json={"name": name}, timeout=TIMEOUT)
        assert r.status_code == 201, r.text


def report(url: str, host: str, devs: list[dict[str, Any]], generation: int = 1) -> None:
    r = httpx.put(
        f"{url}/v1/hosts/{host}/inventory",
        json={"generation": generation, "devices": devs},
        timeout=TIMEOUT,
    )
    assert r.status_code == 200 and not r.json()["refused"], r.text


def gpu_hosts(url: str, type: str, hosts: int, per_host: int) -> list[str]:
    """``hosts`` hosts of ``per_host`` devices of ``type`` each; returns the host names."""
    names = [f"load-{h}" for h in range(hosts)]
    for name in names:
        report(url, name, [pci(f"0000:{0x10 + i:02x}:00.0", type) for i in range(per_host)])
    return names


def claim_body(consumer: str, type: str, count: int, key: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"consumer": consumer, "extra_specs": {f"hardware_resource:{type}": str(count)}}
    if key is not None:
        body["idempotency_key"] = key
    return body


def error_code(resp: httpx.Response) -> str | None:
    try:
        return str(resp.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None


def describe(resp: httpx.Response) -> str:
    return f"{resp.request.method} {resp.request.url.path} -> {resp.status_code}: {resp.text[:300]}"


# ---------------------------------------------------------------- the database's view


@contextlib.contextmanager
def snapshot(db: Database) -> Iterator[sa.Connection]:
    """One consistent read of the whole database (SQLite: a WAL snapshot; PG: REPEATABLE READ)."""
    if db.is_sqlite:
        with db.read() as conn:
            yield conn
    else:
        with (
            db.engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn,
            conn.begin(),
        ):
            yield conn


def violations(conn: sa.Connection, *, counts: bool = True) -> list[str]:
    """Every broken invariant of holdings visible in one snapshot (empty when all is well)."""
    found: list[str] = []
    doubles = conn.execute(
        sa.select(allocation_items.c.device_id, sa.func.count().label("n"))
        .where(allocation_items.c.released_at.is_(None))
        .group_by(allocation_items.c.device_id)
        .having(sa.func.count() > 1)
    ).all()
    found += [f"device {r.device_id} is in {r.n} live allocation items" for r in doubles]
    live_items = {
        (r.device_id, r.allocation_id)
        for r in conn.execute(
            sa.select(allocation_items.c.device_id, allocation_items.c.allocation_id)
            .join(allocations, allocations.c.id == allocation_items.c.allocation_id)
            .where(allocations.c.released_at.is_(None))
        )
    }
    per_device = Counter(d for d, _ in live_items)
    found += [f"device {d} belongs to {n} live allocations" for d, n in per_device.items() if n > 1]
    held: set[tuple[str, int]] = set()
    gone: set[tuple[str, int]] = set()  # a held device that vanished from its host's report
    for r in conn.execute(
        sa.select(devices.c.id, devices.c.allocation_id, devices.c.state).where(
            devices.c.state.in_([*HELD_STATES, "missing"])
        )
    ):
        (gone if r.state == "missing" else held).add((r.id, r.allocation_id))
    found += [f"device {d} is held for allocation {a} but not in it" for d, a in sorted(held - live_items)]
    found += [
        f"device {d} is in live allocation {a} but neither held for it nor missing"
        for d, a in sorted(live_items - held - gone)
    ]
    both = conn.execute(
        sa.text(
            "SELECT p.host_id, p.address FROM devices p JOIN devices c"
            " ON c.host_id = p.host_id AND c.parent = p.address"
            " WHERE p.state IN ('reserved', 'assigned') AND c.state IN ('reserved', 'assigned')"
        )
    ).all()
    found += [f"host {r.host_id}: device {r.address} and a device under it are both held" for r in both]
    torn = conn.execute(
        sa.select(allocation_items.c.device_id, allocation_items.c.allocation_id)
        .join(allocations, allocations.c.id == allocation_items.c.allocation_id)
        .where((allocation_items.c.released_at.is_(None)) != (allocations.c.released_at.is_(None)))
    ).all()
    found += [f"item {r.device_id} of allocation {r.allocation_id} disagrees on release" for r in torn]
    if counts:
        found += inventory_drift(conn)
    return found


def inventory_drift(conn: sa.Connection) -> list[str]:
    """Rows of ``inventory`` that disagree with a recount from ``devices``."""
    expected = {
        (r.host_id, r.type_id): (int(r.total), int(r.available or 0))
        for r in conn.execute(
            sa.select(
                devices.c.host_id,
                devices.c.type_id,
                sa.func.count().label("total"),
                # Free and untainted: a tainted device is not offered to claims.
                sa.func.sum(
                    sa.case((sa.and_(devices.c.state == "available", devices.c.taint.is_(None)), 1), else_=0)
                ).label("available"),
            )
            .where(devices.c.state != "removed")
            .group_by(devices.c.host_id, devices.c.type_id)
        )
    }
    stored = {
        (r.host_id, r.type_id): (r.total, r.available)
        for r in conn.execute(
            sa.select(
                inventory.c.host_id,
                inventory.c.type_id,
                inventory.c.total,
                # What pools cannot give now is kept apart: together, what the devices say is free.
                (inventory.c.available + inventory.c.carved).label("available"),
            )
        )
    }
    return [
        f"inventory of host {k[0]} type {k[1]}: stored (total, available) {stored.get(k)}, "
        f"devices say {expected.get(k)}"
        for k in sorted(set(expected) | set(stored))
        if stored.get(k) != expected.get(k)
    ]


def clean(db: Database) -> int:
    """Stand-in for the agent's cleanup: every ``cleaning`` device becomes ``available``.

    Done the way the store changes device state: in one transaction with the recount of
    the host's ``inventory`` rows. Returns how many devices were cleaned.
    """

    def run(conn: sa.Connection) -> int:
        now = datetime.now(UTC)
        hosts = conn.execute(
            devices.update()
            .where(devices.c.state == "cleaning")
            .values(
                state="available",
                allocation_id=None,
                facts=None,
                quarantine_reason=None,
                state_changed_at=now,
                updated_at=now,
            )
            .returning(devices.c.host_id)
        ).all()
        for host_id in sorted({h for (h,) in hosts}):
            recount(conn, host_id)
        return len(hosts)

    return db.retrying(run)


class Background:
    """Runs ``step`` every ``interval`` seconds in a thread until stopped; keeps its failures."""

    def __init__(self, name: str, step: Callable[[], object], interval: float) -> None:
        self.step = step
        self.interval = interval
        self.errors: list[str] = []
        self.runs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.step()
                self.runs += 1
            except Exception as exc:
                self.errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")

    def __enter__(self) -> Background:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


class Monitor:
    """Checks the holding invariants on consistent snapshots while a workload runs."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.found: list[str] = []

    def check(self) -> None:
        with snapshot(self.db) as conn:
            self.found += violations(conn)


# ---------------------------------------------------------------- the workload


@dataclass
class Held:
    consumer: str
    key: str
    host: str
    devices: tuple[str, ...]
    since: float  # time.monotonic() when the 201 arrived: certainly live from here on


@dataclass
class Tally:
    """What one client saw."""

    created: list[Held] = field(default_factory=list)
    releases: int = 0
    replays: int = 0
    no_valid_host: int = 0
    conflicts: int = 0
    ops: int = 0
    unexpected: list[str] = field(default_factory=list)
    # (device, consumer, start, end): the device was certainly held by consumer in [start, end]
    intervals: list[tuple[str, str, float, float]] = field(default_factory=list)
    live: dict[str, Held] = field(default_factory=dict)


@dataclass
class Result:
    tallies: list[Tally]
    elapsed: float

    @property
    def created(self) -> list[Held]:
        return [h for t in self.tallies for h in t.created]

    @property
    def live(self) -> dict[str, Held]:
        return {c: h for t in self.tallies for c, h in t.live.items()}

    def total(self, name: str) -> int:
        return sum(getattr(t, name) for t in self.tallies)

    @property
    def unexpected(self) -> list[str]:
        return [u for t in self.tallies for u in t.unexpected]

    def overlaps(self) -> list[str]:
        """Pairs of claims that certainly held one device at the same time."""
        now = time.monotonic()
        spans: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
        for t in self.tallies:
            for device, consumer, start, end in t.intervals:
                spans[device].append((start, end, consumer))
            for h in t.live.values():
                for device in h.devices:
                    spans[device].append((h.since, now, h.consumer))
        found = []
        for device, items in spans.items():
            items.sort()
            for (s1, e1, c1), (s2, _e2, c2) in itertools.pairwise(items):
                if s2 < e1:
                    found.append(
                        f"device {device} held by {c1} and {c2} at once ({s1:.3f}-{e1:.3f}, {s2:.3f})"
                    )
        return found

    def summary(self) -> str:
        ops = self.total("ops")
        claims = len(self.created) + self.total("no_valid_host")
        return (
            f"{ops} operations in {self.elapsed:.1f}s ({ops / self.elapsed:.0f} ops/s): "
            f"{len(self.created)} claims succeeded ({len(self.created) / self.elapsed:.0f}/s), "
            f"{self.total('no_valid_host')} refused no_valid_host, "
            f"{claims / self.elapsed:.0f} claim attempts/s, "
            f"{self.total('releases')} releases, {self.total('replays')} replays, "
            f"{self.total('conflicts')} consumer conflicts"
        )


class Workload:
    """``clients`` threads, spread over ``urls``, doing about ``operations`` claims and releases.

    Each client owns a few consumers, so it knows exactly which of them hold an allocation:
    a release of a held consumer must be a 204, a replay with the claim's idempotency key a
    200 with the same devices, another claim for a held consumer a 409 consumer_conflict,
    and a claim for a free consumer a 201 or a 409 no_valid_host. Anything else is recorded
    as unexpected.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        type: str,
        clients: int,
        operations: int,
        consumers_per_client: int = 3,
        counts: Sequence[int] = (1, 1, 2),
        deadline_s: float = 90.0,
        seed: int = 0,
    ) -> None:
        self.urls = list(urls)
        self.type = type
        self.clients = clients
        self.per_client = math.ceil(operations / clients)
        self.consumers_per_client = consumers_per_client
        self.counts = tuple(counts)
        self.deadline_s = deadline_s
        self.seed = seed

    def run(self) -> Result:
        tallies = [Tally() for _ in range(self.clients)]
        start_line = threading.Barrier(self.clients)
        deadline = time.monotonic() + self.deadline_s
        threads = [
            threading.Thread(target=self._client, args=(i, tallies[i], start_line, deadline), daemon=True)
            for i in range(self.clients)
        ]
        began = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=self.deadline_s + 180)
        elapsed = time.monotonic() - began
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            tallies[0].unexpected.append(f"clients still running after the deadline: {stuck}")
        return Result(tallies, elapsed)

    def _client(self, i: int, tally: Tally, start_line: threading.Barrier, deadline: float) -> None:
        rng = random.Random(self.seed * 1000 + i)
        consumers = [f"w{i}-c{j}" for j in range(self.consumers_per_client)]
        try:
            start_line.wait(timeout=60)
            with httpx.Client(base_url=self.urls[i % len(self.urls)], timeout=TIMEOUT) as client:
                for n in range(self.per_client):
                    if time.monotonic() > deadline:
                        return
                    try:
                        self._one(client, rng, n, consumers, tally)
                    except httpx.TransportError as exc:  # e.g. the server dropped the connection
                        tally.unexpected.append(f"client {i}: {type(exc).__name__}: {exc}")
                    tally.ops += 1
        except Exception:
            tally.unexpected.append(f"client {i}: {traceback.format_exc(limit=4)}")

    def _one(
        self, client: httpx.Client, rng: random.Random, n: int, consumers: list[str], tally: Tally
    ) -> None:
        live = tally.live
        free = [c for c in consumers if c not in live]
        r = rng.random()
        if live and (r < 0.40 or not free):
            consumer = rng.choice(sorted(live))
            held = live.pop(consumer)
            end = time.monotonic()
            try:
                resp = client.delete(f"/v1/allocations/{consumer}")
            except httpx.TransportError:
                live[consumer] = held  # a failed release rolled back: it still holds its devices
                raise
            if resp.status_code != 204:
                live[consumer] = held
                tally.unexpected.append(describe(resp))
                return
            tally.releases += 1
            tally.intervals += [(d, consumer, held.since, end) for d in held.devices]
        elif live and r < 0.45:
            consumer = rng.choice(sorted(live))
            held = live[consumer]
            resp = client.post(
                "/v1/claims", json=claim_body(consumer, self.type, len(held.devices), key=held.key)
            )
            ids = (
                tuple(sorted(d["id"] for d in resp.json().get("devices", [])))
                if resp.status_code == 200
                else ()
            )
            if resp.status_code != 200 or ids != held.devices:
                tally.unexpected.append(f"replay of {consumer} with its key: {describe(resp)}")
                return
            tally.replays += 1
        elif live and r < 0.50:
            consumer = rng.choice(sorted(live))
            resp = client.post("/v1/claims", json=claim_body(consumer, self.type, 1, key=f"other-{n}"))
            if resp.status_code != 409 or error_code(resp) != "consumer_conflict":
                tally.unexpected.append(f"second claim of held {consumer}: {describe(resp)}")
                return
            tally.conflicts += 1
        else:
            consumer = rng.choice(free)
            key = f"{consumer}-{n}"
            count = rng.choice(self.counts)
            resp = client.post("/v1/claims", json=claim_body(consumer, self.type, count, key=key))
            if resp.status_code == 201:
                got = resp.json()
                devs = got["devices"]
                if (
                    len(devs) != count
                    or got["consumer"] != consumer
                    or any(d["state"] != "reserved" or d["type"] != self.type for d in devs)
                ):
                    tally.unexpected.append(f"claim of {count} for {consumer}: {describe(resp)}")
                held = Held(
                    consumer, key, got["host"], tuple(sorted(d["id"] for d in devs)), time.monotonic()
                )
                live[consumer] = held
                tally.created.append(held)
            elif resp.status_code == 409 and error_code(resp) == "no_valid_host":
                err = resp.json()["error"]
                if not err.get("message") or "explanation" not in err:
                    tally.unexpected.append(f"a 409 without a reason: {describe(resp)}")
                tally.no_valid_host += 1
            else:
                tally.unexpected.append(f"claim of {count} for {consumer}: {describe(resp)}")


# ---------------------------------------------------------------- judging the end state


def audit(db: Database, url: str, result: Result) -> list[str]:
    """Compare what the clients saw with the database and the API, after the run."""
    problems: list[str] = []
    with snapshot(db) as conn:
        problems += violations(conn)
        rows = conn.execute(
            sa.select(
                allocations.c.id,
                allocations.c.consumer,
                allocations.c.idempotency_key,
                allocations.c.released_at,
            )
        ).all()
        items: dict[int, set[str]] = defaultdict(set)
        for item in conn.execute(sa.select(allocation_items.c.allocation_id, allocation_items.c.device_id)):
            items[item.allocation_id].add(item.device_id)
        held_devices = conn.execute(
            sa.select(sa.func.count()).select_from(devices).where(devices.c.state.in_(HELD_STATES))
        ).scalar_one()
        created_events = conn.execute(
            sa.select(sa.func.count()).select_from(events).where(events.c.action == "allocation_created")
        ).scalar_one()
    seen = {(h.consumer, h.key): h for h in result.created}
    if len(rows) != len(result.created):
        problems.append(f"{len(rows)} allocations in the database, {len(result.created)} claims answered 201")
    if created_events != len(result.created):
        problems.append(
            f"{created_events} allocation_created events, {len(result.created)} claims answered 201"
        )
    for r in rows:
        h = seen.get((r.consumer, r.idempotency_key))
        if h is None:
            problems.append(f"allocation {r.id} of {r.consumer} was never answered with a 201")
        elif tuple(sorted(items[r.id])) != h.devices:
            problems.append(
                f"allocation {r.id} of {r.consumer} holds {sorted(items[r.id])}, the 201 said {h.devices}"
            )
    live_rows = [r for r in rows if r.released_at is None]
    live = result.live
    expected_live = len(result.created) - result.total("releases")
    if not len(live_rows) == len(live) == expected_live:
        problems.append(
            f"live allocations: {len(live_rows)} in the database, {len(live)} held by clients, "
            f"{expected_live} = claims succeeded - releases"
        )
    in_live = sum(len(h.devices) for h in live.values())
    if held_devices != in_live:
        problems.append(f"{held_devices} devices reserved or assigned, {in_live} in live allocations")

    api_allocs = httpx.get(f"{url}/v1/allocations", params={"limit": 10000}, timeout=TIMEOUT).json()
    by_api = {a["consumer"]: tuple(sorted(d["id"] for d in a["devices"])) for a in api_allocs}
    if by_api != {c: h.devices for c, h in live.items()}:
        problems.append(f"GET /v1/allocations disagrees with the clients: {len(by_api)} vs {len(live)}")
    api_devs = httpx.get(f"{url}/v1/devices", params={"limit": 10000}, timeout=TIMEOUT).json()
    holder = {d: c for c, h in live.items() for d in h.devices}
    for d in api_devs:
        if d["state"] in HELD_STATES and holder.get(d["id"]) != d["consumer"]:
            problems.append(
                f"GET /v1/devices: {d['id']} {d['state']} for {d['consumer']}, "
                f"clients say {holder.get(d['id'])}"
            )
        if d["id"] in holder and d["state"] != "reserved":
            problems.append(f"GET /v1/devices: {d['id']} held by {holder[d['id']]} is {d['state']}")
    problems += result.overlaps()
    return problems


def release_all(url: str, consumers: Sequence[str]) -> list[str]:
    problems = []
    with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        for consumer in consumers:
            resp = client.delete(f"/v1/allocations/{consumer}")
            if resp.status_code != 204:
                problems.append(describe(resp))
    return problems


def device_states(url: str) -> Counter[str]:
    return Counter(
        d["state"] for d in httpx.get(f"{url}/v1/devices", params={"limit": 10000}, timeout=TIMEOUT).json()
    )
