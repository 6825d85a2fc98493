"""Engines, transactions and migrations for SQLite (embedded default) and PostgreSQL.

SQLite runs in WAL mode and takes its write lock up front (``BEGIN IMMEDIATE``) so two
writers never deadlock upgrading a read lock; PostgreSQL runs at READ COMMITTED and relies
on conditional updates whose row counts are checked, plus unique indexes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from platformdirs import user_data_dir

from devassign.errors import DATABASE_BUSY, DevassignError

log = logging.getLogger(__name__)
T = TypeVar("T")

MIGRATIONS = str(Path(__file__).parent / "migrations")
# An arbitrary constant: PostgreSQL advisory lock taken while migrating, so replicas
# starting together do not race each other through the same migration.
_MIGRATION_LOCK = 0x6465_7661


class ConcurrentChange(Exception):
    """A row this transaction read was changed or deleted by another that committed since:
    :meth:`Database.retrying` runs the work again in a fresh transaction."""


class SchemaError(RuntimeError):
    """The database schema is not the one this code expects; the message says what to run."""


def default_url() -> str:
    """An SQLite file in the user's data folder: no setup at all."""
    folder = Path(os.environ.get("DEVASSIGN_DATA_DIR") or user_data_dir("devassign"))
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'devassign.db'}"


