"""Claims under contention: real ``devassign server`` processes, many concurrent clients.

PostgreSQL runs 3 server processes against one database, SQLite one process; every test
runs on both. Afterwards no device may be in two live allocations, every refusal must be a
409 with a reason (never a 5xx), and what the clients were told must add up with the
database and the API (docs/architecture.md, "The claim").
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from devassign.store import Database
from devassign.store.schema import allocations, metadata
from tests.conftest import _truncate, fresh_pg_database
from tests.e2e.contention import (
    TIMEOUT,
    Background,
    Monitor,
    Workload,
    audit,
    claim_body,
    clean,
    create_types,
    describe,
    device_states,
    error_code,
    gpu_hosts,
    pci,
    release_all,
    report,
    snapshot,
    violations,
)
from tests.e2e.servers import running_server

pytestmark = pytest.mark.slow

# Reservations must not expire and hosts must not go down while a test runs (real clock).
SERVER_ARGS = ("--reservation-ttl", "3600", "--down-after", "3600", "--log-level", "warning")
GPU = "GPU_LOAD"


@dataclass
class Cluster:
    backend: str
    urls: list[str]
    db: Database
    logs: list[Path]

    def log_tail(self) -> str:
        """The servers' logged errors, to explain a failure."""
        lines = [
            f"{log.name}: {line}"
            for log in self.logs
            if log.exists()
            for line in log.read_text().splitlines()
            if "ERROR" in line or "Error" in line
        ]
        return "\n".join(lines[-30:])


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    """A PostgreSQL database of this module's own, migrated, dropped afterwards."""
    with fresh_pg_database("devassign_conc") as url:
        yield url


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def servers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """SQLite: one server process; PostgreSQL: three server processes on one database.

    Started once per module and backend; ``cluster`` empties the database for each test.
    """
    folder = tmp_path_factory.mktemp(f"claims-{request.param}")
    if request.param == "sqlite":
        url, processes = f"sqlite:///{folder / 'devassign.db'}", 1
    else:
        url, processes = request.getfixturevalue("pg_database"), 3
    logs = [folder / f"server-{i}.log" for i in range(processes)]
    with contextlib.ExitStack() as stack:
        urls = [
            stack.enter_context(running_server(url, auth=False, log=log, extra=SERVER_ARGS)) for log in logs
        ]
        db = Database(url, pool_size=4)
        stack.callback(db.dispose)
        yield Cluster(request.param, urls, db, logs)


@pytest.fixture
def cluster(servers: Cluster) -> Cluster:
    """The running servers, on an empty database (the servers keep no state of their own)."""
    if servers.db.is_sqlite:
        with servers.db.write() as conn:
            for table in reversed(metadata.sorted_tables):
                conn.execute(table.delete())
    else:
        _truncate(servers.db.url)
    return servers


