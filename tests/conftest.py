"""Shared fixtures: one database per backend (SQLite and PostgreSQL), a store, an API client.

PostgreSQL tests skip where the server is unreachable, unless DEVASSIGN_REQUIRE_PG=1 (CI),
where they fail instead.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from devassign.server.app import create_app
from devassign.server.settings import Settings
from devassign.store import Database, Store
from devassign.store.schema import metadata

PG_ADMIN_URL = os.environ.get("DEVASSIGN_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REQUIRE_PG = os.environ.get("DEVASSIGN_REQUIRE_PG") == "1"
LONG = os.environ.get("DEVASSIGN_LONG") == "1"


def _pg_reachable() -> str | None:
    try:
        engine = sa.create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:
        return str(exc).splitlines()[0]


@contextlib.contextmanager
def fresh_pg_database(prefix: str) -> Iterator[str]:
    """A new, migrated PostgreSQL database, dropped afterwards; skips (or fails under
    DEVASSIGN_REQUIRE_PG=1) when PostgreSQL is unreachable."""
    problem = _pg_reachable()
    if problem:
        if REQUIRE_PG:
            pytest.fail(f"DEVASSIGN_REQUIRE_PG=1 but PostgreSQL is unreachable: {problem}")
        pytest.skip(f"PostgreSQL unreachable: {problem}")
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    db = Database(url)
    db.upgrade()
    db.dispose()
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``pg`` every test that needs PostgreSQL: one that asks for ``pg_url`` (or a module's
    ``pg_database``), or runs with the ``postgresql`` value of a parameter (``db_url``'s own,
    an ``indirect`` override of it, a module's ``backend``), so ``-m "not pg"`` runs without it.
    Tests marked ``long`` (longer variants of tests that run anyway) skip unless DEVASSIGN_LONG=1,
    which keeps CI within its time."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        fixtures = getattr(item, "fixturenames", ())
        if "postgresql" in params.values() or {"pg_url", "pg_database"} & set(fixtures):
            item.add_marker(pytest.mark.pg)
        if item.get_closest_marker("long") and not LONG:
            item.add_marker(pytest.mark.skip(reason="a long run: DEVASSIGN_LONG=1 runs it"))


@pytest.fixture(scope="session")
def pg_url(worker_id: str) -> Iterator[str]:
    """A fresh PostgreSQL database for this test session (and xdist worker), migrated once."""
    with fresh_pg_database(f"devassign_test_{worker_id}") as url:
        yield url


@pytest.fixture(scope="session")
def worker_id(request: pytest.FixtureRequest) -> str:
    return getattr(request.config, "workerinput", {}).get("workerid", "main")


def _truncate(url: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        names = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
        conn.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store/API test runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'devassign.db'}"
    url: str = request.getfixturevalue("pg_url")
    _truncate(url)
    return url


class Clock:
    """A clock the test moves by hand, so liveness and expiry are tested without sleeping."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(db_url: str, clock: Clock) -> Iterator[Store]:
    db = Database(db_url)
    db.upgrade()
    st = Store(db, down_after=timedelta(seconds=90), clock=clock)
    yield st
    db.dispose()


def make_client(store: Store, *, auth: bool) -> TestClient:
    settings = Settings(db_url=store.db.url, auth=auth, sweep_interval=0)
    return TestClient(create_app(settings, store=store), raise_server_exceptions=False)


@pytest.fixture
def api(store: Store) -> Iterator[TestClient]:
    """An API client on a server with auth off (everyone is admin)."""
    with make_client(store, auth=False) as client:
        yield client


@pytest.fixture
def secure_api(store: Store) -> Iterator[TestClient]:
    """An API client on a server with auth on; send tokens from ``store.create_token``."""
    with make_client(store, auth=True) as client:
        yield client


def vf(address: str, type: str = "NIC_VF_1G", **extra: Any) -> dict[str, Any]:
    """A reported SR-IOV VF, for inventory reports in tests."""
    return {
        "address": address,
        "kind": "sriov_vf",
        "type": type,
        "vendor_id": "8086",
        "product_id": "154c",
        "numa_node": 0,
        "iommu_group": None,
        "driver": "iavf",
        "parent": "0000:3b:00.0",
        "attributes": {},
        **extra,
    }
