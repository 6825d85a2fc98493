"""An overloaded, unreachable or read-only database is answered 503 ``database_busy`` with a
``Retry-After`` header, never 500, and the refused request changed nothing; the CLI's client
retries what it may send again.

Each condition is provoked for real: a pool of one connection held by the test, every
connection slot of a PostgreSQL cluster of our own taken, a table or row lock held by another
connection past the statement or lock timeout, a statement running past the statement timeout,
writes sent to a hot standby, the cluster stopped under a running app, a port with no database,
SQLite's write lock held by another connection.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import sqlalchemy as sa
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from devassign.cli.client import Client, CliError, ExitCode, Retry
from devassign.errors import DATABASE_BUSY, DevassignError
from devassign.server.app import create_app
from devassign.server.settings import Settings
from devassign.store import Database, Store
from tests.conftest import vf
from tests.reliability.pgcluster import Cluster, cluster_or_skip, free_port, wait_for

NIC = "NIC_VF_1G"
ONLY_PG = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)


# ---------------------------------------------------------------------------- helpers


def _app(db: Database) -> FastAPI:
    return create_app(Settings(db_url=db.url, auth=False, sweep_interval=0), store=Store(db))


@contextlib.contextmanager
def _api(db: Database, *, migrate: bool = True) -> Iterator[TestClient]:
    if migrate:
        db.upgrade()
    with TestClient(_app(db), raise_server_exceptions=False) as client:
        yield client
    db.dispose()


def _seed(api: TestClient, devices: int = 4) -> None:
    assert api.post("/v1/resource-types", json={"name": NIC}).status_code == 201
    report = {"generation": 1, "devices": [vf(f"0000:3b:02.{i}") for i in range(devices)]}
    r = api.put("/v1/hosts/h1/inventory", json=report)
    assert r.status_code == 200 and not r.json()["refused"], r.text


def _claim_body(consumer: str, key: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"consumer": consumer, "extra_specs": {f"hardware_resource:{NIC}": "1"}}
    if key:
        body["idempotency_key"] = key
    return body


def _state(api: TestClient) -> dict[str, Any]:
    """Everything a refused request could have changed."""
    answers = {
        "types": api.get("/v1/resource-types"),
        "devices": api.get("/v1/devices"),
        "allocations": api.get("/v1/allocations"),
        "events": api.get("/v1/events", params={"limit": 10_000}),
    }
    for name, r in answers.items():
        assert r.status_code == 200, f"{name}: {r.status_code} {r.text}"
    return {
        "types": sorted(t["name"] for t in answers["types"].json()),
        "devices": sorted((d["host"], d["address"], d["state"]) for d in answers["devices"].json()),
        "allocations": sorted(a["consumer"] for a in answers["allocations"].json()),
        "events": [e["id"] for e in answers["events"].json()],
    }


def _busy(r: httpx.Response, reason: str | tuple[str, ...] | None = None) -> dict[str, Any]:
    """Assert ``r`` is a 503 database_busy with a small Retry-After; its error body."""
    assert r.status_code == 503, f"{r.status_code} {r.text}"
    err: dict[str, Any] = r.json()["error"]
    assert err["code"] == DATABASE_BUSY, err
    assert r.headers["Retry-After"].isdigit(), r.headers
    assert 1 <= int(r.headers["Retry-After"]) <= 3 and err["retry_after"] == int(r.headers["Retry-After"])
    if reason is not None:
        assert err["reason"] in ((reason,) if isinstance(reason, str) else reason), err
    return err


def _writes(api: TestClient) -> list[httpx.Response]:
    """One of each kind of write: a new type, an inventory report, a claim with a key."""
    return [
        api.post("/v1/resource-types", json={"name": "NEVER"}),
        api.put("/v1/hosts/h9/inventory", json={"generation": 1, "devices": [vf("0000:5e:00.1")]}),
        api.post("/v1/claims", json=_claim_body("vm-refused", "k-refused")),
    ]


# ---------------------------------------------------------------------------- the pool


def test_an_exhausted_pool_is_503_and_changes_nothing(db_url: str) -> None:
    db = Database(db_url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    with _api(db) as api:
        _seed(api)
        before = _state(api)
        with db.engine.connect() as held:  # the pool's only connection, busy elsewhere
            held.exec_driver_sql("SELECT 1")
            assert _busy(api.get("/v1/resource-types"), "pool_exhausted")
            for r in _writes(api):
                _busy(r, "pool_exhausted")
            held.rollback()
        assert _state(api) == before
        r = api.post("/v1/claims", json=_claim_body("vm-1", "k1"))
        assert r.status_code == 201, r.text


# ---------------------------------------------------------------------------- statement and lock timeouts


@ONLY_PG
def test_a_statement_past_the_statement_timeout_is_503(db_url: str) -> None:
    db = Database(db_url, statement_timeout=0.3)
    with _api(db) as api:
        _seed(api)
        # A statement that runs too long, on the store's own connections.
        with pytest.raises(DevassignError) as slow:
            db.reading(lambda c: c.execute(sa.text("SELECT pg_sleep(5)")).all())
        assert slow.value.code == DATABASE_BUSY and slow.value.extra["reason"] == "statement_timeout"
        before = _state(api)
        # Statements that wait too long for locks another connection holds.
        locker = psycopg.connect(
            sa.engine.make_url(db_url).set(drivername="postgresql").render_as_string(False)
        )
        try:
            locker.execute("LOCK TABLE resource_types IN ACCESS EXCLUSIVE MODE")
            locker.execute("SELECT 1 FROM hosts WHERE name = 'h1' FOR UPDATE")
            _busy(api.get("/v1/resource-types"), "statement_timeout")
            _busy(api.post("/v1/resource-types", json={"name": "NEVER"}), "statement_timeout")
            _busy(api.post("/v1/claims", json=_claim_body("vm-refused", "k-refused")), "statement_timeout")
        finally:
            locker.rollback()
            locker.close()
        assert _state(api) == before
        assert api.post("/v1/claims", json=_claim_body("vm-refused", "k-refused")).status_code == 201


@ONLY_PG
def test_a_wait_past_the_lock_timeout_is_503(db_url: str) -> None:
    db = Database(db_url, statement_timeout=30, lock_timeout=0.2)
    with _api(db) as api:
        _seed(api)
        before = _state(api)
        locker = psycopg.connect(
            sa.engine.make_url(db_url).set(drivername="postgresql").render_as_string(False)
        )
        try:
            locker.execute("SELECT 1 FROM hosts WHERE name = 'h1' FOR UPDATE")
            _busy(api.post("/v1/claims", json=_claim_body("vm-refused", "k-refused")), "lock_timeout")
            _busy(api.post("/v1/hosts/h1/heartbeat"), "lock_timeout")
        finally:
            locker.rollback()
            locker.close()
        assert _state(api) == before
        assert api.post("/v1/claims", json=_claim_body("vm-refused", "k-refused")).status_code == 201


def test_migrations_run_without_the_statement_timeout(tmp_path: Path, db_url: str) -> None:
    """The timeouts are for requests: the schema (already migrated here) is checked and
    migrated on a connection without them, and the pool's connections keep them."""
    db = Database(db_url, statement_timeout=0.5)
    try:
        db.upgrade()
        if not db.is_sqlite:
            assert db.reading(lambda c: c.execute(sa.text("SHOW statement_timeout")).scalar_one()) == "500ms"
    finally:
        db.dispose()


