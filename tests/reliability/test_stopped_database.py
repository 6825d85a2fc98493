"""A database that is alive but stopped (SIGSTOP: a wedged host, a frozen VM) ends requests in
a 503 soon after the statement timeout instead of holding them, and the server's threads with
them, for as long as it stays stopped; once it resumes, the next request is served.

Our own cluster (built from the PostgreSQL binaries): every process of it is stopped and, on
every way out, continued again. Skipped where the binaries are absent, failed then under
DEVASSIGN_REQUIRE_PG=1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from devassign import schemas
from devassign.errors import DATABASE_BUSY, DevassignError
from devassign.store import Database, Store
from devassign.store.pgconn import answer_limit
from tests.reliability.pgcluster import Cluster, cluster_or_skip, wait_for
from tests.reliability.test_failover import running_server

pytestmark = pytest.mark.pg

TIMEOUT = 1.0  # the statement timeout of these tests: a 2 s wait for an answer
CONNECT = 2  # libpq's connect_timeout, for the fresh connection a lost one is replaced by


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with cluster_or_skip() as c:
        yield c


@contextlib.contextmanager
def stopped(cluster: Cluster) -> Iterator[None]:
    """Every process of the primary stopped (postmaster and backends), continued on the way out."""
    node = cluster.primary
    node.remember_processes()
    pids = sorted(node.pids)
    try:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def in_thread(fn: Any, limit: float) -> tuple[object, float]:
    """``fn()``'s result or exception and the seconds it took; fails if it is still waiting
    after ``limit`` seconds (the database is continued by the caller's ``stopped``)."""
    out: list[object] = []
    start = time.monotonic()

    def run() -> None:
        try:
            out.append(fn())
        except Exception as exc:
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(limit)
    assert not t.is_alive(), f"still waiting for the stopped database after {limit:.0f} s"
    return out[0], time.monotonic() - start


def test_a_stopped_database_is_a_503_not_a_hang_and_serves_again_once_continued(cluster: Cluster) -> None:
    cluster.init_primary(synchronous=False)
    cluster.create_database("devassign")
    url = cluster.url(cluster.primary, "devassign") + f"?connect_timeout={CONNECT}"
    db = Database(url, statement_timeout=TIMEOUT)
    try:
        db.upgrade()  # a migration is not bounded by the wait (it may run long); it ran here
        assert db.reading(lambda c: c.execute(sa.text("SELECT 1")).scalar()) == 1
        with stopped(cluster):
            # A read on a pooled connection, then a write: each ends in the store's 503 error.
            read, took = in_thread(lambda: db.reading(lambda c: c.execute(sa.text("SELECT 1")).scalar()), 60)
            assert isinstance(read, DevassignError) and read.code == DATABASE_BUSY, read
            limit = answer_limit(TIMEOUT)
            assert limit is not None and took >= limit
            write, _ = in_thread(lambda: db.retrying(lambda c: c.execute(sa.text("SELECT 1")).scalar()), 60)
            assert isinstance(write, DevassignError) and write.code == DATABASE_BUSY, write
        assert db.reading(lambda c: c.execute(sa.text("SELECT 1")).scalar()) == 1
    finally:
        db.dispose()


def test_the_wait_that_gives_up_is_the_one_for_an_answer(cluster: Cluster) -> None:
    """A statement the database works on past the wait's bound is its own to end (at its
    statement timeout, a clean error on a connection that stays usable), and a statement
    with no timeout (0) is not bounded at all."""
    cluster.init_primary(synchronous=False)
    cluster.create_database("devassign")
    url = cluster.url(cluster.primary, "devassign")
    db = Database(url, statement_timeout=TIMEOUT)
    try:
        with pytest.raises(DevassignError) as cut:
            db.reading(lambda c: c.execute(sa.text("SELECT pg_sleep(10)")).all())
        assert cut.value.extra["reason"] == "statement_timeout"  # PostgreSQL's own cancel, not ours
    finally:
        db.dispose()
    unbounded = Database(url, statement_timeout=0)
    try:
        assert unbounded.reading(lambda c: c.execute(sa.text("SELECT pg_sleep(3), 1")).all()) == [("", 1)]
    finally:
        unbounded.dispose()
    # A timeout in the URL's options wins over the server's setting, for the database and the wait.
    longer = Database(url + "?options=-c%20statement_timeout%3D20000", statement_timeout=TIMEOUT)
    try:
        assert longer.reading(lambda c: c.execute(sa.text("SELECT pg_sleep(3), 1")).all()) == [("", 1)]
    finally:
        longer.dispose()


def test_the_server_answers_503_while_its_database_is_stopped(cluster: Cluster, tmp_path: Path) -> None:
    """What a user sees: ``devassign server`` on the stopped database answers 503
    ``database_busy`` with ``Retry-After`` within seconds, and serves again once it resumes."""
    cluster.init_primary(synchronous=False)
    cluster.create_database("devassign")
    url = cluster.url(cluster.primary, "devassign") + f"?connect_timeout={CONNECT}"
    db = Database(url)
    db.upgrade()
    token = Store(db).create_token(schemas.TokenCreate(role="admin", name="ops"), actor="test").token
    db.dispose()
    auth = {"Authorization": f"Bearer {token}"}
    options = ("--db-statement-timeout", str(TIMEOUT))
    with running_server(url, tmp_path / "server.log", *options) as (base, proc):
        wait_for("the server to serve", lambda: _status(base, auth, proc) == 200)
        with stopped(cluster):
            start = time.monotonic()
            r = httpx.get(f"{base}/v1/resource-types", headers=auth, timeout=60)
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == DATABASE_BUSY and "Retry-After" in r.headers
            assert time.monotonic() - start < 30
        wait_for("the server to serve again", lambda: _status(base, auth, proc) == 200, timeout=30)
    logged = (tmp_path / "server.log").read_text()
    assert "Traceback" not in logged, logged


def _status(base: str, auth: dict[str, str], proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is not None:
        raise AssertionError(f"server exited with {proc.returncode}")
    try:
        return httpx.get(f"{base}/v1/resource-types", headers=auth, timeout=5).status_code
    except httpx.HTTPError:
        return 0