def post_all_at_once(urls: list[str], bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    """POST each claim body from its own thread, all released together by a barrier."""
    out: list[httpx.Response | BaseException | None] = [None] * len(bodies)
    start_line = threading.Barrier(len(bodies))

    def send(i: int) -> None:
        try:
            with httpx.Client(base_url=urls[i % len(urls)], timeout=TIMEOUT) as client:
                start_line.wait(timeout=60)
                out[i] = client.post("/v1/claims", json=bodies[i])
        except BaseException as exc:
            out[i] = exc

    threads = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    failed = [repr(o) for o in out if not isinstance(o, httpx.Response)]
    assert not failed, failed
    return [o for o in out if isinstance(o, httpx.Response)]


# Bugs these tests found (reported to the lead; remove the marker with the fix).
def assert_consistent(cluster: Cluster) -> None:
    with snapshot(cluster.db) as conn:
        found = violations(conn)
    assert not found, found


# ---------------------------------------------------------------- many clients, many operations


def test_many_clients_claim_and_release_and_the_counts_add_up(
    cluster: Cluster, request: pytest.FixtureRequest
) -> None:
    url = cluster.urls[0]
    create_types(url, GPU)
    gpu_hosts(url, GPU, hosts=4, per_host=4)
    pg = cluster.backend == "postgresql"
    workload = Workload(
        cluster.urls,
        type=GPU,
        clients=64 if pg else 32,
        operations=3000 if pg else 1500,
        deadline_s=60,
        seed=3,
    )
    monitor = Monitor(cluster.db)
    with (
        Background("cleaner", lambda: clean(cluster.db), 0.05) as cleaner,
        Background("monitor", monitor.check, 0.5) as checker,
    ):
        result = workload.run()
    print(
        f"\n{cluster.backend}, {len(cluster.urls)} server(s), {workload.clients} clients: {result.summary()}"
    )

    # Everything that went wrong, in one assertion, so that a failure shows all of it.
    problems = {
        "unexpected answers": result.unexpected,
        "cleaner errors": cleaner.errors,
        "monitor errors": checker.errors,
        "invariants broken during the run": monitor.found,
        "audit after the run": audit(cluster.db, cluster.urls[-1], result),
    }
    found = "\n".join(
        f"{what} ({len(v)}):\n  " + "\n  ".join(x[:400] for x in v[:8]) for what, v in problems.items() if v
    )
    assert not found, f"{result.summary()}\n{found}\nserver logs:\n{cluster.log_tail()}"
    # The inventory is far too small for the clients: they did contend.
    assert result.created and result.total("no_valid_host") > 0, result.summary()
    assert result.total("releases") > 0 and result.total("replays") > 0 and result.total("conflicts") > 0

    assert not release_all(url, sorted(result.live))
    states = device_states(url)
    assert sum(states.values()) == 16 and states["reserved"] == states["assigned"] == 0, states
    assert httpx.get(f"{url}/v1/allocations", timeout=TIMEOUT).json() == []
    assert_consistent(cluster)
    clean(cluster.db)
    assert device_states(url) == Counter(available=16)


# ---------------------------------------------------------------- exhaustion


def test_exhaustion_exactly_as_many_claims_succeed_as_there_are_devices(
    cluster: Cluster, request: pytest.FixtureRequest
) -> None:
    url = cluster.urls[0]
    create_types(url, GPU)
    gpu_hosts(url, GPU, hosts=3, per_host=4)
    n, k = 12, 20
    for r in range(3):
        bodies = [claim_body(f"r{r}-vm-{i}", GPU, 1) for i in range(n + k)]
        answers = post_all_at_once(cluster.urls, bodies)
        won = [a for a in answers if a.status_code == 201]
        lost = [a for a in answers if a.status_code != 201]
        assert len(won) == n, (
            f"round {r}: {len(won)} of {n} devices claimed",
            [describe(a) for a in lost][:5],
        )
        assert all(a.status_code == 409 and error_code(a) == "no_valid_host" for a in lost), [
            describe(a) for a in lost if a.status_code != 409 or error_code(a) != "no_valid_host"
        ]
        assert all(a.json()["error"]["message"] and a.json()["error"]["explanation"] for a in lost)
        devices = [d["id"] for a in won for d in a.json()["devices"]]
        assert len(devices) == len(set(devices)) == n
        assert device_states(url) == Counter(reserved=n)
        assert_consistent(cluster)
        assert not release_all(url, [a.json()["consumer"] for a in won])
        assert clean(cluster.db) == n


# ---------------------------------------------------------------- a PF and its VFs


def test_a_pf_and_its_vfs_are_never_held_at_once(cluster: Cluster) -> None:
    url = cluster.urls[0]
    create_types(url, "NIC_PF", "NIC_VF_1G")
    hosts = ["nic-0", "nic-1"]
    for h in hosts:
        pf = pci("0000:3b:00.0", "NIC_PF", kind="sriov_pf", driver="ice")
        vfs = [
            pci(f"0000:3b:02.{i}", "NIC_VF_1G", kind="sriov_vf", driver="iavf", parent="0000:3b:00.0")
            for i in range(4)
        ]
        report(url, h, [pf, *vfs])
    pf_wins = vf_wins = 0
    for r in range(6):
        bodies = [claim_body(f"r{r}-pf-{i}", "NIC_PF", 1) for i in range(4)]
        bodies += [claim_body(f"r{r}-vf-{i}", "NIC_VF_1G", 1 + i % 2) for i in range(8)]
        answers = post_all_at_once(cluster.urls, bodies)
        refused = [a for a in answers if a.status_code != 201]
        assert all(a.status_code == 409 and error_code(a) == "no_valid_host" for a in refused), [
            describe(a) for a in refused if a.status_code != 409
        ]
        held: dict[str, set[str]] = {h: set() for h in hosts}
        for a in answers:
            if a.status_code == 201:
                held[a.json()["host"]] |= {d["type"] for d in a.json()["devices"]}
        assert any(held.values()), f"round {r}: every claim was refused on free hosts"
        for h, types in held.items():
            assert types != {"NIC_PF", "NIC_VF_1G"}, f"round {r}: {h} gave out its PF and a VF of it"
            pf_wins += "NIC_PF" in types
            vf_wins += "NIC_VF_1G" in types
        with snapshot(cluster.db) as conn:
            both = conn.execute(
                sa.text(
                    "SELECT p.host_id FROM devices p JOIN devices c"
                    " ON c.host_id = p.host_id AND c.parent = p.address"
                    " WHERE p.state IN ('reserved', 'assigned') AND c.state IN ('reserved', 'assigned')"
                )
            ).all()
            assert not both, f"round {r}: PF and VF held at once on hosts {both}"
            assert not violations(conn)
        won = [a.json()["consumer"] for a in answers if a.status_code == 201]
        assert not release_all(url, won)
        clean(cluster.db)
    print(f"\n{cluster.backend}: hosts whose PF won a round: {pf_wins}, whose VFs won: {vf_wins}")


# ---------------------------------------------------------------- idempotency


def test_the_same_claim_sent_16_times_at_once_makes_one_allocation(
    cluster: Cluster, request: pytest.FixtureRequest
) -> None:
    url = cluster.urls[0]
    create_types(url, GPU)
    gpu_hosts(url, GPU, hosts=3, per_host=4)
    for r in range(5):
        consumer, key = f"vm-{r}", f"key-{r}"
        answers = post_all_at_once(cluster.urls, [claim_body(consumer, GPU, 2, key=key)] * 16)
        statuses = Counter(a.status_code for a in answers)
        assert statuses == Counter({201: 1, 200: 15}), (
            f"round {r}: {dict(statuses)}",
            [describe(a) for a in answers if a.status_code not in (200, 201)][:3],
        )
        devices = {tuple(sorted(d["id"] for d in a.json()["devices"])) for a in answers}
        assert len(devices) == 1 and len(next(iter(devices))) == 2, devices
        with snapshot(cluster.db) as conn:
            made = conn.execute(
                sa.select(sa.func.count()).select_from(allocations).where(allocations.c.consumer == consumer)
            ).scalar_one()
            assert made == 1
            assert not violations(conn)