# ---------------------------------------------------------------------------- SQLite's write lock


def test_sqlite_write_lock_held_by_another_process_is_503(tmp_path: Path) -> None:
    path = tmp_path / "devassign.db"
    db = Database(f"sqlite:///{path}", statement_timeout=0.3)
    db.upgrade()
    with _api(db) as api:
        _seed(api)
        before = _state(api)
        other = sqlite3.connect(path, isolation_level=None)  # another writer, as another process is
        try:
            other.execute("BEGIN IMMEDIATE")
            for r in _writes(api):
                _busy(r, "locked")
            assert api.get("/v1/resource-types").status_code == 200  # WAL: readers go on
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert _state(api) == before
        assert api.post("/v1/claims", json=_claim_body("vm-1", "k1")).status_code == 201


# ---------------------------------------------------------------------------- PostgreSQL of our own


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A primary with 8 connection slots and an asynchronous hot standby, for this module."""
    with cluster_or_skip(max_connections=8) as c:
        c.init_primary(synchronous=False)
        c.add_standby()
        yield c


def _fresh_database(cluster: Cluster) -> str:
    name = f"overload_{uuid.uuid4().hex[:8]}"
    cluster.create_database(name)
    url = cluster.url(cluster.primary, name)
    db = Database(url)
    db.upgrade()
    db.dispose()
    return name


@pytest.mark.pg
def test_a_database_out_of_connection_slots_is_503(cluster: Cluster) -> None:
    db = Database(cluster.url(cluster.primary, _fresh_database(cluster)))
    with _api(db) as api:
        _seed(api)
        before = _state(api)
        db.engine.dispose()  # the app must open a new connection: there is no slot for it
        held: list[psycopg.Connection[Any]] = []
        try:
            with contextlib.suppress(psycopg.OperationalError):
                while len(held) < 50:
                    held.append(psycopg.connect(cluster.primary.conninfo(), autocommit=True))
            assert 0 < len(held) < 50, "the cluster never refused a connection"
            _busy(api.get("/v1/resource-types"), "too_many_connections")
            for r in _writes(api):
                _busy(r, "too_many_connections")
        finally:
            for conn in held:
                conn.close()
        assert _state(api) == before
        assert api.post("/v1/claims", json=_claim_body("vm-1", "k1")).status_code == 201


@pytest.mark.pg
def test_writes_sent_to_a_hot_standby_are_503_and_reads_are_served(cluster: Cluster) -> None:
    name = _fresh_database(cluster)
    primary = Database(cluster.url(cluster.primary, name))
    with _api(primary) as api:
        _seed(api)
        expected = _state(api)
    assert cluster.standby is not None
    standby = Database(cluster.url(cluster.standby, name))
    with _api(standby, migrate=False) as api:
        wait_for("the standby to replay the seed", lambda: _replayed(api, expected))
        for r in _writes(api):
            _busy(r, "read_only")
        assert _state(api) == expected


def _replayed(api: TestClient, expected: dict[str, Any]) -> bool:
    try:
        return _state(api) == expected
    except AssertionError:  # the database itself was not replayed yet
        return False


@pytest.mark.pg
def test_a_stopped_database_is_503_and_the_app_reconnects_when_it_is_back(cluster: Cluster) -> None:
    db = Database(cluster.url(cluster.primary, _fresh_database(cluster)))
    with _api(db) as api:
        _seed(api)
        before = _state(api)  # the pool now holds live connections
        cluster._tool("pg_ctl", "-D", str(cluster.primary.data), "-m", "fast", "-w", "stop")
        try:
            _busy(api.get("/v1/resource-types"), ("connection_lost", "unreachable", "shutting_down"))
            for r in _writes(api):
                _busy(r, ("connection_lost", "unreachable", "shutting_down"))
        finally:
            cluster.start(cluster.primary)
        assert _state(api) == before  # the same app, no restart
        assert api.post("/v1/claims", json=_claim_body("vm-1", "k1")).status_code == 201


def test_no_database_at_the_address_is_503() -> None:
    db = Database(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing")
    with _api(db, migrate=False) as api:
        _busy(api.get("/v1/resource-types"), "unreachable")
        _busy(api.post("/v1/claims", json=_claim_body("vm-1", "k1")), "unreachable")


# ---------------------------------------------------------------------------- the CLI's client


@contextlib.contextmanager
def _serving(app: FastAPI) -> Iterator[tuple[str, uvicorn.Server]]:
    """``app`` served by uvicorn on a free port in a thread."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for("uvicorn to start", lambda: server.started or not thread.is_alive(), timeout=30)
        assert thread.is_alive(), "uvicorn did not start"
        yield f"http://127.0.0.1:{server.config.port}", server
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def busy_server(tmp_path: Path) -> Iterator[tuple[str, Database, uvicorn.Server]]:
    """A real server on SQLite whose pool has one connection and waits 0.2 s for it."""
    db = Database(f"sqlite:///{tmp_path / 'devassign.db'}", pool_size=1, max_overflow=0, pool_timeout=0.2)
    db.upgrade()
    with _serving(_app(db)) as (url, server):
        setup = Client(url)
        setup.post("/v1/resource-types", {"name": NIC})
        setup.put(
            "/v1/hosts/h1/inventory", {"generation": 1, "devices": [vf(f"0000:3b:02.{i}") for i in range(4)]}
        )
        setup.close()
        yield url, db, server
    db.dispose()


