"""Failover under load: a primary with a synchronous hot standby (our own cluster, built from
the PostgreSQL binaries), two ``devassign server`` processes on a multi-host URL, clients
claiming continuously with idempotency keys through the CLI's client. The primary's postmaster
is SIGKILLed and the standby promoted while claims are in flight.

What must hold: the servers reconnect without a restart; while there is no primary clients see
503 ``database_busy`` with ``Retry-After`` (never a 500) and retry with the same key; no claim
acknowledged before the kill is lost (synchronous replication), none is applied twice, and the
audit finds nothing. The seconds of 503s and the time to the first claim after the promotion
are printed (``pytest -s``) and recorded as the test's properties.

Skipped when the PostgreSQL binaries are absent, failed then under DEVASSIGN_REQUIRE_PG=1.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from devassign import schemas
from devassign.cli.client import Client, CliError, Retry
from devassign.store import Database, Store
from tests.conftest import vf
from tests.reliability.pgcluster import Cluster, cluster_or_skip, free_port, wait_for

pytestmark = pytest.mark.pg

NIC = "NIC_VF_1G"
HOSTS = 4
VFS_PER_HOST = 128
CLIENTS = 8
ACKED_BEFORE_KILL = 40  # claims acknowledged before the primary is killed
AFTER_PROMOTION = 3  # claims each client must get acknowledged after the promotion


@dataclass
class Ack:
    consumer: str
    host: str
    devices: list[str]
    at: float


@dataclass
class Seen:
    """What the clients saw, shared by their threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    acks: list[Ack] = field(default_factory=list)
    retries: list[tuple[float, int, Retry]] = field(default_factory=list)  # when, which client, what
    failures: list[str] = field(default_factory=list)
    promoted: float | None = None  # when the standby was promoted

    def done(self, client: int) -> bool:
        """Whether a client has its claims after the promotion: it then claims no more, so the
        inventory (512 VFs) outlasts the run however fast claims go."""
        with self.lock:
            if self.promoted is None:
                return False
            since = self.promoted
            mine = sum(1 for a in self.acks if a.at >= since and a.consumer.startswith(f"c{client}-"))
        return mine >= AFTER_PROMOTION

    def retried(self, client: int, retry: Retry) -> None:
        with self.lock:
            self.retries.append((time.monotonic(), client, retry))

    def clients_retried(self, since: float) -> set[int]:
        with self.lock:
            return {client for at, client, _ in self.retries if at >= since}

    def acked(self, ack: Ack) -> None:
        with self.lock:
            self.acks.append(ack)

    def count(self, since: float = 0.0, server: Callable[[str], bool] = lambda _c: True) -> int:
        with self.lock:
            return sum(1 for a in self.acks if a.at >= since and server(a.consumer))