def normalize_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` and use psycopg 3 for both."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def sqlite_file(url: str) -> Path | None:
    """The file of an SQLite URL, or ``None`` for an in-memory database."""
    database = sa.engine.make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def create_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 whatever the umask, unless it exists: the database
    holds token hashes and every tenant's allocations. An existing file keeps its mode."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o600)  # os.open's mode is filtered by the umask; this is not
    finally:
        os.close(fd)


def _private_journals(path: Path) -> None:
    """SQLite gives -wal and -shm the main file's mode; make sure of it for a private database
    (a umask or an older file could leave them readable to others)."""
    try:
        if path.stat().st_mode & 0o077:
            return  # the operator shares the database on purpose: leave its journals alone
    except OSError:
        return
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(OSError):  # absent yet, or another user's
            journal = path.with_name(path.name + suffix)
            if journal.stat().st_mode & 0o077:
                journal.chmod(0o600)


def _sqlite_setup(engine: sa.Engine, path: Path | None) -> None:
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # We issue BEGIN ourselves (below), so the driver must not.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()
        if path is not None:
            _private_journals(path)

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        write = conn.get_execution_options().get("devassign_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


class Database:
    """One database: its engine, its transactions and its schema version."""

    def __init__(self, url: str | None = None, *, echo: bool = False, pool_size: int = 10) -> None:
        self.url = normalize_url(url or default_url())
        self.is_sqlite = self.url.startswith("sqlite")
        kwargs: dict[str, Any] = {"echo": echo, "future": True}
        sqlite_path = sqlite_file(self.url) if self.is_sqlite else None
        if self.is_sqlite:
            if sqlite_path is not None:
                create_private(sqlite_path)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            kwargs["pool_size"] = pool_size
            kwargs["poolclass"] = sa.pool.QueuePool
        else:
            # Several replicas share PostgreSQL's max_connections (100 by default): keep each
            # process's share small; requests wait briefly for a connection instead.
            kwargs["pool_size"] = pool_size
            kwargs["max_overflow"] = pool_size // 2
            # No pre-ping: it costs a round trip per transaction (two per claim). A connection
            # that died (server restart) fails its statement instead; SQLAlchemy then drops the
            # pool, and ``retrying`` (writes) or ``reading`` (reads) runs the work once more.
            kwargs["pool_recycle"] = 3600
            # psycopg prepares repeated statements and PostgreSQL reuses their generic plans
            # (plan_cache_mode=auto): forcing a fresh plan per execution cost 0.8 ms of database
            # CPU per claim (read from /proc, as bench/workers.py does). The candidate query keeps
            # its LIMIT literal so its generic plan is the ordered index scan, and the sweeper's ANALYZE
            # (Store.refresh_statistics) keeps the statistics those plans rest on fresh.
        self.engine = sa.create_engine(self.url, **kwargs)
        self._write_lock: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if self.is_sqlite else contextlib.nullcontext()
        )
        # Reads on PostgreSQL run in autocommit: at READ COMMITTED every statement has its own
        # snapshot anyway, and BEGIN/COMMIT would be two more round trips per read. SQLite keeps
        # a transaction, which gives its reads one snapshot.
        self._reader = (
            self.engine if self.is_sqlite else self.engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        if self.is_sqlite:
            _sqlite_setup(self.engine, sqlite_path)

    def dispose(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def read(self) -> Iterator[sa.Connection]:
        """A connection for reads (a transaction on SQLite, autocommit on PostgreSQL)."""
        with self._reader.connect() as conn, conn.begin():
            yield conn

    def reading(self, fn: Callable[[sa.Connection], T]) -> T:
        """Run ``fn`` in :meth:`read`, once more on a fresh connection if the pooled one had
        died (a database restart: without a pre-ping the pool finds out on first use)."""
        for attempt in (1, 2):
            try:
                with self.read() as conn:
                    return fn(conn)
            except sa.exc.DBAPIError as exc:
                if not exc.connection_invalidated:
                    raise
                if attempt == 2:
                    raise DevassignError(
                        DATABASE_BUSY, "the database connection was lost (server restart?); retry the request"
                    ) from exc
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def write(self) -> Iterator[sa.Connection]:
        """A write transaction: committed on success, rolled back on any exception.

        On SQLite the threads of this process queue on a lock first: SQLite lets one writer
        in at a time anyway, and its busy handler makes waiters sleep up to 100 ms between
        tries, which gave concurrent claims a tail of seconds.
        """
        with (
            self._write_lock,
            self.engine.connect().execution_options(devassign_write=True) as conn,
            conn.begin(),
        ):
            yield conn

    def retrying(self, fn: Callable[[sa.Connection], T], *, attempts: int = 5) -> T:
        """Run ``fn`` in a fresh write transaction, retrying on serialization failures and on
        integrity violations caused by a concurrent commit.

        Each attempt starts a new transaction: a retry never sees its own uncommitted rows
        (the cause of Placement 16.0.0's over-allocation).
        """
        for attempt in range(attempts):
            try:
                with self.write() as conn:
                    return fn(conn)
            except ConcurrentChange as exc:
                if attempt == attempts - 1:
                    raise DevassignError(DATABASE_BUSY, f"{exc}; retry the request") from exc
                time.sleep(0.01 * (2**attempt))
            except sa.exc.IntegrityError:
                # At READ COMMITTED a concurrent transaction can commit between our check and
                # our write (a type deleted while a report inserts its devices, a device
                # allocated while its host is deleted): a fresh attempt reads the new state and
                # gives the domain's answer (unknown type, type in use, ...). A violation that
                # persists is a bug and is raised.
                if attempt == attempts - 1:
                    raise
                time.sleep(0.01 * (2**attempt))
            except sa.exc.OperationalError as exc:
                if exc.connection_invalidated and attempt < attempts - 1:
                    continue  # a pooled connection died (server restart): a fresh one
                if not _is_transient(exc) or attempt == attempts - 1:
                    if _is_transient(exc):
                        raise DevassignError(
                            DATABASE_BUSY, "the database is busy; retry the request"
                        ) from exc
                    raise
                time.sleep(0.01 * (2**attempt))
        raise AssertionError("unreachable")

    # ------------------------------------------------------------- schema

    def _alembic_config(self, conn: sa.Connection | None = None) -> Config:
        cfg = Config()
        cfg.set_main_option("script_location", MIGRATIONS)
        cfg.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        cfg.attributes["connection"] = conn
        return cfg

    def head_revision(self) -> str | None:
        return ScriptDirectory.from_config(self._alembic_config()).get_current_head()

    def current_revision(self) -> str | None:
        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def upgrade(self) -> tuple[str | None, str | None]:
        """Migrate to the newest schema; returns (before, after) revisions."""
        with self.engine.connect() as conn:
            if not self.is_sqlite:
                conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK})
                conn.commit()
            try:
                before = MigrationContext.configure(conn).get_current_revision()
                self._check_known(before)
                command.upgrade(self._alembic_config(conn), "head")
                conn.commit()
                after = MigrationContext.configure(conn).get_current_revision()
            finally:
                if not self.is_sqlite:
                    conn.rollback()
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK})
                    conn.commit()
        return before, after

    def _check_known(self, revision: str | None) -> None:
        script = ScriptDirectory.from_config(self._alembic_config())
        if revision is None:
            return
        try:
            known = script.get_revision(revision) is not None
        except CommandError:
            known = False
        if not known:
            raise SchemaError(
                f"the database is at schema revision {revision}, which this devassign does "
                "not know: it was written by a newer version; upgrade devassign"
            )

    def ensure_schema(self, *, migrate: bool) -> None:
        """Migrate on start (``migrate``) or refuse with a message that says what to run."""
        if migrate:
            before, after = self.upgrade()
            if before != after:
                log.info("database schema migrated from %s to %s", before, after)
            return
        current, head = self.current_revision(), self.head_revision()
        self._check_known(current)
        if current != head:
            raise SchemaError(
                f"the database schema is at {current or 'nothing'} but this devassign needs "
                f"{head}: run `devassign db upgrade --db URL` first"
            )


def _is_transient(exc: sa.exc.OperationalError) -> bool:
    text = str(exc.orig).lower()
    return any(s in text for s in ("database is locked", "deadlock detected", "could not serialize", "busy"))