def _in_thread(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = fn()
        except Exception as exc:
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _sent_while_busy(db: Database, retries: list[Retry], send: Any) -> dict[str, Any]:
    """``send()`` in a thread while a held connection keeps the server's one database
    connection busy, until the client has met a 503; then the database is freed and the
    thread's outcome (``result`` or ``error``) returned."""
    held = db.engine.connect()
    held.exec_driver_sql("SELECT 1")
    thread, out = _in_thread(send)
    try:
        wait_for("the client to meet a 503", lambda: bool(retries))
    finally:
        held.rollback()
        held.close()
    thread.join(timeout=60)
    return out


def test_the_client_retries_a_read_through_503s_until_the_database_is_free(
    busy_server: tuple[str, Database, uvicorn.Server],
) -> None:
    url, db, _ = busy_server
    retries: list[Retry] = []
    client = Client(url, retry_for=60, on_retry=retries.append)
    client.get("/healthz")  # the server has answered this client
    out = _sent_while_busy(db, retries, lambda: client.get("/v1/resource-types"))
    assert [t["name"] for t in out["result"]] == [NIC], out
    assert all(r.status == 503 and r.retry_after and 1 <= int(r.retry_after) <= 3 for r in retries)
    assert all(1 <= r.wait <= 10 for r in retries)  # Retry-After honoured, capped
    client.close()


def test_the_client_retries_a_claim_with_its_key_and_it_is_applied_once(
    busy_server: tuple[str, Database, uvicorn.Server],
) -> None:
    url, db, _ = busy_server
    retries: list[Retry] = []
    client = Client(url, retry_for=60, on_retry=retries.append)
    client.get("/healthz")
    out = _sent_while_busy(db, retries, lambda: client.post("/v1/claims", _claim_body("vm-1", "key-1")))
    assert out["result"]["consumer"] == "vm-1", out
    allocations = client.get("/v1/allocations")
    assert [a["consumer"] for a in allocations] == ["vm-1"] and len(allocations[0]["devices"]) == 1
    events = client.get("/v1/events", consumer="vm-1")
    assert sum(e["action"] == "allocation_created" for e in events) == 1
    client.close()


def test_the_client_does_not_resend_a_claim_without_a_key_and_gives_up_at_its_deadline(
    busy_server: tuple[str, Database, uvicorn.Server],
) -> None:
    url, db, _ = busy_server
    retries: list[Retry] = []
    client = Client(url, retry_for=4, on_retry=retries.append)
    client.get("/healthz")
    with db.engine.connect() as held:
        held.exec_driver_sql("SELECT 1")
        with pytest.raises(CliError) as no_key:
            client.post("/v1/claims", _claim_body("vm-1"))
        assert retries == []  # it may not be sent twice: not retried
        assert no_key.value.code == DATABASE_BUSY and no_key.value.exit_status == ExitCode.UNREACHABLE
        with pytest.raises(CliError) as late:
            client.get("/v1/resource-types")
        held.rollback()
    assert late.value.code == DATABASE_BUSY and late.value.exit_status == ExitCode.UNREACHABLE
    assert "cannot serve now" in late.value.message and "gave up after" in late.value.message
    assert retries and all(r.status == 503 for r in retries)
    client.close()


def test_the_client_retries_a_lost_server_within_its_deadline_but_not_one_never_reached(
    busy_server: tuple[str, Database, uvicorn.Server],
) -> None:
    url, _, server = busy_server
    retries: list[Retry] = []
    client = Client(url, retry_for=1.0, on_retry=retries.append)
    client.get("/healthz")
    server.should_exit = True
    wait_for("the server to stop", lambda: _refused(url))
    with pytest.raises(CliError) as lost:
        client.get("/v1/resource-types")
    assert lost.value.exit_status == ExitCode.UNREACHABLE and "gave up after" in lost.value.message
    assert retries and all(r.status is None and r.error for r in retries)
    fresh: list[Retry] = []
    with pytest.raises(CliError) as never:
        Client(url, retry_for=30, on_retry=fresh.append).get("/v1/resource-types")
    assert fresh == [] and "is `devassign server` running?" in never.value.message
    client.close()


def _refused(url: str) -> bool:
    try:
        httpx.get(f"{url}/healthz", timeout=1)
    except httpx.ConnectError:
        return True
    except httpx.HTTPError:
        return False
    return False


def test_the_client_resends_a_batch_of_reports_and_it_is_applied_once(
    busy_server: tuple[str, Database, uvicorn.Server],
) -> None:
    """A batch of reports is idempotent by its generations: the client sends it again through
    503s, and each host is registered once."""
    url, db, _ = busy_server
    retries: list[Retry] = []
    client = Client(url, retry_for=60, on_retry=retries.append)
    client.get("/healthz")
    device = {"address": "0000:3b:02.7", "kind": "sriov_vf", "type": NIC, "parent": "0000:3b:00.0"}
    body = {
        "reports": [
            {"host": f"batch-{i}", "report": {"generation": 1, "devices": [device]}} for i in range(3)
        ]
    }
    out = _sent_while_busy(db, retries, lambda: client.post("/v1/reports", body))
    assert out["result"]["applied"] == 3, out
    events = client.get("/v1/events", limit=1000)
    assert sorted(
        e["host"] for e in events if e["action"] == "host_registered" and e["host"].startswith("batch-")
    ) == [
        "batch-0",
        "batch-1",
        "batch-2",
    ]
    client.close()
