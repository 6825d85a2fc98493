"""Crash safety: real server processes killed (SIGKILL) at named failpoints, under load.

Each test starts ``devassign server`` processes (SQLite: one; PostgreSQL: three on one fresh
database), loads an inventory through the API as agents would, and runs claim clients,
releases and agents (heartbeats, setups, cleanups, reports) in threads. One server, the
victim, is started again and again with one failpoint armed (``DEVASSIGN_FAILPOINTS``,
``devassign.failpoints``); it dies there, and is started again with the next. After every
restart, and at the end, the database must hold no partial state: no device in two live
allocations, devices and allocations agree, counts equal rows, every allocation has its
items and its events, the audit finds nothing (the store's, and ``GET /v1/audit``), and
every claim a client saw acknowledged is still there unless that client released it (or,
where reservations expire, the sweeper expired it).

The default tests kill at every point of a group once; ``slow`` ones three times each.
Figures: ``pytest tests/reliability -s`` prints one line per test (docs/reliability.md).
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from devassign import failpoints, schemas
from devassign.domain import Role
from devassign.store import Database, Store
from devassign.store.schema import allocation_items, allocations, devices, events, hosts
from tests.conftest import fresh_pg_database
from tests.e2e.contention import snapshot, violations
from tests.e2e.servers import DEVASSIGN
from tests.reliability.procs import (
    GPU,
    PROJECT,
    SPARE,
    SPARE_ADDRESS,
    Load,
    Server,
    ServerOptions,
    host_devices,
    wait_for,
)

SRC = Path(__file__).resolve().parents[2] / "src" / "devassign"
KILL_DEADLINE_S = 60.0
HOSTS = 4
GPUS = 4
CLIENTS = 3

GROUPS: dict[str, tuple[str, ...]] = {
    "claims": ("claim.before_commit", "claim.after_commit", "release.before_commit", "release.after_commit"),
    "agents": ("report.mid_transaction", "report.after_commit", "work.before_commit", "work.after_commit"),
    "sweeper": ("sweep.host_down", "expire.before_commit", "expire.after_commit"),
}
# The sweeper's group runs it every 0.2 s, with hosts down after 1 s of silence and
# reservations that expire after 1 s: lazy claims (never set up) expire, a flapping host and
# every host silent while a lone SQLite server restarts go down.
OPTIONS = {
    "claims": ServerOptions(),
    "agents": ServerOptions(),
    "sweeper": ServerOptions(down_after=1.0, reservation_ttl=1.0, sweep_interval=0.2),
}


# ---------------------------------------------------------------- the failpoints themselves


def test_every_failpoint_in_the_code_is_registered_and_every_registered_one_is_used() -> None:
    used: set[str] = set()
    for path in SRC.rglob("*.py"):
        if path.name == "failpoints.py":
            continue
        for call in re.findall(r"\b(?:failpoint|after_commit)\((.*)\)", path.read_text()):
            used |= set(re.findall(r'"([a-z_.]+)"', call))
    assert used == set(failpoints.POINTS)
    assert set(GROUPS["claims"] + GROUPS["agents"] + GROUPS["sweeper"]) == set(failpoints.POINTS)


def test_parse() -> None:
    armed = failpoints.parse(" claim.before_commit=kill , release.after_commit=kill@3,")
    assert armed == {
        "claim.before_commit": failpoints.Armed("claim.before_commit", "kill", 1),
        "release.after_commit": failpoints.Armed("release.after_commit", "kill", 3),
    }
    assert failpoints.parse("") == {}
    for bad in (
        "claim.befor_commit=kill",
        "claim.before_commit",
        "claim.before_commit=",
        "claim.before_commit=panic",
        "claim.before_commit=kill@0",
        "claim.before_commit=kill@x",
        "claim.before_commit=kill@",
        "claim.before_commit=kill,claim.before_commit=kill@2",
    ):
        with pytest.raises(failpoints.FailpointError):
            failpoints.parse(bad)


def test_unset_means_functions_that_do_nothing() -> None:
    assert "DEVASSIGN_FAILPOINTS" not in os.environ
    assert failpoints.ARMED == {}
    assert failpoints.failpoint is failpoints._off
    assert failpoints.after_commit is failpoints._off_after_commit
    failpoints.failpoint("claim.before_commit")  # and nothing happens


def test_a_typo_stops_the_server_at_its_start(tmp_path: Path) -> None:
    result = subprocess.run(
        [*DEVASSIGN, "server", "--db", f"sqlite:///{tmp_path / 'x.db'}", "--port", "1"],
        env={**os.environ, "DEVASSIGN_FAILPOINTS": "claim.befor_commit=kill"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "unknown failpoint 'claim.befor_commit'" in result.stderr


_REPORT_ONCE = """
import sys
from devassign import schemas
from devassign.store import Database, Store
store = Store(Database(sys.argv[1]))
devs = [schemas.ReportedDevice(address="0000:10:00.0", kind="pci", type="GPU_REL")]
store.apply_report("h", schemas.InventoryReport(generation=7, devices=devs), "agent")
print("survived")
"""


@pytest.mark.parametrize(
    ("point", "committed"), [("report.mid_transaction", False), ("report.after_commit", True)]
)
def test_a_store_failpoint_kills_before_or_after_the_commit(
    tmp_path: Path, point: str, committed: bool
) -> None:
    url = f"sqlite:///{tmp_path / 'fp.db'}"
    db = Database(url)
    db.upgrade()
    store = Store(db)
    store.create_type(schemas.ResourceTypeCreate(name="GPU_REL"), "admin")
    result = subprocess.run(
        [sys.executable, "-c", _REPORT_ONCE, url],
        env={**os.environ, "DEVASSIGN_FAILPOINTS": f"{point}=kill"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert "survived" not in result.stdout
    assert f"devassign failpoint {point}: hit 1, killing process" in result.stderr
    with db.read() as c:
        generation = c.execute(sa.select(hosts.c.generation).where(hosts.c.name == "h")).scalar()
        n = c.execute(sa.select(sa.func.count()).select_from(devices)).scalar_one()
    assert (generation, n) == ((7, 1) if committed else (None, 0))
    assert store.audit(down_for=timedelta(hours=1)).findings == []
    db.dispose()


# ---------------------------------------------------------------- the cluster under load


@dataclass
class Cluster:
    db: Database
    store: Store
    servers: list[Server]
    admin: str
    load: Load
    rounds: int = 0
    kills: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    http_audits: int = 0

    @property
    def victim(self) -> Server:
        return self.servers[0]


def _token(store: Store, role: Role, **scope: str) -> str:
    return store.create_token(schemas.TokenCreate(role=role, **scope), "test").token


@pytest.fixture
def pg_cluster_url() -> Iterator[str]:
    with fresh_pg_database("devassign_rel") as url:
        yield url


def _cluster(url: str, n_servers: int, group: str, tmp_path: Path, seed: int, first: str) -> Cluster:
    """Servers, an inventory loaded through the API, and the load (not started). With several
    servers the victim starts armed with ``first`` and the others serve the loading; a lone
    server starts unarmed (the loading would hit the agents' and the sweeper's points)."""
    db = Database(url, pool_size=2)
    db.upgrade()
    store = Store(db)
    admin = _token(store, Role.ADMIN)
    clients = [_token(store, Role.MEMBER, project=PROJECT) for _ in range(CLIENTS)]
    names = [f"rel-{i}" for i in range(HOSTS)]
    agents = {h: _token(store, Role.AGENT, host=h) for h in names}
    options = OPTIONS[group]
    # The others sweep too, ten times less often: the victim's sweeper mostly wins the races for
    # hosts going down and reservations expiring (both conditional updates), so it hits its points.
    others = replace(options, sweep_interval=options.sweep_interval and options.sweep_interval * 10)
    servers = [Server(f"server{i}", url, tmp_path, others if i else options) for i in range(n_servers)]
    try:
        for s in servers:
            s.start(first if s is servers[0] and n_servers > 1 else None)
        for s in servers[1:] if n_servers > 1 else servers:
            assert s.wait_ready(), s.tail()
    except BaseException:
        for s in servers:  # a server that never answered is ours to end, not left running
            s.stop()
        db.dispose()
        raise
    url0 = servers[-1].url
    for t in (GPU, SPARE):
        r = httpx.post(
            f"{url0}/v1/resource-types", json={"name": t}, headers={"Authorization": f"Bearer {admin}"}
        )
        assert r.status_code == 201, r.text
    for h in names:
        body = {"generation": 1, "devices": host_devices(GPUS, True)}
        r = httpx.put(
            f"{url0}/v1/hosts/{h}/inventory", json=body, headers={"Authorization": f"Bearer {agents[h]}"}
        )
        assert r.status_code == 200 and not r.json()["refused"], r.text
    load = Load(
        [s.url for s in servers],
        clients,
        agents,
        gpus=GPUS,
        seed=seed,
        lazy_share=0.3 if group == "sweeper" else 0.0,
        flapping=names[-1] if group == "sweeper" else None,
    )
    return Cluster(db, store, servers, admin, load)


def check(cluster: Cluster, *, need_http: bool) -> None:
    """Every invariant, while the load goes on: what the clients were told is read before the
    database's snapshot (acknowledged, so committed before it), what they meant to do after it
    (an intent is written before its request, so before anything it committed)."""
    load = cluster.load
    acked = load.acked()
    _, _, released_acked = load.intents()
    with snapshot(cluster.db) as c:
        found = violations(c)
        rows = c.execute(sa.select(allocations.c.id, allocations.c.consumer, allocations.c.released_at)).all()
        items: dict[int, set[str]] = defaultdict(set)
        for r in c.execute(sa.select(allocation_items.c.allocation_id, allocation_items.c.device_id)):
            items[r.allocation_id].add(r.device_id)
        actions = dict(c.execute(sa.select(events.c.action, sa.func.count()).group_by(events.c.action)).all())
        expired = set(
            c.execute(sa.select(events.c.consumer).where(events.c.action == "allocation_expired")).scalars()
        )
        spares = c.execute(
            sa.select(hosts.c.name, devices.c.state)
            .join(hosts, hosts.c.id == devices.c.host_id)
            .where(devices.c.address == SPARE_ADDRESS)
        ).all()
        last_spare_event = {
            r.host: r.action
            for r in c.execute(
                sa.select(events.c.host, events.c.action)
                .where(
                    events.c.device == SPARE_ADDRESS,
                    events.c.action.in_(("device_added", "device_removed", "device_updated")),
                )
                .order_by(events.c.id)
            )
        }
    tried, releasing, _ = load.intents()

    by_consumer: dict[str, list[Any]] = defaultdict(list)
    for r in rows:
        by_consumer[r.consumer].append(r)
    # One transaction writes an allocation, its items and its event; another its release and its event.
    found += [f"allocation {r.id} of {r.consumer} has no items" for r in rows if not items.get(r.id)]
    if actions.get("allocation_created", 0) != len(rows):
        found.append(f"{len(rows)} allocations but {actions.get('allocation_created', 0)} creation events")
    ended = sum(actions.get(f"allocation_{w}", 0) for w in ("released", "expired", "setup_failed"))
    n_released = sum(r.released_at is not None for r in rows)
    if ended != n_released:
        found.append(f"{n_released} released allocations but {ended} release events")
    found += [f"allocation of {c} that no client asked for" for c in by_consumer if c not in tried]
    for consumer, ids in sorted(acked.items()):
        mine = [r for r in by_consumer.get(consumer, []) if items.get(r.id) == set(ids)]
        if not mine:
            found.append(f"acknowledged claim of {consumer} ({len(ids)} devices) is not in the database")
        elif all(r.released_at is not None for r in mine) and consumer not in releasing | expired:
            found.append(f"acknowledged claim of {consumer} was released, but not by its client or expiry")
    for consumer in sorted(released_acked):
        if any(r.released_at is None for r in by_consumer.get(consumer, [])):
            found.append(f"acknowledged release of {consumer}: its allocation is still live")
    for host, state in spares:
        gone = last_spare_event.get(host) == "device_removed"
        if gone != (state == "removed"):
            found.append(f"{host} spare device is {state}, its last event {last_spare_event.get(host)}")

    report = cluster.store.audit(down_for=timedelta(hours=1))
    found += [f"audit: {f.check}: {f.message}" for f in report.findings]
    found += http_audit(cluster, need_http)
    assert not found, "\n".join(found[:40])


def http_audit(cluster: Cluster, need: bool) -> list[str]:
    """``GET /v1/audit`` on a server that answers (a lone SQLite server armed with the next
    point may have died already: then only if ``need``, and it fails)."""
    for s in cluster.servers:
        try:
            r = httpx.get(
                f"{s.url}/v1/audit", headers={"Authorization": f"Bearer {cluster.admin}"}, timeout=60
            )
        except httpx.TransportError:
            continue
        assert r.status_code == 200, r.text
        cluster.http_audits += 1
        return [f"GET /v1/audit: {f['check']}: {f['message']}" for f in r.json()["findings"]]
    assert not need, "no server answers GET /v1/audit"
    return []


def kill_at_each_point(cluster: Cluster, plan: list[str]) -> None:
    """Start the victim armed with each failpoint of ``plan`` in turn, until it dies there;
    check after each restart (the restart armed with the next one, or none)."""
    victim = cluster.victim
    if len(cluster.servers) == 1:  # it served the loading unarmed
        victim.stop()
        victim.start(plan[0])
    for i, armed in enumerate(plan):
        point = armed.partition("=")[0]
        status = victim.wait_dead(KILL_DEADLINE_S)
        assert status == -signal.SIGKILL, (
            f"{victim.name} exited with {status}, not at {point}:\n{victim.tail()}"
        )
        assert victim.killed_at(point), f"{victim.name} died, but not at {point}:\n{victim.tail()}"
        cluster.kills[point] += 1
        nxt = plan[i + 1] if i + 1 < len(plan) else None
        victim.start(nxt)
        answered = victim.wait_ready()
        if nxt is None:
            assert answered, victim.tail()
        # SQLite: the one server may already have died at the next point; PostgreSQL: two others.
        check(cluster, need_http=nxt is None or len(cluster.servers) > 1)
        cluster.rounds += 1


def run_kills(url: str, n_servers: int, group: str, kills_per_point: int, tmp_path: Path, label: str) -> None:
    began = time.monotonic()
    seed = sum(map(ord, label))
    rng = random.Random(seed)
    # Each point of the group in turn, each time at its first, second or third hit.
    plan = [f"{p}=kill@{rng.randint(1, 3)}" for _ in range(kills_per_point) for p in GROUPS[group]]
    cluster = _cluster(url, n_servers, group, tmp_path, seed, plan[0])
    try:
        with cluster.load.running() as load:
            # Some work before the first kill: allocations to lose, if anything loses them.
            wait_for(lambda: load.totals()["claims_acked"] >= 5, 60, "5 claims acknowledged")
            kill_at_each_point(cluster, plan)
        # The load stopped with every request answered: nothing left in doubt.
        assert not load.unexpected(), "\n".join(load.unexpected()[:20])
        check(cluster, need_http=True)
        totals = load.totals()
    finally:
        for s in cluster.servers:
            s.stop()
        cluster.db.dispose()
    elapsed = time.monotonic() - began
    kills = sum(cluster.kills.values())
    print(
        f"\n[{label}] {kills} kills at {len(cluster.kills)} points "
        f"({', '.join(f'{p} x{n}' for p, n in sorted(cluster.kills.items()))}), all survived; "
        f"{cluster.rounds} checks after restarts ({cluster.http_audits} with GET /v1/audit); "
        f"{totals['claims_acked']} claims and {totals['releases_acked']} releases acknowledged, "
        f"{totals['refused']} refused, {totals['resent']} requests resent; {elapsed:.1f} s"
    )


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_kills_on_sqlite(group: str, tmp_path: Path) -> None:
    run_kills(f"sqlite:///{tmp_path / 'rel.db'}", 1, group, 1, tmp_path, f"sqlite {group}")


@pytest.mark.pg
@pytest.mark.parametrize("group", sorted(GROUPS))
def test_kills_on_postgresql(group: str, tmp_path: Path, pg_cluster_url: str) -> None:
    run_kills(pg_cluster_url, 3, group, 1, tmp_path, f"postgresql {group}")


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.parametrize("group", sorted(GROUPS))
def test_many_kills_on_sqlite(group: str, tmp_path: Path) -> None:
    run_kills(f"sqlite:///{tmp_path / 'rel.db'}", 1, group, 3, tmp_path, f"sqlite {group} x3")


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.pg
@pytest.mark.parametrize("group", sorted(GROUPS))
def test_many_kills_on_postgresql(group: str, tmp_path: Path, pg_cluster_url: str) -> None:
    run_kills(pg_cluster_url, 3, group, 3, tmp_path, f"postgresql {group} x3")