@contextlib.contextmanager
def running_server(db_url: str, log: Path, *options: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A ``devassign server`` process on ``db_url`` (with ``options``), answering ``/healthz``;
    its URL and process, stopped afterwards."""
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "devassign.cli.main",
        "server",
        "--db",
        db_url,
        "--port",
        str(port),
        *options,
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for("the server to answer /healthz", lambda: _healthy(url, proc))
            yield url, proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)


def _healthy(url: str, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"server exited with {proc.returncode}")
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _claimer(index: int, url: str, token: str, seen: Seen, stop: threading.Event) -> None:
    client = Client(url, token, retry_for=120, on_retry=lambda retry: seen.retried(index, retry))
    try:
        client.get("/healthz")
        i = 0
        while not stop.is_set():
            if seen.done(index):
                stop.wait(0.05)
                continue
            consumer = f"c{index}-{i}"
            body = {
                "consumer": consumer,
                "idempotency_key": f"key-{consumer}",
                "extra_specs": {f"hardware_resource:{NIC}": "1"},
            }
            try:
                allocation = client.post("/v1/claims", body)
            except CliError as exc:
                with seen.lock:
                    seen.failures.append(f"{consumer}: {exc.code} {exc.message}")
                return
            devices = sorted(d["address"] for d in allocation["devices"])
            seen.acked(Ack(consumer, allocation["host"], devices, time.monotonic()))
            i += 1
    finally:
        client.close()


def test_failover_to_a_synchronous_standby_under_claims(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    with cluster_or_skip(max_connections=60) as cluster:
        run_failover(cluster, tmp_path, record_property)


def run_failover(cluster: Cluster, tmp_path: Path, record: Callable[[str, object], None]) -> None:
    cluster.init_primary(synchronous=True)
    cluster.add_standby()
    cluster.create_database("devassign")
    url = cluster.multi_host_url("devassign")
    db = Database(url)
    db.upgrade()
    token = Store(db).create_token(schemas.TokenCreate(role="admin", name="failover"), actor="test").token
    db.dispose()

    with (
        running_server(url, tmp_path / "server-a.log") as (url_a, proc_a),
        running_server(url, tmp_path / "server-b.log") as (url_b, proc_b),
    ):
        servers = [url_a, url_b]
        admin = Client(url_a, token, retry_for=30)
        admin.post("/v1/resource-types", {"name": NIC})
        for h in range(HOSTS):
            devices = [vf(f"0000:3b:{i // 8 + 2:02x}.{i % 8}") for i in range(VFS_PER_HOST)]
            admin.put(f"/v1/hosts/compute-{h}/inventory", {"generation": 1, "devices": devices})

        seen, stop = Seen(), threading.Event()
        threads = [
            threading.Thread(target=_claimer, args=(i, servers[i % 2], token, seen, stop), daemon=True)
            for i in range(CLIENTS)
        ]
        for t in threads:
            t.start()
        try:
            wait_for(
                f"{ACKED_BEFORE_KILL} acknowledged claims",
                lambda: seen.count() >= ACKED_BEFORE_KILL or bool(seen.failures),
            )
            assert not seen.failures, seen.failures
            killed = cluster.kill_primary()
            acked_before_kill = [a for a in list(seen.acks) if a.at < killed]
            # Promote once every client has met the outage (an operator's or a watchdog's
            # detection time), so that the gap is there to see.
            wait_for("every client to meet a 503", lambda: len(seen.clients_retried(killed)) == CLIENTS)
            promoted = cluster.promote_standby()
            with seen.lock:
                seen.promoted = promoted
            # Each server answers again on its first request after the promotion.
            for server in servers:
                wait_for(f"{server} to serve again", lambda server=server: _serves(server, token))
            serving = time.monotonic()
            wait_for(
                f"every client to get {AFTER_PROMOTION} claims acknowledged after the promotion",
                lambda: _each_client_after(seen, promoted) or bool(seen.failures),
                timeout=120,
            )
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=150)
        assert not seen.failures, seen.failures
        assert not any(t.is_alive() for t in threads)

        # The servers are the processes started before the kill, and both serve claims again.
        assert proc_a.poll() is None and proc_b.poll() is None
        for index, server in enumerate(servers):
            assert seen.count(promoted, lambda c, i=index: int(c[1:].split("-")[0]) % 2 == i) > 0, server

        # During the gap: only 503 database_busy with Retry-After, never a 500 or a lost server.
        retries = [(at, r) for at, _, r in seen.retries if at >= killed]
        assert retries, "no client met the outage"
        for _, _, r in seen.retries:
            assert r.status == 503 and r.retry_after is not None and r.retry_after.isdigit(), r

        # Nothing acknowledged was lost, nothing was applied twice.
        allocations = {a["consumer"]: a for a in admin.get("/v1/allocations", limit=100_000)}
        acks = {a.consumer: a for a in seen.acks}
        assert len(acks) == len(seen.acks)
        for ack in acked_before_kill:
            assert ack.consumer in allocations, f"{ack.consumer}, acknowledged before the kill, is lost"
        assert set(allocations) == set(acks)
        for consumer, ack in acks.items():
            held = sorted(d["address"] for d in allocations[consumer]["devices"])
            assert (allocations[consumer]["host"], held) == (ack.host, ack.devices), consumer
        devices = [(a["host"], d["address"]) for a in allocations.values() for d in a["devices"]]
        assert len(devices) == len(set(devices)) == len(acks)
        states = admin.get("/v1/devices", state="reserved", limit=100_000)
        assert len(states) == len(acks)
        created = [e for e in admin.get("/v1/events", limit=10_000) if e["action"] == "allocation_created"]
        assert sorted(e["consumer"] for e in created) == sorted(acks)

        audit = admin.get("/v1/audit")
        assert audit["findings"] == [], audit["findings"]
        admin.close()

        first_503 = min(at for at, _ in retries)
        last_503 = max(at for at, _ in retries)
        first_after = min(a.at for a in seen.acks if a.at >= promoted)
        # Per client: from its last claim acknowledged before the kill to its first after.
        stalls = []
        for index in range(CLIENTS):
            mine = sorted(a.at for a in seen.acks if a.consumer.startswith(f"c{index}-"))
            before = [at for at in mine if at < killed]
            after = [at for at in mine if at >= promoted]
            stalls.append(after[0] - (before[-1] if before else killed))
        figures = {
            "acked_before_kill": len(acked_before_kill),
            "acked_total": len(acks),
            "retries_503": len(retries),
            "seconds_kill_to_promoted": round(promoted - killed, 3),
            "seconds_of_503s": round(last_503 - first_503, 3),
            "seconds_promoted_to_servers_serving": round(serving - promoted, 3),
            "seconds_promoted_to_first_claim": round(first_after - promoted, 3),
            "seconds_longest_client_stall": round(max(stalls), 3),
        }
        for key, value in figures.items():
            record(key, value)
        print(f"\nfailover: {figures}")


def _serves(url: str, token: str) -> bool:
    """One read, not retried: whether the server can reach the new primary now."""
    r = httpx.get(f"{url}/v1/resource-types", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code in (200, 503), f"{r.status_code} {r.text}"
    return r.status_code == 200


def _each_client_after(seen: Seen, since: float) -> bool:
    with seen.lock:
        per_client: dict[str, int] = {}
        for a in seen.acks:
            if a.at >= since:
                client = a.consumer.split("-")[0]
                per_client[client] = per_client.get(client, 0) + 1
    return len(per_client) == CLIENTS and min(per_client.values()) >= AFTER_PROMOTION
